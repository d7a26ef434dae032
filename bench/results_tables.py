"""The tables of docs/RESULTS.md, rendered from the committed JSON of docs/results/ (never typed in).

Each table sits between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->`` in docs/RESULTS.md:

    python bench/results_tables.py --write     # re-render every table after a bench command refreshed the JSON
    python bench/results_tables.py --check     # exit 1 when a table differs from its JSON (a docs test runs it)

The JSON files are written by bench/cifar10_robust.py (table, summaries, tune) and bench/cifar10_verdict.py
from the run folders under docs/results/records, under the counting rules of docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs/results"
DOC = REPO / "docs/RESULTS.md"

SETTINGS = {
    "none": "–", "uniform-ts": "t\\* = 0.1", "uniform-tl": "t\\* = 0.2",
    "heterogeneous": "t_s 0.1, t_l 0.2, τ 0.9, U 3",
    "heterogeneous-tuned": "tuned on train: t_l 0.2, τ 0.9 (= heterogeneous)",
    "heterogeneous-graded": "t_s 0.1, t_l 0.2, graded τ_lo 0.5 … τ_hi 0.9, U 3",
    "heterogeneous-exact": "as heterogeneous; exact-gradient attack",
    "uniform-tl-exact": "t\\* = 0.2; exact-gradient attack",
    "prefix-protocol": "defence uniform t\\* = 0.1; attack crafted through heterogeneous (S = 10)",
    "diffpure": "DiffPure: reverse VP-SDE from t\\* = 0.1, 100 Euler–Maruyama steps",
    "gdmp": "GDMP: 4 guided DDPM chains from t\\* = 0.036, MSE guidance",
}


def pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def ci(lo_hi: list[float]) -> str:
    return f"{pct(lo_hi[0])}–{pct(lo_hi[1])}"


def load(name: str) -> Any:
    return json.loads((RESULTS / name).read_text())


def main_table() -> str:
    lines = ["| defence | settings | n | clean % (95% CI) | robust % (95% CI) | adversarial % | ε-calls / purification "
             "| attack ε-calls / image | s / image |", "|---|---|---|---|---|---|---|---|---|"]
    for r in load("cifar10_robust.json"):
        if r.get("conditioned_on") or r.get("combined_from"):  # rows on survivors, combined rows: their own sections
            continue
        lines.append(f"| {r['defense']} | {SETTINGS.get(r['defense'], '')} | {r['n']} | "
                     f"{pct(r['clean_accuracy'])} ({ci(r['clean_accuracy_ci95'])}) | "
                     f"{pct(r['robust_accuracy'])} ({ci(r['robust_accuracy_ci95'])}) | "
                     f"{pct(r.get('adversarial_accuracy'))} | "
                     f"{r['eps_calls']['defence_per_purification']} | {r['eps_calls']['attack_per_image']} | "
                     f"{r['seconds_per_image']:.1f} |")
    return "\n".join(lines)


def pair_cells(p: dict[str, Any], key: str) -> tuple[str, str]:
    c = p[key]
    share = (f"{100 * c['vote_share_difference']:+.1f} ± {100 * c['vote_share_se']:.1f}"
             if "vote_share_difference" in c else "–")
    return f"{100 * c['difference']:+.1f} ({c['wins']}/{c['losses']}, p = {c['p_value']:.2g})", share


def pairs_table(pairs: list[dict[str, Any]]) -> str:
    lines = ["| comparison | n | clean Δ pts (wins/losses, p) | clean Δ vote share | robust Δ pts (wins/losses, p) "
             "| robust Δ vote share |", "|---|---|---|---|---|---|"]
    for p in pairs:
        clean, clean_share = pair_cells(p, "clean")
        robust, robust_share = pair_cells(p, "robust")
        lines.append(f"| {p['row']} vs {p['reference']} | {p['n']} | {clean} | {clean_share} | {robust} | "
                     f"{robust_share} |")
    return "\n".join(lines)


PEERS = ("diffpure", "gdmp")


def main_pairs() -> str:
    return pairs_table([p for p in load("cifar10_paired.json") if p["row"] not in PEERS])


def peer_pairs() -> str:
    return pairs_table([p for p in load("cifar10_paired.json") if p["row"] in PEERS])


def worst_case(section: str, pair_section: str) -> Callable[[], str]:
    def render() -> str:
        data = load("cifar10_verdict.json")
        lines = ["| defence | n | clean % (95% CI) | robust % (95% CI), worst case over the attacks | broke first |",
                 "|---|---|---|---|---|"]
        for r in data.get(section, []):
            broke = ", ".join(f"{e['attack']} {e['broke']}" for e in r["per_attack"])
            lines.append(f"| {r['defence']} | {r['n']} | {pct(r['clean_accuracy'])} ({ci(r['clean_accuracy_ci95'])}) | "
                         f"{pct(r['robust_accuracy'])} ({ci(r['robust_accuracy_ci95'])}) | {broke} |")
        return "\n".join(lines) + "\n\n" + pairs_table(data.get(pair_section, []))
    return render


def strength_table() -> str:
    lines = ["| defence | attack (exact, EOT 8, 20 iterations) | survivors attacked | broke | core-hours | "
             "cosine of EOT halves, clean / final | EOT for cosine 0.9 | machine |",
             "|---|---|---|---|---|---|---|---|"]
    for r in load("cifar10_verdict.json").get("strength", []):
        d = (r.get("eot_diagnostic") or [None])[0] or {}
        needed = d.get("eot_for_cosine_0.9")
        cos = f"{d['clean']['cosine_of_halves']:.2f} / {d['final']['cosine_of_halves']:.2f}" if d else "–"
        lines.append(f"| {r['defence']} | {r['attack']} | {r['survivors']} | {r['broke']} | {r['core_hours']:.2f} | "
                     f"{cos} | {'–' if needed is None else round(needed)} | {r['machine']} |")
    return "\n".join(lines)


def published_table() -> str:
    lines = ["| defence | attack (exact gradients) | settings | iterations | survivors attacked | broke | core-hours | "
             "machine |", "|---|---|---|---|---|---|---|---|"]
    for r in load("cifar10_verdict.json").get("published", []):
        keys = ", ".join(f"{k.split('_', 1)[-1]} {v}" for k, v in r["settings"].items() if k != "name")
        lines.append(f"| {r['defence']} | {r['attack']} | {keys} | {r['steps']} | {r['survivors']} | {r['broke']} | "
                     f"{r['core_hours']:.2f} | {r['machine']} |")
    return "\n".join(lines)


def diagnostic_cells(r: dict[str, Any]) -> str:
    d = (r.get("eot_diagnostic") or [None])[0] or {}
    if not d:
        return "– | –"
    needed = d.get("eot_for_cosine_0.9")
    return (f"{d['clean']['cosine_of_halves']:.2f} / {d['final']['cosine_of_halves']:.2f} | "
            f"{'–' if needed is None else round(needed)}")


def worst_attacks_table() -> str:
    """The new rows of the worst-case verdict: what each attacked and broke, its cost, its EOT diagnostic."""
    lines = ["| defence | attack (exact) | settings | survivors attacked | broke | core-hours | s / image | "
             "cosine of EOT halves, clean / final | EOT for cosine 0.9 | machine |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in load("cifar10_verdict.json").get("worst attacks", []):
        keys = ", ".join(f"{k} {v}" for k, v in r["settings"].items() if k not in ("name", "eps", "gradient"))
        lines.append(f"| {r['defence']} | {r['attack']} | {keys} | {r['attacked']} | {r['broke']} | "
                     f"{r['core_hours']:.2f} | {r['seconds_per_image']:.0f} | {diagnostic_cells(r)} | {r['machine']} |")
    return "\n".join(lines)


def vote_noise_tables() -> str:
    """What R = 32 votes on the new rows' saved examples do: per row, per defence, and to the pair."""
    sections = [v for k, v in load("cifar10_verdict.json").items() if k.startswith("worst R")]
    r = sections[0][0]["runs"] if sections and sections[0] else 32
    lines = [f"| defence | attack | attacked | adversarially correct, R = 8 | R = {r} | right only at R = 8 | "
             f"right only at R = {r} |", "|---|---|---|---|---|---|---|"]
    totals = [f"| defence | n | robust %, R = 8 | robust %, R = {r} (unresolved broken – robust) | unresolved | "
              f"robust at 8, broken at {r} | broken at 8, robust at {r} |", "|---|---|---|---|---|---|---|"]
    pairs = ["| comparison | bound on the difference (unresolved images counted against / for the first) | n | "
             "robust Δ pts (wins/losses, p) |", "|---|---|---|---|"]
    for section in sections:
        for entry in section:
            for d, r in entry["defences"].items():
                lines += [f"| {d} | {row['attack']} | {row['attacked']} | {row['correct_r8']} | {row['correct_r32']} | "
                          f"{row['r8_only']} | {row['r32_only']} |" for row in r["per_row"]]
                totals.append(f"| {d} | {r['n']} | {pct(r['robust_r8'])} | {pct(r['robust_lower'])} – "
                              f"{pct(r['robust_upper'])} | {r['unresolved']} | {r['robust_at_r8_broken_at_r32']} | "
                              f"{r['broken_at_r8_robust_at_r32']} |")
            for bound in ("lower", "upper"):
                p = entry[f"pair_{bound}"]
                counted = f"{bound} bound"
                pairs.append(f"| {p['row']} vs {p['reference']} | {counted} | {p['n']} | "
                             f"{100 * p['difference']:+.1f} ({p['wins']}/{p['losses']}, "
                             f"p = {p['p_value']:.2g}) |")
    return "\n\n".join("\n".join(t) for t in (lines, totals, pairs))


def tune_tables() -> str:
    t = load("cifar10_tune.json")
    lines = [f"Screen ({t['screen_n']} train images):", "", "| t_l | τ | clean % | robust % | s / image |",
             "|---|---|---|---|---|"]
    lines += [f"| {g['t_l']} | {g['tau']} | {pct(g['clean_accuracy'])} | {pct(g['robust_accuracy'])} | "
              f"{g['seconds_per_image']:.1f} |" for g in t["grid"]]
    lines += ["", "Later rungs (each doubles the train images):", "",
              "| rung | t_l | τ | n | clean % | robust % (95% CI) | s / image |", "|---|---|---|---|---|---|---|"]
    for i, rung in enumerate(t["rungs"], 1):
        lines += [f"| {i} | {g['t_l']} | {g['tau']} | {g['n']} | {pct(g['clean_accuracy'])} | "
                  f"{pct(g['robust_accuracy'])} ({ci(g['robust_accuracy_ci95'])}) | {g['seconds_per_image']:.1f} |"
                  for g in rung]
    return "\n".join(lines)


TABLES: dict[str, Callable[[], str]] = {
    "main": main_table, "pairs": main_pairs, "peer-pairs": peer_pairs,
    "surrogate+exact": worst_case("surrogate+exact", "surrogate+exact pair"),
    "worst": worst_case("worst", "worst pair"), "strength": strength_table, "tune": tune_tables,
    "published": published_table, "worst-attacks": worst_attacks_table, "worst-r32": vote_noise_tables,
}


def render(text: str) -> str:
    """``text`` with every marked table replaced by its rendering (unmarked tables are left alone)."""
    for name, fn in TABLES.items():
        pattern = re.compile(rf"(<!-- results:{re.escape(name)} -->\n).*?(<!-- /results:{re.escape(name)} -->)", re.S)
        text = pattern.sub(lambda m, fn=fn: m.group(1) + fn() + "\n" + m.group(2), text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="re-render the tables in docs/RESULTS.md")
    mode.add_argument("--check", action="store_true", help="exit 1 when a table is not its JSON's rendering")
    args = parser.parse_args()
    text = DOC.read_text()
    new = render(text)
    if args.write:
        DOC.write_text(new)
        print(f"wrote {DOC.relative_to(REPO)}")
    elif new != text:
        sys.exit("docs/RESULTS.md: a table differs from its JSON; run python bench/results_tables.py --write")


if __name__ == "__main__":
    main()

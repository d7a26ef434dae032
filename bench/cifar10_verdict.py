"""The CIFAR-10 verdict under the strict counting rules and the strongest attack the CPU budget affords.

Builds on the rows of bench/cifar10_robust.py (their committed run folders) with the harness's combine /
compare / rescore and ``data.survivors_of`` (docs/evaluation.md). Commands:

    python bench/cifar10_verdict.py worst-case      # the committed surrogate + exact rows, per-image worst case
    python bench/cifar10_verdict.py strength --n 32 [--defences ...] [--attacks ...]   # strength per core-second
    python bench/cifar10_verdict.py published --n 32 --steps 10  # DiffAttack, DiffHammer on the survivors
    python bench/cifar10_verdict.py rows --n 128 --attacks apgd-dlr [--mask-attacks ...] [--rescore-runs 32]

Counting everywhere: robust = clean-correct and every adversarial evaluation of every attack correct, a vote
whose top count the true label shares with another class is wrong (``run.ties: wrong``). Each new attack runs
only on the images still robust in the rows before it (``data.survivors_of``), so an expensive attack is paid
only where the cheap ones failed; ``combine`` then gives each defence's worst-case row. Every run resumes:
kill and rerun at will, one process per core with ``OMP_NUM_THREADS=1``, commit records as batches finish.

Writes docs/results/cifar10_verdict.json (worst-case rows, their pairing, strength per cost) and, for the
``rows`` command, merges the worst-case rows into docs/results/cifar10_robust.json and their pairing into
docs/results/cifar10_paired.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from _common import REPO, print_table, shared_dir
from cifar10_robust import ROWS, row_config  # noqa: F401 (ROWS: the rows this builds on)

from hetpure.evaluate import evaluate
from hetpure.evaluation.combine import combine, compare
from hetpure.evaluation.rescore import rescore

RECORDS = REPO / "docs/results/records/cifar10"
DEFENCES = ("heterogeneous", "uniform-tl")
#: the attacks of the strength study and of the rows (exact gradients through the S = 100 sampler)
ATTACKS: dict[str, dict[str, Any]] = {
    "pgd": {"name": "pgd", "step_size": 0.007},
    "apgd-ce": {"name": "apgd-ce"},
    "apgd-dlr": {"name": "apgd-dlr"},
    "mask-pgd-restrict": {"name": "mask-pgd", "mask_mode": "restrict", "step_size": 0.007},
    "mask-pgd-weight": {"name": "mask-pgd", "mask_mode": "weight", "attention_weight": 1.0, "step_size": 0.007},
    "lowfreq-pgd": {"name": "lowfreq-pgd", "grid": 8, "step_size": 0.007},
}
MASK_ATTACKS = ("mask-pgd-restrict", "mask-pgd-weight", "lowfreq-pgd")
#: the attacks made for diffusion purification at the CPU budget of ``published`` (docs/evaluation.md): DiffAttack
#: with APGD, EOT 2, λ = 1 at every reverse step; DiffHammer with N = 4 purifications per iteration, k = 5, 5 EM steps
PUBLISHED: dict[str, dict[str, Any]] = {
    "diffattack": {"name": "diffattack", "eot": 2, "diffattack_weight": 1.0, "diffattack_every": 1},
    "diffhammer": {"name": "diffhammer", "diffhammer_samples": 4, "diffhammer_k": 5.0, "diffhammer_em_steps": 5},
}
VERDICT = REPO / "docs/results/cifar10_verdict.json"


def defaults(args: argparse.Namespace) -> argparse.Namespace:
    """The bench/cifar10_robust.py options its row_config reads, at this script's budget."""
    base = {"paper_budget": False, "ddim_steps": 100, "runs": 8, "steps": 20, "eot": 4, "batch_size": 16,
            "device": "cpu", "worst_case_k": 1, "max_batch": None, "memory_budget_gb": 10.0,
            "tuned_tl": 0.2, "tuned_tau": 0.7, "graded_lo": 0.5, "graded_hi": 0.9, "n": args.n}
    return argparse.Namespace(**{**base, **vars(args)})


def sources(defence: str) -> list[Path]:
    """The committed rows of a defence whose survivors the new attacks condition on: surrogate and exact."""
    return [RECORDS / defence, RECORDS / f"{defence}-exact"]


def attack_config(defence: str, attack: str, args: argparse.Namespace, conditioned: list[Path]) -> dict[str, Any]:
    """One exact-gradient attack on a defence's survivors: EOT ``--eot``, ``--steps`` iterations, R = 8, K = 1."""
    opts = defaults(args)
    cfg = row_config(defence, opts, n=args.n)
    cfg["attack"].update({"gradient": "exact", "eot": args.eot, "steps": args.steps, "step_size": None,
                          "memory_budget_gb": args.memory_budget_gb, **ATTACKS[attack]})
    cfg["data"]["survivors_of"] = [str(p) for p in conditioned]
    cfg["run"].update(batch_size=args.batch_size, ties="wrong", save_images=False)
    return cfg


def run(cfg: dict[str, Any], folder: Path) -> dict[str, Any] | None:
    """One resumable run; None when the runs it conditions on left nothing to attack."""
    from hetpure.errors import ConfigError

    cfg["run"]["out"] = str(folder)
    print(f"\n== {folder.name} ==", flush=True)
    try:
        return evaluate(cfg)
    except ConfigError as exc:
        if "nothing is left to attack" not in str(exc):
            raise
        print(f"{folder.name}: skipped, {exc}", flush=True)
        return None


def diagnostic_cell(s: dict[str, Any]) -> str:
    d = (s.get("eot_diagnostic") or [None])[0]
    if not d:
        return "–"
    needed = d["eot_for_cosine_0.9"]
    return (f"{d['clean']['cosine_of_halves']:.2f} / {d['final']['cosine_of_halves']:.2f} "
            f"(EOT for 0.9: {'∞' if needed is None else round(needed)})")


def strength(args: argparse.Namespace) -> None:
    """Item 3: each attack on each defence's survivors of the committed rows, seconds and breaks per image."""
    out = Path(args.out) / "strength"
    rows, data = [], []
    for defence in args.defences:
        for attack in args.attacks:
            folder = out / f"{defence}-{attack}-eot{args.eot}"
            s = run(attack_config(defence, attack, args, sources(defence)), folder)
            if s is None:
                continue
            broke = s["per_attack"][0]["broke"]  # survivors this attack broke (clean-correct under its own draw)
            seconds = (s["seconds_per_image"] or 0) * s["n"]
            rows.append([defence, attack, s["n"], broke, f"{seconds / 3600:.2f}",
                         f"{broke / seconds * 3600:.2f}" if seconds else "–", diagnostic_cell(s)])
            data.append({"defence": defence, "attack": attack, "eot": args.eot, "steps": args.steps,
                         "n_first": args.n, "survivors": s["n"], "broke": broke, "core_hours": seconds / 3600,
                         "seconds_per_image": s["seconds_per_image"], "machine": s["machine"],
                         "eot_diagnostic": s.get("eot_diagnostic"), "folder": folder.name})
    print()
    print_table(["defence", "attack", "survivors attacked", "broke", "core-hours", "broken per core-hour",
                 "EOT-half cosine clean / final"], rows)
    merge(verdict_file(args), "strength", data, key=lambda r: (r["defence"], r["attack"], r["eot"]))


def published(args: argparse.Namespace) -> None:
    """DiffAttack and DiffHammer, exact gradients, on the survivors of each defence's worst-case row at the first
    ``--n`` images: what they cost and whether either breaks an image the ensemble did not."""
    out = Path(args.out) / "published"
    rows, data = [], []
    for defence in args.defences:
        worst = [RECORDS / "combined" / f"{defence}-surrogate+exact"]
        for attack, keys in PUBLISHED.items():
            cfg = attack_config(defence, "pgd", args, worst)
            cfg["attack"] = {**{k: v for k, v in cfg["attack"].items() if k not in ("step_size", "eot")}, **keys,
                             "steps": args.steps}
            s = run(cfg, out / f"{defence}-{attack}")
            if s is None:
                continue
            add_rows(args, {f"{defence}-{attack}": s})
            broke = s["per_attack"][0]["broke"]  # survivors this attack broke (clean-correct under its own draw)
            seconds = (s["seconds_per_image"] or 0) * s["n"]
            rows.append([defence, attack, s["n"], broke, f"{seconds / 3600:.2f}", diagnostic_cell(s)])
            data.append({"defence": defence, "attack": attack, "settings": keys, "steps": args.steps,
                         "n_first": args.n, "survivors": s["n"], "broke": broke, "core_hours": seconds / 3600,
                         "seconds_per_image": s["seconds_per_image"], "machine": s["machine"],
                         "conditioned_on": s.get("conditioned_on"), "folder": f"published/{defence}-{attack}"})
    print()
    print_table(["defence", "attack", "survivors attacked", "broke", "core-hours", "EOT-half cosine"], rows)
    merge(verdict_file(args), "published", data, key=lambda r: (r["defence"], r["attack"]))


SUMMARY_KEYS = ("clean_accuracy", "clean_accuracy_ci95", "robust_accuracy", "robust_accuracy_ci95",
                "adversarial_accuracy", "adversarial_accuracy_ci95", "robust_accuracy_worst_case", "eps_calls",
                "seconds_per_image", "machine", "finished")


def add_rows(args: argparse.Namespace, rows: dict[str, dict[str, Any]]) -> None:
    """Put new rows (name → summary) into docs/results/cifar10_robust.json beside bench/cifar10_robust.py's rows
    (replacing a row of the same name, keeping the others and their order)."""
    if verdict_file(args) != VERDICT:
        return
    target = REPO / "docs/results/cifar10_robust.json"
    data = json.loads(target.read_text())
    for name, s in rows.items():
        attacks = s["config"]["attack"] if isinstance(s["config"]["attack"], list) else [s["config"]["attack"]]
        entry = {"defense": name, "settings": s["config"]["defense"], "counting": s["counting"], "n": s["n"],
                 **{k: s[k] for k in SUMMARY_KEYS},
                 "attack": [{k: a.get(k) for k in ("name", "norm", "eps", "steps", "eot", "gradient") if k in a}
                            for a in attacks],
                 **({"conditioned_on": s["conditioned_on"]} if s.get("conditioned_on") else {}),
                 **({"combined_from": [c["folder"] for c in s["combined_from"]]} if s.get("combined_from") else {}),
                 "per_attack": [{k: e.get(k) for k in ("attack", "attacked", "broke", "robust_accuracy_after")}
                                for e in s.get("per_attack", [])]}
        data = [e for e in data if e["defense"] != name] + [entry]
    target.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {target.relative_to(REPO)} ({', '.join(rows)})")


def worst_case(args: argparse.Namespace) -> None:
    """The committed surrogate and exact rows of each defence combined per image, and the pair compared."""
    out = RECORDS / "combined"
    shared_dir()
    summaries = {}
    for defence in DEFENCES:
        folder = out / f"{defence}-surrogate+exact"
        summaries[defence] = combine(sources(defence), folder)
    pair = compare(out / "heterogeneous-surrogate+exact", out / "uniform-tl-surrogate+exact")
    print_worst(summaries, pair)
    merge(VERDICT, "surrogate+exact", [{"defence": d, **row_of(s)} for d, s in summaries.items()],
          key=lambda r: r["defence"])
    merge(VERDICT, "surrogate+exact pair", [pair], key=lambda r: (r["row"], r["reference"]))


def row_of(s: dict[str, Any]) -> dict[str, Any]:
    keys = ("n", "clean_accuracy", "clean_accuracy_ci95", "robust_accuracy", "robust_accuracy_ci95",
            "adversarial_accuracy", "counting", "combined_from", "clean_evaluation_from", "per_attack")
    return {k: s[k] for k in keys if k in s}


def print_worst(summaries: dict[str, dict[str, Any]], pair: dict[str, Any]) -> None:
    def pct(v: float) -> str:
        return f"{100 * v:.1f}"

    def with_ci(s: dict[str, Any], key: str) -> str:
        lo, hi = s[f"{key}_ci95"]
        return f"{pct(s[key])} ({pct(lo)}–{pct(hi)})"

    print_table(["defence", "n", "clean % (95% CI)", "robust % (95% CI)", "attacks: broke first"],
                [[d, s["n"], with_ci(s, "clean_accuracy"), with_ci(s, "robust_accuracy"),
                  ", ".join(f"{e['attack']} {e['broke']}" for e in s["per_attack"])] for d, s in summaries.items()])
    r = pair["robust"]
    c = pair["clean"]
    print(f"\npaired ({pair['row']} vs {pair['reference']}, n = {pair['n']}): robust {100 * r['difference']:+.1f} "
          f"({r['wins']}/{r['losses']}, p = {r['p_value']:.2g}, vote share {100 * r['vote_share_difference']:+.1f} ± "
          f"{100 * r['vote_share_se']:.1f}); clean {100 * c['difference']:+.1f} ({c['wins']}/{c['losses']}, "
          f"p = {c['p_value']:.2g})")


def rows(args: argparse.Namespace) -> None:
    """Item 4: the chosen attack(s) on each defence's survivors at n, the exact mask-aware attacks on
    heterogeneous noise's, each defence's worst-case row (combine), the pair, and the R = 32 rescoring."""
    out = Path(args.out) / "verdict"
    worst: dict[str, dict[str, Any]] = {}
    for defence in args.defences:
        folders = list(sources(defence))
        plan = list(args.attacks) + (list(args.mask_attacks) if defence == "heterogeneous" else [])
        for attack in plan:
            folder = out / f"{defence}-{attack}-eot{args.eot}"
            if run(attack_config(defence, attack, args, folders), folder) is None:
                continue
            folders.append(folder)  # the next attack runs on what this one left
            if args.rescore_runs:
                rescore(folder, out / f"{folder.name}-R{args.rescore_runs}", {"defense": {"runs": args.rescore_runs}})
        worst[defence] = combine(folders, Path(args.out) / f"{defence}-worst")
        add_rows(args, {f"{defence}-worst": worst[defence]})
    if len(worst) == 2:
        pair = compare(Path(args.out) / "heterogeneous-worst", Path(args.out) / "uniform-tl-worst")
        print_worst(worst, pair)
        merge(VERDICT, "worst", [{"defence": d, **row_of(s)} for d, s in worst.items()], key=lambda r: r["defence"])
        merge(VERDICT, "worst pair", [pair], key=lambda r: (r["row"], r["reference"]))


def verdict_file(args: argparse.Namespace) -> Path:
    """docs/results/cifar10_verdict.json for the committed rows; beside the run folders for any other --out."""
    return VERDICT if Path(args.out).resolve() == RECORDS.resolve() else Path(args.out) / "verdict.json"


def merge(target: Path, section: str, items: list[dict[str, Any]], key: Any) -> None:
    """Replace the entries of ``section`` with the same key, keep the rest (several commands share the file)."""
    data = json.loads(target.read_text()) if target.exists() else {}
    merged = {json.dumps(key(r)): r for r in data.get(section, [])}
    merged.update({json.dumps(key(r)): r for r in items})
    data[section] = list(merged.values())
    target.write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(f"wrote {target} [{section}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["worst-case", "strength", "published", "rows"])
    parser.add_argument("--n", type=int, default=32, help="the first n test images (their survivors are attacked)")
    parser.add_argument("--defences", nargs="+", default=list(DEFENCES), choices=DEFENCES)
    parser.add_argument("--attacks", nargs="+", default=["pgd", "apgd-ce", "apgd-dlr"], choices=list(ATTACKS))
    parser.add_argument("--mask-attacks", nargs="*", default=list(MASK_ATTACKS), choices=list(ATTACKS),
                        help="rows: the exact mask-aware attacks on heterogeneous noise's survivors")
    parser.add_argument("--eot", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=1, help="survivors per batch (one record append each)")
    parser.add_argument("--memory-budget-gb", type=float, default=10.0)
    parser.add_argument("--out", default=str(RECORDS), help="run folders of the new rows (default: committed)")
    parser.add_argument("--rescore-runs", type=int, default=32, help="rows: rescore each new row at this R (0: no)")
    args = parser.parse_args()
    shared_dir()
    {"worst-case": worst_case, "strength": strength, "published": published, "rows": rows}[args.command](args)


if __name__ == "__main__":
    main()

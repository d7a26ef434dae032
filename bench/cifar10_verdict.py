"""The CIFAR-10 verdict under the strict counting rules and the strongest attack the CPU budget affords.

Builds on the rows of bench/cifar10_robust.py (their committed run folders) with the harness's combine /
compare / rescore and ``data.survivors_of`` (docs/evaluation.md). Commands:

    python bench/cifar10_verdict.py worst-case      # the committed surrogate + exact rows, per-image worst case
    python bench/cifar10_verdict.py strength --n 32 [--defences ...] [--attacks ...]   # strength per core-second
    python bench/cifar10_verdict.py published --n 32 --steps 10  # DiffAttack, DiffHammer on the survivors
    python bench/cifar10_verdict.py rows --n 128 --attacks pgd apgd-dlr --defences D [--mask-attacks ...]
    python bench/cifar10_verdict.py worst --n 128 --attacks pgd apgd-dlr   # when every row is done

``rows`` runs a defence's new rows: the chain ``--attacks`` (each on what the committed rows and the attacks
before it left) and, on heterogeneous noise, each ``--mask-attacks`` attack on what the chain left (independent
of each other: once the chain is done, give each its own process with ``--mask-attacks A``), each rescored at
R = ``--rescore-runs``. ``worst`` resumes them all (a row another process is writing is refused), combines each
defence's rows into its worst-case row, compares the two and states what R = 32 votes change.

Counting everywhere: robust = clean-correct and every adversarial evaluation of every attack correct, a vote
whose top count the true label shares with another class is wrong (``run.ties: wrong``). Each new attack runs
only on the images still robust in the rows before it (``data.survivors_of``), so an expensive attack is paid
only where the cheap ones failed; ``combine`` then gives each defence's worst-case row. Every run resumes:
kill and rerun at will, one process per core with ``OMP_NUM_THREADS=1``, commit records as batches finish.

Writes docs/results/cifar10_verdict.json (worst-case rows, their pairing, strength per cost, the cost and
breaks of each new row, the R = 32 rescoring) and, for ``worst``, merges the worst-case rows into
docs/results/cifar10_robust.json and their pairing into docs/results/cifar10_paired.json. ``--sources DIR``
with ``--paper-budget``, ``--device cuda`` and the model flags runs the same verdict on rows made elsewhere
(a GPU job; docs/RESULTS.md, "What would still change the verdict").
"""

from __future__ import annotations

import argparse
import functools
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from _common import REPO, print_table, shared_dir
from cifar10_robust import PAIRS, ROWS, add_model_flags, merge_into, row_config  # noqa: F401 (ROWS: the rows this builds on)

from hetpure.evaluate import evaluate
from hetpure.evaluation.combine import combine, compare
from hetpure.evaluation.counting import image_status, outcome_correct, outcomes
from hetpure.evaluation.rescore import rescore
from hetpure.evaluation.runs import load_run, robust_indices, survivor_indices
from hetpure.evaluation.stats import mcnemar_p

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


def sources(defence: str, args: argparse.Namespace | None = None) -> list[Path]:
    """The rows of a defence whose survivors the new attacks condition on: its surrogate and exact rows (the
    committed ones, or those under ``--sources``, e.g. a GPU run of bench/cifar10_robust.py at another budget)."""
    root = Path(args.sources) if args is not None and args.sources else RECORDS
    return [root / defence, root / f"{defence}-exact"]


def attack_config(defence: str, attack: str, args: argparse.Namespace, conditioned: list[Path],
                  clean: str = "each") -> dict[str, Any]:
    """One exact-gradient attack on a defence's survivors: EOT ``--eot``, ``--steps`` iterations, R = 8, K = 1;
    ``clean``: ``data.survivors_clean``."""
    opts = defaults(args)
    cfg = row_config(defence, opts, n=args.n)
    cfg["attack"].update({"gradient": "exact", "eot": args.eot, "steps": args.steps, "step_size": None,
                          "memory_budget_gb": args.memory_budget_gb, **ATTACKS[attack]})
    cfg["data"]["survivors_of"] = [str(p) for p in conditioned]
    if clean != "each":
        cfg["data"]["survivors_clean"] = clean
    cfg["run"].update(batch_size=args.batch_size, ties="wrong", save_images=False)
    return cfg


def run(cfg: dict[str, Any], folder: Path) -> dict[str, Any] | None:
    """One resumable run; None when the runs it conditions on left nothing to attack."""
    from hetpure.errors import ConfigError

    cfg["run"]["out"] = str(folder)
    print(f"\n== {folder.name} ==", flush=True)
    try:
        return when_unlocked(lambda: evaluate(cfg))
    except ConfigError as exc:
        if "nothing is left to attack" not in str(exc):
            raise
        print(f"{folder.name}: skipped, {exc}", flush=True)
        return None


def when_unlocked(job: Any, tries: int = 10, wait_s: float = 15.0) -> Any:
    """``job()``, retried while another process holds the run folder's lock (parallel ``rows`` processes resume
    the same finished chain rows at start-up; each holds a folder for seconds). A row another process is still
    computing stays refused after ``tries`` × ``wait_s`` seconds, with hetpure's message."""
    import time

    from hetpure.errors import RecordsError

    for attempt in range(tries):
        try:
            return job()
        except RecordsError as exc:
            if "another hetpure run is writing" not in str(exc) or attempt == tries - 1:
                raise
            time.sleep(wait_s)
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
            s = run(attack_config(defence, attack, args, sources(defence, args)), folder)
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


def plan(defence: str, args: argparse.Namespace) -> list[tuple[str, Path, list[Path]]]:
    """The new rows of a defence as (attack, run folder, the runs it conditions on). The chain ``--attacks`` runs
    in order, each attack on what the committed rows and the attacks before it left; on heterogeneous noise
    every mask-aware attack then runs on what the whole chain left, independently of the others (so they can run
    in parallel processes once the chain is done)."""
    out = Path(args.out) / "verdict"
    steps: list[tuple[str, Path, list[Path]]] = []
    conditioned = base_of_chain(defence, args)
    for attack in args.attacks:
        folder = out / f"{defence}-{attack}-eot{args.eot}"
        steps.append((attack, folder, list(conditioned)))
        conditioned.append(folder)
    if defence == "heterogeneous":
        steps += [(a, out / f"{defence}-{a}-eot{args.eot}", list(conditioned)) for a in args.mask_attacks]
    return steps


def run_plan(defence: str, args: argparse.Namespace, steps: list[tuple[str, Path, list[Path]]]
             ) -> list[tuple[str, Path, dict[str, Any], dict[str, Any] | None]]:
    """Run (resume) each step and rescore its saved examples at R = ``--rescore-runs``; skip a step whose
    conditioning left nothing to attack (and drop it from the later steps' conditioning).

    Every step after the first takes its survivors by ``combine``'s rule (``data.survivors_clean: first``): a row's
    own clean vote can be wrong on an image the worst-case row counts robust (the surrogate row's clean vote), and
    such an image must still be attacked. The first step conditions on :func:`base_of_chain`, which gives the
    same images under either rule."""
    done = []
    skipped: set[Path] = set()
    for k, (attack, folder, conditioned) in enumerate(steps):
        kept = [c for c in conditioned if c not in skipped]
        s = run(attack_config(defence, attack, args, kept, "each" if k == 0 else "first"), folder)
        if s is None:
            skipped.add(folder)
            continue
        rescored = None
        if args.rescore_runs:
            rescored = when_unlocked(functools.partial(rescore, folder, rescored_folder(folder, args),
                                                       {"defense": {"runs": args.rescore_runs}}))
        done.append((attack, folder, s, rescored))
    return done


def rescored_folder(folder: Path, args: argparse.Namespace) -> Path:
    return folder.parent / f"{folder.name}-R{args.rescore_runs}"


def base_of_chain(defence: str, args: argparse.Namespace) -> list[Path]:
    """What the first new row of a defence conditions on: its surrogate and exact rows, or their combination.

    ``data.survivors_of`` keeps the images robust in *each* listed row (each under its own clean evaluation),
    while ``combine`` counts the clean evaluation of the first row only. An image whose clean vote is right in
    the surrogate row but wrong in the exact row's own evaluation is robust in the combination yet no survivor
    of the two rows: a new row would never attack it and ``combine`` would leave it out. So when the two sets
    differ on the images both rows hold (uniform t_l: 3 such images), the chain conditions on the combined folder
    (``worst-case``, brought up to date first) instead, whose robust images are exactly those counted.
    """
    raw = sources(defence, args)
    runs = [load_run(f) for f in raw]
    counted = survivor_indices(runs, "wrong", "first")
    if survivor_indices(runs, "wrong", "each") == counted:
        return raw
    combined = raw[0].parent / "combined" / f"{defence}-surrogate+exact"
    current = load_run(combined) if (combined / "config.json").exists() else None
    images = set.intersection(*({int(r["index"]) for r in run.records} for run in runs))
    if current is None or {int(r["index"]) for r in current.records} != images or \
            robust_indices(current, "wrong") != counted:
        when_unlocked(lambda: combine(raw, combined))  # brought up to date with the rows (same identity)
    return [combined]


def rows(args: argparse.Namespace) -> None:
    """Item 4, the runs: the chosen attack(s) on each defence's survivors at ``--n`` and, on heterogeneous noise's,
    the exact mask-aware attacks, each rescored at R = 32. ``worst`` then combines and compares them."""
    for defence in args.defences:
        run_plan(defence, args, plan(defence, args))
    print(f"\nthen, when every process is done: {worst_command(args.argv)}", flush=True)


def worst_command(argv: list[str]) -> str:
    """The ``worst`` command of a ``rows`` command line: the same flags, without ``--defences`` and
    ``--mask-attacks`` (``worst`` takes both defences and every mask-aware attack)."""
    kept, skipping = [], False
    for word in argv:
        if word.startswith("--"):
            skipping = word.split("=")[0] in ("--defences", "--mask-attacks")
        if not skipping:
            kept.append("worst" if word == "rows" else word)
    return " ".join(["python", "bench/cifar10_verdict.py", *map(shlex.quote, kept)])


def worst(args: argparse.Namespace) -> None:
    """Item 4, the verdict: every row of both defences finished (resumed: a row another process still writes is
    refused), each defence's worst-case row (``combine``), the pair (``compare``), the cost and breaks of each
    attack, and what R = 32 votes on the new rows' saved examples do to the verdict."""
    out = Path(args.out)
    summaries: dict[str, dict[str, Any]] = {}
    attack_rows: list[dict[str, Any]] = []
    noise: dict[str, dict[str, Any]] = {}
    for defence in DEFENCES:
        steps = plan(defence, args)
        done = run_plan(defence, args, steps)
        folders = steps[0][2] + [folder for _, folder, _, _ in done]  # the chain's base, then the new rows
        if not done:
            raise SystemExit(f"{defence}: no new row ran (nothing survived the committed rows?); nothing to combine")
        summaries[defence] = combine(folders, out / f"{defence}-worst")
        if summaries[defence].get("left_out_unfinished"):  # would bias the row: robust images missing, broken kept
            raise SystemExit(f"{defence}-worst leaves out images {summaries[defence]['left_out_unfinished'][:8]} "
                             f"that a row on survivors never attacked; run every row at the rows' --n "
                             f"(here {args.n}, the images of {folders[0].name})")
        add_rows(args, {f"{defence}-worst": summaries[defence]})
        attack_rows += [attack_entry(defence, attack, folder, s, r) for attack, folder, s, r in done]
        if args.rescore_runs:
            noise[defence] = vote_noise(
                [(a, load_run(f).records, load_run(rescored_folder(f, args)).records) for a, f, _, _ in done])
    pair = compare(out / "heterogeneous-worst", out / "uniform-tl-worst")
    print_worst(summaries, pair)
    target = verdict_file(args)
    merge(target, "worst", [{"defence": d, **row_of(s)} for d, s in summaries.items()], key=lambda r: r["defence"])
    merge(target, "worst pair", [pair], key=lambda r: (r["row"], r["reference"]))
    merge(target, "worst attacks", attack_rows, key=lambda r: (r["defence"], r["attack"]))
    if noise:
        worst_records = {d: load_run(out / f"{d}-worst").records for d in DEFENCES}
        merge(target, f"worst R{args.rescore_runs}", [vote_noise_verdict(worst_records, noise, args.rescore_runs)],
              key=lambda r: r["runs"])
    if target == VERDICT:
        merge_into(REPO / "docs/results/cifar10_paired.json", [pair], lambda r: (r["row"], r["reference"]), PAIRS)


def attack_entry(defence: str, attack: str, folder: Path, s: dict[str, Any],
                 rescored: dict[str, Any] | None) -> dict[str, Any]:
    """One new row: what it attacked and broke, its cost in core-hours (the records' seconds), its EOT
    diagnostic and its rescoring."""
    seconds = (s["seconds_per_image"] or 0) * s["n"]
    entry = {"defence": defence, "attack": attack, "folder": f"verdict/{folder.name}",
             "settings": {k: s["config"]["attack"].get(k) for k in ("name", "eps", "steps", "eot", "gradient",
                                                                     *ATTACKS[attack])},
             "attacked": s["n"], "broke": s["per_attack"][0]["broke"], "core_hours": seconds / 3600,
             "seconds_per_image": s["seconds_per_image"], "machine": s["machine"],
             "conditioned_on": s.get("conditioned_on"), "eot_diagnostic": s.get("eot_diagnostic")}
    if rescored:
        entry["rescored"] = {k: rescored[k] for k in ("n", "clean_accuracy", "robust_accuracy",
                                                      "adversarial_accuracy") if k in rescored}
        entry["rescored"]["runs"] = rescored["config"]["defense"]["runs"]
    return entry


def vote_noise(new_rows: list[tuple[str, list[dict[str, Any]], list[dict[str, Any]]]],
               ties: str = "wrong") -> dict[str, Any]:
    """What more votes do to a defence's new rows: each (attack, its records at R = 8, its rescoring's records at
    R = 32) in the order of :func:`plan`. Per image attacked by the first new row (the survivors of the committed
    rows, robust there): robust at R = 8 when every new row that attacked it is correct (the worst-case row's
    rule); at R = 32 *broken* when a new row's saved example is wrong under 32 votes, *unresolved* when every
    saved example is right under 32 votes but a later row never attacked it (an earlier one broke it at R = 8),
    else robust. Clean evaluations stay those of the worst-case row; only the adversarial votes change.

    Returns per image ``{index: "robust" | "broken" | "unresolved"}`` at R = 8 and R = 32 and per row the
    attacked images correct at R = 8 and at R = 32 (and how many flipped each way)."""
    at8: dict[int, str] = {}
    at32: dict[int, str] = {}
    first = {int(r["index"]) for r in new_rows[0][1]} if new_rows else set()
    per_row = []
    for attack, records, rescored in new_rows:
        ok8 = {int(r["index"]): outcome_correct(outcomes(r)[0], int(r["label"]), ties) for r in records}
        ok32 = {int(r["index"]): outcome_correct(outcomes(r)[0], int(r["label"]), ties) for r in rescored}
        if set(ok32) != set(ok8):
            raise SystemExit(f"the rescoring of {attack} holds other images than its row; rerun it to finish")
        per_row.append({"attack": attack, "attacked": len(ok8), "correct_r8": sum(ok8.values()),
                        "correct_r32": sum(ok32.values()),
                        "r8_only": sum(ok8[i] and not ok32[i] for i in ok8),
                        "r32_only": sum(ok32[i] and not ok8[i] for i in ok8)})
        for i in first:
            if i in ok8:
                at8[i] = "broken" if not ok8[i] or at8.get(i) == "broken" else "robust"
                at32[i] = "broken" if not ok32[i] or at32.get(i) == "broken" else at32.get(i, "robust")
            else:  # not attacked by this row: an earlier new row broke it at R = 8
                at8[i] = "broken"
                if at32.get(i, "robust") == "robust":
                    at32[i] = "unresolved"
    return {"images": len(first), "at_r8": at8, "at_r32": at32, "per_row": per_row}


def vote_noise_verdict(worst_records: dict[str, list[dict[str, Any]]], noise: dict[str, dict[str, Any]],
                       runs: int) -> dict[str, Any]:
    """The worst-case rows with the new rows' adversarial votes at R = ``runs`` (:func:`vote_noise`): per defence
    the robust accuracy with unresolved images counted broken (lower) and robust (upper), the images whose status
    changed, and bounds on the paired difference of the two defences: the first defence's unresolved images
    broken and the second's robust (``pair_lower``), and the other way round (``pair_upper``)."""
    status: dict[str, dict[str, dict[int, bool]]] = {}
    out: dict[str, Any] = {"runs": runs, "defences": {}}
    for d, records in worst_records.items():
        n8 = noise[d]["at_r8"]
        n32 = noise[d]["at_r32"]
        robust8 = {int(r["index"]): image_status(r, "wrong")["robust"] for r in records}
        mismatch = [i for i, ok in robust8.items() if i in n8 and ok != (n8[i] == "robust")]
        if mismatch or any(robust8[i] for i in robust8 if i not in n8):
            raise SystemExit(f"{d}-worst and its new rows disagree on images {mismatch[:5]}; rerun worst")
        lower = {i: i in n32 and n32[i] == "robust" for i in robust8}
        upper = {i: i in n32 and n32[i] in ("robust", "unresolved") for i in robust8}
        status[d] = {"lower": lower, "upper": upper}
        n = len(robust8)
        out["defences"][d] = {
            "n": n, "robust_r8": sum(robust8.values()) / n, "robust_lower": sum(lower.values()) / n,
            "robust_upper": sum(upper.values()) / n,
            "unresolved": sum(n32[i] == "unresolved" for i in n32 if i in robust8),
            "robust_at_r8_broken_at_r32": sum(n8[i] == "robust" and n32[i] == "broken" for i in n8 if i in robust8),
            "broken_at_r8_robust_at_r32": sum(n8[i] == "broken" and n32[i] == "robust" for i in n8 if i in robust8),
            "per_row": noise[d]["per_row"]}
    a, b = DEFENCES
    shared = sorted(set(status[a]["lower"]) & set(status[b]["lower"]))
    # bounds on the difference a − b: a's unresolved broken and b's robust (lower), and the other way (upper)
    for bound, (x, y) in {"lower": (status[a]["lower"], status[b]["upper"]),
                          "upper": (status[a]["upper"], status[b]["lower"])}.items():
        wins = sum(x[i] and not y[i] for i in shared)
        losses = sum(y[i] and not x[i] for i in shared)
        out[f"pair_{bound}"] = {"row": a, "reference": b, "n": len(shared), "wins": wins, "losses": losses,
                                "difference": (wins - losses) / len(shared), "p_value": mcnemar_p(wins, losses)}
    return out


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
    parser.add_argument("command", choices=["worst-case", "strength", "published", "rows", "worst"])
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
    parser.add_argument("--sources", default=None,
                        help="the folder holding each defence's surrogate and exact rows (default: the committed ones)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-batch", type=int, default=None, help="defense.max_batch (raise it on a GPU)")
    parser.add_argument("--paper-budget", action="store_true",
                        help="the defence at the paper's S = 500, R = 20 (the --sources rows must match)")
    add_model_flags(parser)
    args = parser.parse_args()
    args.argv = sys.argv[1:]
    shared_dir()
    {"worst-case": worst_case, "strength": strength, "published": published, "rows": rows,
     "worst": worst}[args.command](args)


if __name__ == "__main__":
    main()

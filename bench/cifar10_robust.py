"""CIFAR-10 robustness of heterogeneous vs uniform purification on the shared models.

Every row is one resumable ``hetpure.evaluate`` run under OUT/<row>/ (kill and rerun at will: finished
images are kept; a larger ``--n`` extends a run, since the subset is a prefix of one seeded permutation).
OUT defaults to docs/results/records/cifar10, which is committed, so a long table is built up across
sessions. Commands:

    python bench/cifar10_robust.py table  [--n 256] [--rows ...] [--tuned-tl 0.2 --tuned-tau 0.7]
    python bench/cifar10_robust.py table  --rows heterogeneous-exact+diffhammer   # ROW+ATTACK: a published attack
    python bench/cifar10_robust.py summaries [--rows ...]    # re-summarise every committed row, no recompute
    python bench/cifar10_robust.py tune   [--n 256]          # TRAIN split: picks τ and t_l for "tuned"
                                      [--screen-n 32 --keep 2]  # successive halving over the grid
    python bench/cifar10_robust.py sweep  [--n 16]           # t_l × τ grid, plot of clean/robust accuracy
    python bench/cifar10_robust.py figures                   # example grid, level maps (+ the sweep plot)
    python bench/cifar10_robust.py ablations [--n 16]        # adaptive attacks, mask sources, resampling
    python bench/cifar10_robust.py cost                      # seconds, ε-calls, floor and peak RSS per row

Budget (2-core CPU default, about 35 s per image and row on one core): PGD-EOT L∞ 8/255, step 0.007,
20 iterations × EOT 4, gradients through the S = 10 surrogate; defence S = 100, R = 8 votes, K = 1
defended evaluation of each adversarial image (``--worst-case-k 3`` adds the worst case over 3).
``--paper-budget`` gives the paper's 200 × 20, S = 500, R = 20 (for GPUs: add ``--device cuda`` and a larger
``--max-batch``, the images per ε-model call; a new value is a new run, since it changes the random streams).
A row whose settings equal another row's (the tuned row, when tuning selects the paper's settings) reuses
that row's records instead of recomputing them (``records_from`` in the JSON).
The heterogeneous-exact row attacks through the defence's own S = 100 sampler with per-step
checkpointing. The diffpure and gdmp rows are the peers (DiffPure t* = 0.1, 100 Euler–Maruyama steps = 100
ε-calls per purification; GDMP t* = 0.036, 4 guided iterations = 144 ε-calls), with the same votes, attack
and test images, attacked through their own 10-step surrogates and paired against heterogeneous.
The prefix-protocol row reproduces the authors' evaluation script before its commit fbb99ce:
PGD-EOT crafted through heterogeneous purification (S = 10 surrogate), scored on uniform t* = t_s.

Writes docs/results/cifar10_robust.json (the table as data) and prints the table in Markdown.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from _common import REPO, print_table, shared_dir

from hetpure.evaluate import evaluate

T_S, T_L, TAU, U = 0.1, 0.2, 0.9, 3
ROWS = ("none", "uniform-ts", "uniform-tl", "heterogeneous", "heterogeneous-tuned", "heterogeneous-graded",
        "heterogeneous-exact", "uniform-tl-exact", "prefix-protocol", "diffpure", "gdmp", "diffpure-exact",
        "diffpure-adjoint")
# the peers at their authors' CIFAR-10 settings (docs/method.md, "The peers"): DiffPure t* = 0.1 with 100
# Euler–Maruyama steps; GDMP 36 of 1000 steps (this DDPM has the same T = 1000 linear schedule), 4 iterations,
# MSE guidance at its code's strength (gdmp_scale 28687.5)
# rows whose attack differentiates the defence's own solver (exact, or DiffPure's adjoint): half the EOT samples
# and their own --n-exact
THROUGH_SOLVER = ("-exact", "-adjoint")
DIFFPURE = {"method": "diffpure", "t_star": 0.1, "sde_steps": 100}
# the published attacks on diffusion purification (docs/evaluation.md, "DiffAttack and DiffHammer"), at their
# defaults: ROW+ATTACK (e.g. heterogeneous-exact+diffhammer) is ROW's defence, images and budget (steps; EOT for
# diffattack) attacked by ATTACK instead of PGD. Not in the default --rows.
PUBLISHED = {
    "diffattack": {"name": "diffattack", "diffattack_weight": 1.0, "diffattack_every": 1, "diffattack_loss": "ce"},
    "diffhammer": {"name": "diffhammer", "diffhammer_samples": 10, "diffhammer_k": 5.0, "diffhammer_em_steps": 5,
                   "diffhammer_loss": "cw"},
}
ATTACK_ROWS = tuple(f"{row}+{attack}" for attack in PUBLISHED for row in ROWS if row != "none")
GDMP = {"method": "gdmp", "t_star": 0.036, "gdmp_guidance": "mse", "gdmp_scale": 28687.5, "gdmp_iterations": 4}


def base_config(args: argparse.Namespace, split: str, n: int) -> dict[str, Any]:
    shared = shared_dir()
    paper = args.paper_budget
    return {
        "data": {"name": "imagefolder", "root": str(shared / "data/cifar10"), "split": split, "n": n, "seed": 0},
        "classifier": {"name": "cifar_resnet20", "path": str(shared / "models/resnet20-cifar10/model.safetensors")},
        "diffusion": {"kind": "diffusers", "path": str(shared / "models/ddpm-cifar10-tiny")},
        "defense": {"method": "heterogeneous", "t_s": T_S, "t_l": T_L, "tau": TAU, "resample_steps": U,
                    "ddim_steps": 500 if paper else args.ddim_steps, "runs": 20 if paper else args.runs},
        "attack": {"name": "pgd", "norm": "linf", "eps": 8 / 255, "step_size": 0.007,
                   "steps": 200 if paper else args.steps, "eot": 20 if paper else args.eot,
                   "gradient": "surrogate", "surrogate_ddim_steps": 10},
        "run": {"batch_size": args.batch_size, "device": args.device, "seed": 0, "worst_case_k": args.worst_case_k,
                "save_images": True, "progress": True},
        **model_sections(args),
    }


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """Flags that put other models in place of the shared ResNet-20 and tiny DDPM (e.g. the paper's WRN-28-10 and
    DiffPure's Score-SDE checkpoint, docs/checkpoints.md): a run folder then has another identity."""
    parser.add_argument("--classifier", default=None, help="a classifier of `hetpure list` (with --classifier-path)")
    parser.add_argument("--classifier-path", default=None, help="its weights")
    parser.add_argument("--diffusion-kind", default=None, help="an ε-model kind of `hetpure list` (e.g. ncsnpp)")
    parser.add_argument("--diffusion-path", default=None, help="its checkpoint or folder")


def model_sections(args: argparse.Namespace) -> dict[str, Any]:
    """The classifier and diffusion sections that ``add_model_flags`` asked for ({} for the shared models)."""
    sections: dict[str, Any] = {}
    for section, name, path, what in (("classifier", "classifier", "classifier_path", "name"),
                                      ("diffusion", "diffusion_kind", "diffusion_path", "kind")):
        given = getattr(args, name, None), getattr(args, path, None)
        if any(given) and not all(given):
            sys.exit(f"give --{name.replace('_', '-')} and --{path.replace('_', '-')} together")
        if all(given):
            sections[section] = {what: given[0], "path": given[1]}
    return sections


def row_config(row: str, args: argparse.Namespace, split: str = "test", n: int | None = None) -> dict[str, Any]:
    if "+" in row:  # ROW+ATTACK: a published attack on ROW (PUBLISHED)
        base, attack = row.split("+", 1)
        if attack not in PUBLISHED or base not in ROWS:
            sys.exit(f"unknown row {row!r}; choose from {ROWS} or ROW+ATTACK with ATTACK one of {list(PUBLISHED)}")
        cfg = row_config(base, args, split, n)
        cfg["attack"].update(PUBLISHED[attack])
        return cfg
    cfg = base_config(args, split, n or args.n)
    d = cfg["defense"]
    if row == "none":
        cfg["defense"] = {"method": "none"}
    elif row in ("uniform-ts", "uniform-tl", "uniform-tl-exact"):
        cfg["defense"] = {"method": "uniform", "t_star": T_S if row == "uniform-ts" else T_L,
                          "ddim_steps": d["ddim_steps"], "runs": d["runs"]}
    elif row == "heterogeneous-tuned":
        d.update(t_l=args.tuned_tl, tau=args.tuned_tau)
    elif row == "heterogeneous-graded":
        d.update(t_l=args.tuned_tl, levels="graded", tau_lo=args.graded_lo, tau_hi=args.graded_hi)
    elif row == "prefix-protocol":  # the authors' ddp_test.py before fbb99ce: attack heterogeneous, score uniform t_s
        cfg["defense"] = {"method": "uniform", "t_star": T_S, "ddim_steps": d["ddim_steps"], "runs": d["runs"]}
        cfg["attack"]["through"] = {"method": "heterogeneous", "t_s": T_S, "t_l": T_L, "tau": TAU,
                                    "resample_steps": U}
    elif row in ("diffpure", "gdmp", "diffpure-exact", "diffpure-adjoint"):  # the votes, attack, images of the rest
        cfg["defense"] = {**(GDMP if row == "gdmp" else DIFFPURE), "runs": d["runs"]}
    elif row not in ("heterogeneous", "heterogeneous-exact"):
        sys.exit(f"unknown row {row!r}; choose from {ROWS}")
    if row.endswith(THROUGH_SOLVER):
        # adjoint: DiffPure's torchsde adjoint SDE, approximate gradients (the DiffPure vs DiffBreak question)
        cfg["attack"]["gradient"] = "adjoint" if row.endswith("-adjoint") else "exact"
        cfg["attack"]["eot"] = max(1, cfg["attack"]["eot"] // 2)
        # keep the whole graph when it fits (1.4× faster than per-step checkpointing; the same records):
        # the estimate for batch 8 × EOT 2 at S = 100 is 8.2 GB (measured 3.9 GB), two jobs fit in 24 GB
        cfg["attack"]["memory_budget_gb"] = args.memory_budget_gb
    if args.max_batch is not None:  # a GPU's ε-call batch; it changes the random streams, so a new run folder
        for defense in (cfg["defense"], cfg["attack"].get("through")):
            if defense and defense["method"] != "none":
                defense["max_batch"] = args.max_batch
    return cfg


def row_images(row: str, args: argparse.Namespace) -> int | None:
    """The row's number of test images: ``--n-exact`` for the rows attacked through the solver, else None (--n)."""
    return args.n_exact if row.split("+")[0].endswith(THROUGH_SOLVER) else None


def run_row(cfg: dict[str, Any], out: Path) -> dict[str, Any]:
    cfg["run"]["out"] = str(out)
    print(f"\n== {out.name} ==", flush=True)
    return evaluate(cfg)


def adopt_twin(cfg: dict[str, Any], folder: Path) -> str | None:
    """Reuse the records of a sibling row that ran with exactly these settings.

    When tuning selects the paper's settings, the tuned row *is* the heterogeneous row: the same settings
    hash, hence the same images, random streams and attacks. Rather than recompute it, copy the sibling's
    finished records (those of this hash only) into ``folder``; ``evaluate`` then resumes from them and
    computes only images the sibling lacks. Returns the sibling's name, or None when there is none (or
    ``folder`` already holds a run with other settings, which ``evaluate`` reports).
    """
    from hetpure.evaluate import append_records, read_records, resolve_config, settings_hash

    def hash_of(path: Path) -> str | None:
        return json.loads(path.read_text()).get("settings_hash") if path.exists() else None

    digest = settings_hash(resolve_config(cfg))
    if hash_of(folder / "config.json") not in (None, digest) or not folder.parent.is_dir():
        return None
    for other in sorted(p for p in folder.parent.iterdir() if p.is_dir() and p != folder):
        if hash_of(other / "config.json") != digest or not (other / "records.jsonl").exists():
            continue
        mine = folder / "records.jsonl"
        have = {r["index"] for r in read_records(mine) if r.get("settings_hash") == digest}
        new = [r for r in read_records(other / "records.jsonl")
               if r.get("settings_hash") == digest and r["index"] not in have]
        folder.mkdir(parents=True, exist_ok=True)
        append_records(mine, new)
        print(f"{folder.name}: same settings as {other.name}; reused {len(new)} of its records", flush=True)
        return other.name
    return None


def describe(d: dict[str, Any]) -> str:
    if d["method"] == "none":
        return "–"
    if d["method"] == "uniform":
        return f"t*={d['t_star']}"
    if d["method"] == "diffpure":
        return f"DiffPure t*={d['t_star']} EM steps={d['sde_steps']}"
    if d["method"] == "gdmp":
        return f"GDMP t*={d['t_star']} {d['gdmp_guidance']} s={d['gdmp_scale']:g} ×{d['gdmp_iterations']}"
    mask = f"τ={d['tau']}" if d["levels"] == "binary" else f"graded {d['tau_lo']}–{d['tau_hi']}"
    return f"t_s={d['t_s']} t_l={d['t_l']} {mask} U={d['resample_steps']}"


def pct(v: float) -> str:
    return f"{100 * v:.1f}"


def merge_into(target: Path, items: list[dict[str, Any]], key: Any, order: Any) -> None:
    """Merge ``items`` into the JSON list at ``target`` (replacing entries with the same ``key(item)``),
    ordered as ``order`` lists the keys, so one command refreshes only the rows it ran; entries of keys not in
    ``order`` (the rows bench/cifar10_verdict.py adds) stay, after them."""
    merged = {key(r): r for r in (json.loads(target.read_text()) if target.exists() else [])}
    merged.update({key(r): r for r in items})
    target.parent.mkdir(parents=True, exist_ok=True)
    keys = [k for k in order if k in merged] + [k for k in merged if k not in order]  # others (verdict rows) kept
    target.write_text(json.dumps([merged[k] for k in keys], indent=2) + "\n")


def entry_of(row: str, s: dict[str, Any], twin: str | None = None) -> tuple[list[Any], dict[str, Any]]:
    """A row's printed cells and its JSON entry from its summary (counting rules: docs/evaluation.md)."""
    a = s["config"]["attack"]
    ci, cci = s["robust_accuracy_ci95"], s["clean_accuracy_ci95"]
    d = s["config"]["defense"]
    setting = describe(d) + (f" (attacked: {describe(a['through'])})" if a.get("through") else "")
    cells = [row, setting, s["n"], f"{pct(s['clean_accuracy'])} ({pct(cci[0])}–{pct(cci[1])})",
             f"{pct(s['robust_accuracy'])} ({pct(ci[0])}–{pct(ci[1])})", pct(s["adversarial_accuracy"]),
             pct(s["robust_accuracy_worst_case"]), s["eps_calls"]["defence_per_purification"],
             s["eps_calls"]["attack_per_image"], f"{s['seconds_per_image']:.1f}"]
    entry = {
        "defense": row, "settings": d, "counting": s["counting"], "clean_accuracy": s["clean_accuracy"],
        "clean_accuracy_ci95": cci, "robust_accuracy": s["robust_accuracy"], "robust_accuracy_ci95": ci,
        "adversarial_accuracy": s["adversarial_accuracy"], "adversarial_accuracy_ci95": s["adversarial_accuracy_ci95"],
        "robust_accuracy_worst_case": s["robust_accuracy_worst_case"], "n": s["n"],
        "attack": {**{k: a[k] for k in ("name", "norm", "eps", "step_size", "steps", "eot", "gradient",
                                        "surrogate_ddim_steps")},
                   **{k: v for k, v in a.items() if k.startswith(f"{a['name']}_")}},  # e.g. diffhammer_samples
        **({"attacked_through": a["through"]} if a.get("through") else {}),
        "eps_calls": s["eps_calls"], "seconds_per_image": s["seconds_per_image"], "machine": s["machine"],
        "finished": s["finished"], **({"records_from": twin} if twin else {}),
    }
    return cells, entry


HEADERS = ["defence", "settings", "n", "clean % (95% CI)", "robust % (95% CI)", "adversarial %", "worst-of-K %",
           "ε-calls/purification", "attack ε-calls/image", "s/image"]


def table(args: argparse.Namespace) -> None:
    out = Path(args.out)
    rows, data = [], []
    for row in args.rows:
        cfg = row_config(row, args, n=row_images(row, args))
        cfg["run"]["out"] = str(out / row)
        twin = adopt_twin(cfg, out / row)
        cells, entry = entry_of(row, run_row(cfg, out / row), twin)
        rows.append(cells)
        data.append(entry)
    write_table(out, rows, data, list(args.rows))


def results_file(out: str | Path, name: str) -> Path:
    """docs/results/NAME when the run folders are the committed ones; OUT/NAME beside them for any other --out,
    so a scratch or GPU run (e.g. the paper's budget) never overwrites the committed results."""
    committed = (REPO / "docs/results/records/cifar10").resolve()
    return REPO / "docs/results" / name if Path(out).resolve() == committed else Path(out) / name


def shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def write_table(out: Path, rows: list[list[Any]], data: list[dict[str, Any]], names: list[str]) -> None:
    print("\ncounting: robust = clean-correct and every adversarial evaluation correct; a shared top vote is wrong\n")
    print_table(HEADERS, rows)
    target = results_file(out, "cifar10_robust.json")
    merge_into(target, data, lambda r: r["defense"], ROWS + ATTACK_ROWS)
    print(f"\nwrote {shown(target)}")
    comparisons = print_paired(out, names)
    if comparisons:
        merge_into(results_file(out, "cifar10_paired.json"), comparisons, lambda r: (r["row"], r["reference"]), PAIRS)


def refresh_points(out: Path) -> None:
    """The tune and sweep JSON re-counted from their run folders' records (strict counting), each point on the
    same images as before (the first n of its split's seeded permutation). The tuning *decisions* (which points
    went on at each rung) were made under hetpure 0.1's counting and are kept as they were, labelled so."""
    from hetpure.evaluation.counting import accuracies
    from hetpure.evaluation.runs import load_run

    def recount(folder: Path, n: int) -> dict[str, Any]:
        run = load_run(folder)
        first = [int(i) for i in build_dataset({**run.resolved_config(), "data": {**run.resolved_config()["data"],
                                                                                   "n": n}}).indices]
        records = run.by_index()
        return accuracies([records[i] for i in first if i in records], "wrong")

    from hetpure.evaluation.components import build_dataset

    tune_file = REPO / "docs/results/cifar10_tune.json"
    if tune_file.exists() and (out / "tune").is_dir():
        data = json.loads(tune_file.read_text())
        for point in data["grid"] + [p for rung in data["rungs"] for p in rung] + data["final"]:
            acc = recount(out / "tune" / f"tl{point['t_l']}_tau{point['tau']}", point["n"])
            point.update(clean_accuracy=acc["clean_accuracy"], robust_accuracy=acc["robust_accuracy"],
                         robust_accuracy_ci95=acc["robust_accuracy_ci95"])
        data["counting"] = "strict (docs/evaluation.md); the halving's choices were made under hetpure 0.1's counting"
        tune_file.write_text(json.dumps(data, indent=2) + "\n")
    sweep_file = REPO / "docs/results/cifar10_sweep.json"
    if sweep_file.exists() and (out / "sweep").is_dir():
        data = json.loads(sweep_file.read_text())
        for point in data["points"]:
            name = (f"uniform_t{point['t']}" if point["method"] == "uniform"
                    else f"hetero_tl{point['t']}_tau{point['tau']}")
            acc = recount(out / "sweep" / name, point["n"])
            point.update(clean=acc["clean_accuracy"], robust=acc["robust_accuracy"],
                         robust_ci95=acc["robust_accuracy_ci95"])
        data["counting"] = "strict (docs/evaluation.md)"
        sweep_file.write_text(json.dumps(data, indent=2) + "\n")
        plot_sweep(sweep_file, REPO / "docs/results/cifar10_sweep.png")


def summaries(args: argparse.Namespace) -> None:
    """Re-summarise every committed row from its own config.json (no record added: every image is finished),
    under the counting rules of this hetpure, and refresh the JSON tables."""
    from hetpure.evaluation.runs import load_run

    out = Path(args.out)
    rows, data, names = [], [], []
    for row in args.rows:
        if not (out / row / "config.json").exists():
            continue
        run = load_run(out / row)
        print(f"\n== {row} ==", flush=True)
        before = len(run.records)
        s = evaluate(run.resolved_config())
        if s["n"] != before or s["images_this_session"]:
            sys.exit(f"{row}: re-summarising computed images ({s['images_this_session']}); it must only summarise")
        twin = next((e.get("records_from") for e in json.loads((REPO / "docs/results/cifar10_robust.json").read_text())
                     if e["defense"] == row), None)
        cells, entry = entry_of(row, s, twin)
        rows.append(cells)
        data.append(entry)
        names.append(row)
    write_table(out, rows, data, names)
    if args.all:
        refresh_points(out)
    if args.all:  # every other run folder (tune, sweep, ablations, …): re-summarised, no table
        for config_file in sorted(out.rglob("config.json")):
            folder = config_file.parent
            if (folder.name in names or "combined_from" in json.loads(config_file.read_text())
                    or folder.relative_to(out).parts[0] in ("strength", "verdict")):  # bench/cifar10_verdict.py's
                continue
            run = load_run(folder)
            if run.records:
                print(f"== {folder.relative_to(out)} ==", flush=True)
                s = evaluate({**run.resolved_config(), "run": {**run.resolved_config()["run"], "progress": False}})
                if s["images_this_session"]:
                    sys.exit(f"{folder}: re-summarising computed images; it must only summarise")


def paired(out: Path, row: str, reference: str) -> dict[str, Any] | None:
    """Paired comparison (``hetpure.evaluate.paired_comparison``) of two rows' finished images."""
    from hetpure.evaluate import paired_comparison, read_records

    def load(name: str) -> list[dict[str, Any]]:
        summary = out / name / "summary.json"
        if not summary.exists():
            return []
        digest = json.loads(summary.read_text())["settings_hash"]
        return [r for r in read_records(out / name / "records.jsonl") if r["settings_hash"] == digest]

    result = paired_comparison(load(row), load(reference), "wrong")
    return {"row": row, "reference": reference, **result} if result["n"] else None


PAIRS = (("uniform-ts", "uniform-tl"), ("heterogeneous", "uniform-tl"), ("heterogeneous", "uniform-ts"),
         ("heterogeneous-tuned", "uniform-tl"), ("heterogeneous-tuned", "heterogeneous"),
         ("heterogeneous-graded", "uniform-tl"), ("heterogeneous-graded", "heterogeneous"),
         ("heterogeneous-exact", "heterogeneous"), ("uniform-tl-exact", "uniform-tl"),
         ("heterogeneous-exact", "uniform-tl-exact"), ("prefix-protocol", "uniform-ts"),
         ("prefix-protocol", "heterogeneous"), ("diffpure", "heterogeneous"), ("gdmp", "heterogeneous"),
         # the peers against the discrete baseline at the same t*, each other and heterogeneous under its exact
         # attack; DiffPure under its own exact and adjoint gradients
         ("diffpure", "uniform-ts"), ("diffpure", "heterogeneous-exact"), ("gdmp", "heterogeneous-exact"),
         ("gdmp", "uniform-ts"), ("gdmp", "diffpure"),
         ("diffpure-exact", "diffpure"), ("diffpure-adjoint", "diffpure-exact"),
         ("diffpure-exact", "heterogeneous-exact"))


def print_paired(out: Path, rows: list[str]) -> list[dict[str, Any]]:
    """Paired comparisons (``PAIRS``) that involve one of ``rows``, on the images both runs have finished."""
    wanted = [(a, b) for a, b in PAIRS if a in rows or b in rows]
    results = [r for a, b in wanted if (r := paired(out, a, b))]
    if results:
        print("\npaired comparisons (wins / losses = images only the row / only the reference gets right):")
        def share(c: dict[str, Any]) -> str:
            if "vote_share_difference" not in c:
                return "–"
            return f"{100 * c['vote_share_difference']:+.1f} ± {100 * c['vote_share_se']:.1f}"

        print_table(["defence", "reference", "n", "clean Δ pts", "clean wins/losses", "p", "clean Δ vote share",
                     "robust Δ pts", "robust wins/losses", "p", "robust Δ vote share"],
                    [[r["row"], r["reference"], r["n"], f"{100 * r['clean']['difference']:+.1f}",
                      f"{r['clean']['wins']}/{r['clean']['losses']}", f"{r['clean']['p_value']:.2g}",
                      share(r["clean"]), f"{100 * r['robust']['difference']:+.1f}",
                      f"{r['robust']['wins']}/{r['robust']['losses']}", f"{r['robust']['p_value']:.2g}",
                      share(r["robust"])]
                     for r in results])
        print("(Δ vote share: mean paired difference of the true class's share of the R votes, % ± SE)")
    return results


def tune_rank(r: dict[str, Any]) -> tuple[float, float]:
    """Robust accuracy first; clean accuracy breaks ties."""
    return (r["robust_accuracy"], r["clean_accuracy"])


def halve(points: list[dict[str, Any]], keep: int) -> list[dict[str, Any]]:
    """The ``keep`` best points by :func:`tune_rank`, in their original (grid) order."""
    best = sorted(points, key=tune_rank, reverse=True)[:keep]
    return [p for p in points if p in best]


def tune(args: argparse.Namespace) -> None:
    """Pick (t_l, τ) for the tuned row by robust accuracy on the TRAIN split (never the test subset).

    Successive halving (Jamieson & Talwalkar, 2016): every grid point is screened on the first
    ``--screen-n`` train images and the ``--keep`` best by robust accuracy go on; then n doubles at each
    rung (capped at ``--n``) and the better half (rounded up) goes on, until one point is left at ``--n``
    images. Every run is resumable and all runs share one seeded permutation, so a grown run keeps the
    images it already has and a point dropped at a rung costs only the images it was run on.
    The schedule is the library's (:func:`hetpure.tuning.tune`, also ``hetpure tune``); this command keeps
    its run folders (``tl{t_l}_tau{τ}``) and its JSON layout.
    """
    from hetpure.tuning import tune as tune_grid

    if args.n < 1 or args.screen_n < 0:
        sys.exit(f"tune: --n must be at least 1 and --screen-n at least 0 (0 = no screening stage); "
                 f"got --n {args.n} --screen-n {args.screen_n}")
    result = tune_grid(
        row_config("heterogeneous", args, split="train", n=args.n),
        {"defense.t_l": list(args.tl_grid), "defense.tau": list(args.tau_grid)},
        n=args.n, out=Path(args.out) / "tune", screen_n=args.screen_n, keep=max(1, args.keep), split="train",
        run=lambda cfg, folder: run_row(cfg, folder),  # looked up at call time (tests replace run_row)
        folder_name=lambda p: f"tl{p['defense.t_l']}_tau{p['defense.tau']}", write=False, log=lambda _: None,
    )
    screen_n = result["screen_n"]

    def row(r: dict[str, Any]) -> dict[str, Any]:
        return {"t_l": r["settings"]["defense.t_l"], "tau": r["settings"]["defense.tau"], "n": r["n"],
                "clean_accuracy": r["clean_accuracy"], "robust_accuracy": r["robust_accuracy"],
                "robust_accuracy_ci95": r["robust_accuracy_ci95"], "seconds_per_image": r["seconds_per_image"]}

    rungs = [[row(r) for r in rung] for rung in result["rungs"]]
    screened, final = rungs[0], rungs[-1]
    best = row(result["best"])
    print_table(["stage", "t_l", "τ", "n", "clean %", "robust %", "s/image"],
                [["screen" if i == 0 else f"rung {i}", r["t_l"], r["tau"], r["n"], pct(r["clean_accuracy"]),
                  pct(r["robust_accuracy"]), f"{r['seconds_per_image']:.1f}"]
                 for i, rows in enumerate(rungs) for r in rows])
    target = results_file(args.out, "cifar10_tune.json")
    target.write_text(json.dumps({
        "split": "train", "screen_n": screen_n, "n": args.n, "keep": args.keep,
        "selected": {"t_l": best["t_l"], "tau": best["tau"], "n": best["n"]},
        "grid": screened, "rungs": rungs[1:], "final": final,
    }, indent=2) + "\n")
    print(f"\nbest on the train split: t_l={best['t_l']} τ={best['tau']} (robust {pct(best['robust_accuracy'])}% "
          f"on n={best['n']}); use --tuned-tl {best['t_l']} --tuned-tau {best['tau']}")


def sweep(args: argparse.Namespace) -> None:
    """Clean and robust accuracy against the noise level: uniform t*, and heterogeneous t_l × τ (t_s fixed).

    Each point is a resumable run under OUT/sweep/; points are merged into docs/results/cifar10_sweep.json
    by (method, t, τ), so the grid can be split over several processes or sessions. Heterogeneous points
    need t_l > t_s (at t_l = t_s the method is uniform t* = t_s, which is the uniform point).
    """
    out = Path(args.out) / "sweep"
    target = results_file(args.out, "cifar10_sweep.json")
    budget = {"steps": args.steps, "eot": args.eot, "runs": args.runs, "ddim_steps": args.ddim_steps,
              "t_s": T_S, "resample_steps": U}

    def level(p: dict[str, Any]) -> tuple[str, float, float]:
        return (p["method"], p["t"], p["tau"] or 0.0)

    def load() -> dict[tuple[str, float, float | None], dict[str, Any]]:
        """The points already in the JSON, if they were measured at this n and budget."""
        previous = json.loads(target.read_text()) if target.exists() else {}
        if previous.get("n") != args.n or previous.get("budget") != budget:
            return {}
        return {(p["method"], p["t"], p["tau"]): p for p in previous["points"]}

    def record(method: str, r: dict[str, Any]) -> None:
        """One point of the library's sweep, merged into this command's JSON layout."""
        t = r["settings"]["defense.t_star" if method == "uniform" else "defense.t_l"]
        tau = r["settings"].get("defense.tau")
        merged = load()  # re-read: another process may have added points meanwhile
        merged[(method, t, tau)] = {"method": method, "t": t, "tau": tau, "n": r["n"],
                                    "clean": r["clean_accuracy"], "robust": r["robust_accuracy"],
                                    "robust_ci95": r["robust_accuracy_ci95"],
                                    "seconds_per_image": r["seconds_per_image"]}
        points = sorted(merged.values(), key=level)
        target.write_text(json.dumps({"n": args.n, "split": "test", "budget": budget, "points": points},
                                     indent=2) + "\n")

    from hetpure.tuning import sweep as sweep_grid

    common: dict[str, Any] = {"n": args.n, "out": out, "write": False, "log": lambda _: None,
                              "run": lambda cfg, folder: run_row(cfg, folder)}
    for t in args.tl_grid:  # the library's sweep, one level at a time: uniform t*, then t_l × τ
        sweep_grid(row_config("uniform-tl", args, n=args.n), {"defense.t_star": [t]},
                   folder_name=lambda p: f"uniform_t{p['defense.t_star']}",
                   on_point=lambda r: record("uniform", r), **common)
        if t > T_S:
            sweep_grid(row_config("heterogeneous", args, n=args.n),
                       {"defense.t_l": [t], "defense.tau": list(args.tau_grid)},
                       folder_name=lambda p: f"hetero_tl{p['defense.t_l']}_tau{p['defense.tau']}",
                       on_point=lambda r: record("heterogeneous", r), **common)
    points = sorted(load().values(), key=level)
    print_table(["method", "t_l / t*", "τ", "n", "clean %", "robust %", "s/image"],
                [[p["method"], p["t"], p["tau"] or "–", p["n"], pct(p["clean"]), pct(p["robust"]),
                  f"{p['seconds_per_image']:.1f}"] for p in points])
    plot_sweep(target, target.with_suffix(".png"))


ABLATIONS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    # name: (row it starts from, defence changes, attack changes)
    "attack pgd (reference)": ("heterogeneous", {}, {}),
    "attack mask-pgd restrict": ("heterogeneous", {}, {"name": "mask-pgd", "mask_mode": "restrict"}),
    "attack mask-pgd weight λ=1": ("heterogeneous", {}, {"name": "mask-pgd", "mask_mode": "weight",
                                                          "attention_weight": 1.0}),
    "attack lowfreq-pgd grid 8": ("heterogeneous", {}, {"name": "lowfreq-pgd", "grid": 8}),
    "uniform t_l, attack pgd": ("uniform-tl", {}, {}),
    "uniform t_l, attack lowfreq-pgd grid 8": ("uniform-tl", {}, {"name": "lowfreq-pgd", "grid": 8}),
    "mask gradcam": ("heterogeneous", {"mask_source": "gradcam"}, {}),
    "mask random": ("heterogeneous", {"mask_source": "random"}, {}),
    "mask all (uniform t_l)": ("heterogeneous", {"mask_source": "all"}, {}),
    "mask none (t_s path)": ("heterogeneous", {"mask_source": "none"}, {}),
    "U=0": ("heterogeneous", {"resample_steps": 0}, {}),
    "U=1": ("heterogeneous", {"resample_steps": 1}, {}),
    "U=10": ("heterogeneous", {"resample_steps": 10}, {}),
    "RePaint r=3": ("heterogeneous", {"resample_steps": 0, "repaint_jumps": 3}, {}),
}


def ablations(args: argparse.Namespace) -> None:
    """Adaptive attacks, mask sources and resampling on a small test subset; same budget per row."""
    out = Path(args.out) / "ablations"
    rows, data = [], []
    for name, (start, defence, attack) in ABLATIONS.items():
        if args.only and name not in args.only:
            continue
        cfg = row_config(start, args)
        if start == "heterogeneous":
            cfg["defense"].update(tau=args.tuned_tau, **defence)
        cfg["attack"].update(attack)
        folder = name.replace(" ", "_").replace("(", "").replace(")", "").replace("=", "").replace(",", "")
        s = run_row(cfg, out / folder.replace("λ", "lambda"))
        ci = s["robust_accuracy_ci95"]
        rows.append([name, s["n"], pct(s["clean_accuracy"]), f"{pct(s['robust_accuracy'])} ({pct(ci[0])}–{pct(ci[1])})",
                     s["eps_calls"]["defence_per_purification"], s["eps_calls"]["attack_per_forward_pass"],
                     f"{s['seconds_per_image']:.1f}"])
        data.append({"ablation": name, "defense": s["config"]["defense"], "attack": s["config"]["attack"],
                     "n": s["n"], "clean_accuracy": s["clean_accuracy"], "robust_accuracy": s["robust_accuracy"],
                     "robust_accuracy_ci95": ci, "eps_calls": s["eps_calls"],
                     "seconds_per_image": s["seconds_per_image"]})
    print()
    print_table(["ablation", "n", "clean %", "robust % (95% CI)", "ε-calls/purification", "ε-calls/attack pass",
                 "s/image"], rows)
    target = results_file(args.out, "cifar10_ablations.json")
    merge_into(target, data, lambda r: r["ablation"], ABLATIONS)
    print(f"\nwrote {shown(target)}")


def cost_case(row: str, args: argparse.Namespace) -> dict[str, Any]:
    """One row's costs, measured in this process (``cost`` runs each row in its own process for peak RSS)."""
    import torch
    from _common import best_time, peak_cuda_mb, peak_rss_mb, reset_peak_memory, synchronize

    from hetpure.attacks import PGD, cross_entropy, defended_model
    from hetpure.devices import freeze
    from hetpure.evaluate import build_components, resolve_config

    cfg = row_config(row, args, n=args.batch_size)
    cfg["run"]["out"] = "unused"  # nothing is written
    cfg = resolve_config(cfg)
    dev = torch.device(args.device)
    dataset, clf, purifier = build_components(cfg, dev)
    freeze(clf, purifier)  # as in an evaluation
    x = torch.stack([torch.as_tensor(dataset[i][0]) for i in range(len(dataset))]).float().to(dev)
    y = torch.tensor([int(dataset[i][1]) for i in range(len(dataset))]).to(dev)
    reset_peak_memory(dev)
    b, a = x.shape[0], cfg["attack"]
    g = torch.Generator().manual_seed(0)
    model = defended_model(purifier, clf, a["gradient"], a["surrogate_ddim_steps"])
    if hasattr(model, "generator"):
        model.generator = g
    attack = PGD(steps=1, eot=a["eot"])
    iteration = best_time(lambda: (attack.gradient(model, x, y, cross_entropy), synchronize(dev)), repeats=1)
    out: dict[str, Any] = {"row": row, "settings": describe(cfg["defense"]), "batch": b,
                           "attack_iteration_s_per_image": iteration / b,
                           "eps_calls_per_purification": 0, "eps_calls_per_attack_iteration": 0,
                           "purify_s_per_image": 0.0, "purify_floor_s_per_image": 0.0}
    if purifier is not None:
        eps = purifier.eps_model
        calls = purifier.eps_calls()
        with torch.no_grad():
            purify = best_time(lambda: (purifier.purify(x, generator=g), synchronize(dev)), repeats=2)
            xt, t = torch.randn_like(x), torch.full((b,), 150.0, device=dev)
            call = best_time(lambda: (eps(xt * 2 - 1, t), synchronize(dev)), repeats=3)
        attack_calls = int(model.eps_calls()) * a["eot"]
        out.update(eps_calls_per_purification=calls, eps_calls_per_attack_iteration=attack_calls,
                   purify_s_per_image=purify / b, purify_floor_s_per_image=calls * call / b)
    out["peak_rss_mb"] = peak_rss_mb()
    out["peak_cuda_mb"] = peak_cuda_mb(dev)  # None on a CPU
    return out


def cost(args: argparse.Namespace) -> None:
    """Cost table: purification and attack-iteration seconds, ε-calls, floor, peak RSS per row."""
    import os
    import subprocess

    if args.cost_row:
        print(json.dumps(cost_case(args.cost_row, args)))
        return
    rows, data = [], []
    for row in args.rows:
        cmd = [sys.executable, __file__, *sys.argv[1:], "--cost-row", row]  # the same options, one row
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        if proc.returncode != 0:
            sys.exit(proc.stderr)
        m = json.loads(proc.stdout.strip().splitlines()[-1])
        data.append(m)
        floor = m["purify_floor_s_per_image"]
        rows.append([row, m["eps_calls_per_purification"], f"{m['purify_s_per_image']:.3f}", f"{floor:.3f}",
                     f"{m['purify_s_per_image'] / floor:.2f}" if floor else "–",
                     f"{m['purify_s_per_image'] * args.runs:.2f}", m["eps_calls_per_attack_iteration"],
                     f"{m['attack_iteration_s_per_image']:.3f}", f"{m['peak_rss_mb']:.0f}",
                     "–" if m.get("peak_cuda_mb") is None else f"{m['peak_cuda_mb']:.0f}"])
    import torch

    print(f"batch {args.batch_size}, S = {args.ddim_steps}, R = {args.runs}, attack EOT {args.eot}, "
          f"{torch.get_num_threads()} thread(s), {args.device}")
    print_table(["defence", "ε-calls/purification", "purify s/image", "floor s/image", "× floor",
                 f"R = {args.runs} votes s/image", "attack ε-calls/iteration", "attack s/iteration/image",
                 "peak RSS MB", "peak CUDA MB"], rows)
    target = results_file(args.out, "cifar10_cost.json")
    target.write_text(json.dumps({"batch": args.batch_size, "runs": args.runs, "eot": args.eot,
                                  "threads": torch.get_num_threads(), "rows": data}, indent=2) + "\n")
    print(f"\nwrote {shown(target)}")


def plot_sweep(data_file: Path, png: Path) -> None:
    """Clean and robust accuracy against t_l (heterogeneous, one line per τ) and t* (uniform)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(data_file.read_text())
    b = data.get("budget", {})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key in zip(axes, ("clean", "robust")):
        uni = sorted((p for p in data["points"] if p["method"] == "uniform"), key=lambda p: p["t"])
        ax.plot([p["t"] for p in uni], [100 * p[key] for p in uni], "k--o", label="uniform t*")
        for tau in sorted({p["tau"] for p in data["points"] if p["tau"] is not None}):
            pts = sorted((p for p in data["points"] if p["tau"] == tau), key=lambda p: p["t"])
            ax.plot([p["t"] for p in pts], [100 * p[key] for p in pts], "-o", label=f"heterogeneous τ={tau}")
        ax.set_xlabel(f"t_l (heterogeneous, t_s = {b.get('t_s', T_S)}) / t* (uniform)")
        title = f"{key} accuracy, n = {data['n']}"
        if key == "robust" and b:
            title += f" (PGD-EOT {b['steps']}×{b['eot']}, R = {b['runs']})"
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy %")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    print(f"wrote {png.relative_to(REPO)}")


def figures(args: argparse.Namespace) -> None:
    """Example grid: clean, adversarial, mask overlay, purified uniform (t_l), purified heterogeneous."""
    import torch

    import hetpure
    from hetpure.attacks import PGD, defended_model
    from hetpure.viz import level_map_image, save_grid

    shared = shared_dir()
    eps = hetpure.DiffusersEps.from_pretrained(shared / "models/ddpm-cifar10-tiny")
    clf = hetpure.load_classifier("cifar_resnet20", shared / "models/resnet20-cifar10/model.safetensors")
    data = hetpure.load_dataset("imagefolder", root=shared / "data/cifar10", split="test", n=8, seed=0)
    x = torch.stack([torch.as_tensor(data[i][0]) for i in range(len(data))]).float()
    y = torch.tensor([int(data[i][1]) for i in range(len(data))])
    het = hetpure.HeterogeneousPurifier(eps, clf, hetpure.PurifyConfig(t_s=T_S, t_l=args.tuned_tl, tau=args.tuned_tau,
                                                                       ddim_steps=args.ddim_steps))
    uni = hetpure.UniformPurifier(eps, clf, hetpure.PurifyConfig(t_star=args.tuned_tl, ddim_steps=args.ddim_steps))
    model = defended_model(het, clf, "surrogate", 10)
    model.generator = torch.Generator().manual_seed(0)
    x_adv = PGD(steps=args.steps, eot=args.eot)(model, x, y)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        mask = het.mask(x_adv)
        overlay = x_adv * 0.5 + 0.5 * torch.cat([mask, torch.zeros_like(mask), torch.zeros_like(mask)], 1)
        rows = {"clean": x, "adversarial": x_adv, "mask (red)": overlay,
                f"uniform t*={args.tuned_tl}": uni.purify(x_adv, generator=g),
                f"heterogeneous t_l={args.tuned_tl} tau={args.tuned_tau}": het.purify(x_adv, generator=g)}
    png = REPO / "docs/results/cifar10_examples.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    save_grid(rows, png, scale=3)
    print(f"wrote {png.relative_to(REPO)}")

    # per-pixel start levels (blue = t_s … red = t_l): binary mask vs graded levels
    graded = hetpure.HeterogeneousPurifier(eps, clf, het.config.replace(levels="graded", tau_lo=args.graded_lo,
                                                                        tau_hi=args.graded_hi))
    with torch.no_grad():
        level_rows = {"clean": x, "attention E": het.attention(x).expand(-1, 3, -1, -1),
                      f"binary tau={args.tuned_tau}": level_map_image(het.level_weights(x)),
                      f"graded {args.graded_lo}-{args.graded_hi}": level_map_image(graded.level_weights(x)),
                      "purified binary": het.purify(x, generator=torch.Generator().manual_seed(2)),
                      "purified graded": graded.purify(x, generator=torch.Generator().manual_seed(2))}
    png = REPO / "docs/results/cifar10_level_maps.png"
    save_grid(level_rows, png, scale=3)
    print(f"wrote {png.relative_to(REPO)}")
    sweep_data = REPO / "docs/results/cifar10_sweep.json"
    if sweep_data.exists():
        plot_sweep(sweep_data, REPO / "docs/results/cifar10_sweep.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["table", "summaries", "tune", "sweep", "figures", "ablations", "cost"],
                        nargs="?",
                        default="table")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--n-exact", type=int, default=None, help="n for the exact and adjoint rows (default --n)")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS + ATTACK_ROWS, metavar="ROW",
                        help=f"rows (default: all of {', '.join(ROWS)}); ROW+diffattack, ROW+diffhammer: that row "
                             "attacked by a published attack")
    parser.add_argument("--out", default=str(REPO / "docs/results/records/cifar10"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--eot", type=int, default=4)
    parser.add_argument("--ddim-steps", type=int, default=100)
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--worst-case-k", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--paper-budget", action="store_true", help="200 × EOT 20, S = 500, R = 20")
    add_model_flags(parser)
    parser.add_argument("--max-batch", type=int, default=None,
                        help="defense.max_batch: images per ε-model call (default 32; raise it on a GPU)")
    parser.add_argument("--memory-budget-gb", type=float, default=10.0,
                        help="exact rows: keep the whole autograd graph when it fits (attack.memory_budget_gb)")
    parser.add_argument("--tuned-tl", type=float, default=0.2)
    parser.add_argument("--tuned-tau", type=float, default=0.7)
    parser.add_argument("--graded-lo", type=float, default=0.5)
    parser.add_argument("--graded-hi", type=float, default=0.9)
    parser.add_argument("--cost-row", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--screen-n", type=int, default=32,
                        help="tune: screen every grid point on this many train images first")
    parser.add_argument("--keep", type=int, default=2,
                        help="tune: points kept after the --screen-n stage; each later rung doubles n, keeps half")
    parser.add_argument("--all", action="store_true",
                        help="summaries: also every other run folder under --out (tune, sweep, ablations, …)")
    parser.add_argument("--only", nargs="*", default=None, help="ablations: run only these names")
    parser.add_argument("--tl-grid", type=float, nargs="+", default=[0.1, 0.15, 0.2, 0.25, 0.3, 0.35])
    parser.add_argument("--tau-grid", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    args = parser.parse_args()
    {"table": table, "summaries": summaries, "tune": tune, "sweep": sweep, "figures": figures, "ablations": ablations,
     "cost": cost}[args.command](args)


if __name__ == "__main__":
    main()

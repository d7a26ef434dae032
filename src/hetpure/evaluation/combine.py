"""``hetpure combine`` and ``hetpure compare``: rows built from finished run folders, without recomputing.

* :func:`combine` — the per-image worst case over several runs of the same data and defence (each run one
  attack, or an ensemble): an image is robust when the clean evaluation is correct and every adversarial
  evaluation of every run is correct. The **clean evaluation is the first listed full-subset run's**; the images
  are those all of them finished. The combined folder holds records in the ensemble layout (one outcome per
  attack, ``source`` naming its run), ``config.json`` (the sources' hashes) and a summary, so it can itself be
  compared, exported, combined again or conditioned on.
* :func:`compare` — the paired table of two rows on the images both hold: wins and losses, exact McNemar p,
  the paired vote-share difference with its standard error, for clean and robust accuracy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, RecordsError
from .counting import TIES, image_status, outcomes, paired_comparison
from .identity import identity_hash, portable_path
from .records import RunLock, write_json_atomic
from .report import summarise, summary_markdown
from .runs import EVALUATED, RunFolder, check_same, load_run, unconditioned


def _sections(run: RunFolder) -> list[dict[str, Any]]:
    a = run.config.get("attack") or {}
    return list(a) if isinstance(a, list) else [a]


def conditioned_on(run: RunFolder) -> list[str]:
    """The settings hashes of the runs a ``data.survivors_of`` run conditions on ([] for a run on the full subset)."""
    survivors_of = (run.identity.get("data") or {}).get("survivors_of")
    return list(survivors_of["settings_hashes"]) if survivors_of else []


def combined_records(runs: list[RunFolder], digest: str, ties: str) -> tuple[list[dict[str, Any]], list[int]]:
    """One record per image: the clean evaluation of the first run on the full subset, every run's outcomes; and
    the images left out.

    The images are those every run on the full subset finished. A ``data.survivors_of`` run holds only the images
    still robust in the runs it conditions on (which must be among ``runs``): an image it lacks because a source
    broke it (or got it wrong clean) has ``attacked: false`` outcomes for its attacks. An image that is robust in
    the combination (this clean evaluation, these ties) although a survivors run lacks it was never faced with
    that run's attacks (unfinished there, or skipped under another draw): it is left out (returned), never
    counted robust. Leaving it out can only lower the row, which the summary says.
    """
    by_hash = {r.settings_hash: r for r in runs}
    for run in runs:
        missing = [h for h in conditioned_on(run) if h not in by_hash]
        if missing:
            raise ConfigError(f"{run.path} attacks only the survivors of runs with settings hashes {missing}; combine "
                              "it together with the runs it conditions on (its config.json's data.survivors_of)")
    full = [run for run in runs if not conditioned_on(run)]
    if not full:
        raise ConfigError("every run given to combine attacks only survivors; add the runs they condition on")
    maps = [r.by_index() for r in runs]
    common = sorted(set.intersection(*(set(r.by_index()) for r in full)))
    clean = full[0].by_index()  # the clean evaluation: the first run on the full subset
    records, unfinished = [], []
    for i in common:
        first = clean[i]
        outs: list[dict[str, Any]] = []
        for run, m in zip(runs, maps):
            names = [a.get("name") for a in _sections(run)]
            if i not in m:  # a survivors run: a source already broke the image
                outs += [{"name": name, "attacked": False, "source": run.name} for name in names]
                continue
            for j, o in enumerate(outcomes(m[i])):
                outs.append({**o, "name": o.get("name") or (names[j] if j < len(names) else None),
                             "source": run.name})
        record = {k: first[k] for k in ("index", "label", "clean_prediction", "clean_votes") if k in first}
        if len({int(m[i]["label"]) for m in maps if i in m}) > 1:  # the same data identity: never, but not silently
            raise RecordsError(f"image {i} has different labels in {', '.join(str(r.path) for r in runs)}")
        record.update(attacks=outs, settings_hash=digest,
                      worst_case_k=max((o.get("worst_case_k", 1) for o in outs if o.get("attacked", True)), default=1))
        status = image_status(record, ties)
        if status["robust"] and any(i not in m for m in maps):  # robust only because an attack never ran on it
            unfinished.append(i)
            continue
        ran = [o for o in outs if o.get("attacked", True)]
        shown = outs[status["broken_by"]] if status["broken_by"] is not None else ran[-1]
        record.update(adversarial_prediction=shown.get("prediction"), adversarial_votes=shown.get("votes"),
                      worst_case_correct=shown.get("worst_case_correct"),
                      broken_by=None if status["broken_by"] is None else f"{shown['source']}:{shown['name']}")
        seconds = [m[i].get("seconds") for m in maps if i in m and m[i].get("seconds") is not None]
        if seconds:
            record["seconds"] = sum(seconds)  # the image's cost in all runs together
        records.append(record)
    return records, unfinished


def combine(folders: list[str | Path], out: str | Path, ties: str = "wrong") -> dict[str, Any]:
    """Combine finished run folders into the per-image worst-case row at ``out`` (see the module docstring).

    Refuses runs that do not evaluate the same data, classifier, diffusion model and defence (naming the keys
    that differ), and an ``out`` that holds another combination. Returns the summary (also written to ``out``).
    """
    if ties not in TIES:
        raise ConfigError(f"ties must be one of {TIES}, got {ties!r}; fix: --ties wrong")
    if len(folders) < 2:
        raise ConfigError("combine needs at least two run folders (the worst case over one run is that run)")
    runs = [load_run(f) for f in folders]
    check_same([RunFolder(r.path, r.settings_hash, unconditioned(r.identity), r.config) for r in runs], EVALUATED,
               "combine")
    out = Path(out)
    if any(out.resolve() == r.path.resolve() for r in runs):
        raise ConfigError(f"--out {out} is one of the runs being combined; give a new folder")
    base = next((r for r in runs if not conditioned_on(r)), runs[0])  # refused below when every run is conditioned
    identity = {**{s: unconditioned(base.identity).get(s) for s in EVALUATED},
                "combined_from": [r.settings_hash for r in runs], "ties": ties}
    norms = {(a.get("norm", "linf"), round(a.get("eps") or (8 / 255 if a.get("norm", "linf") == "linf" else 0.5), 9))
             for r in runs for a in _sections(r) if a.get("name") not in ("saved", "none")}
    if len(norms) > 1:
        raise ConfigError(f"the runs attack under different threat models {sorted(norms, key=str)} (norm, eps); a "
                          "worst case is taken within one threat model: combine runs of one norm and eps")
    digest = identity_hash(identity)
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out):
        _claim(out, digest)
        records, unfinished = combined_records(runs, digest, ties)
        if not records:
            raise ConfigError(f"the runs share no finished image; nothing to combine ({', '.join(map(str, folders))})")
        cfg = base.resolved_config()
        cfg["data"] = {k: v for k, v in cfg["data"].items() if k not in ("survivors_of", "survivors_clean")}
        cfg["attack"] = [a for r in runs for a in _sections(r)]
        cfg["run"] = {**cfg.get("run", {}), "ties": ties, "out": str(out),
                      "worst_case_k": max(int(r.get("worst_case_k", 1)) for r in records)}
        tmp = out / ".records.jsonl.tmp"
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
        os.replace(tmp, out / "records.jsonl")
        sources = [{"folder": portable_path(str(r.path.resolve()), out), "settings_hash": r.settings_hash,
                    "n": len(r.records)} for r in runs]
        write_json_atomic(out / "config.json", {"settings_hash": digest, "identity": identity,
                                                "config": _portable(cfg, out), "combined_from": sources})
        summary = summarise(cfg, digest, records, {"seconds": 0.0, "images": 0}, None, torch.device("cpu"), out)
        labels = [f"{r.name}:{a.get('name')}" for r in runs for a in _sections(r)]
        for entry, label in zip(summary["per_attack"], labels):
            entry["attack"] = label  # which run's attack broke the image first
        summary["combined_from"] = sources
        summary["clean_evaluation_from"] = next(r.name for r in runs if not conditioned_on(r))
        if unfinished:  # survivors a conditioned run has not attacked yet: left out, never counted robust
            summary["left_out_unfinished"] = unfinished
        write_json_atomic(out / "summary.json", summary)
        (out / "summary.md").write_text(_combined_header(summary) + summary_markdown(summary))
    return summary


def _portable(cfg: dict[str, Any], out: Path) -> dict[str, Any]:
    from .identity import portable_config

    return portable_config(cfg, out)


def _claim(out: Path, digest: str) -> None:
    file = out / "config.json"
    if not file.exists():
        return
    try:
        old = json.loads(file.read_text()).get("settings_hash")
    except ValueError:
        old = None
    if old != digest:
        raise RecordsError(f"{out} holds another combination or run (settings hash {old}); give combine another "
                           "--out, or move the folder aside")


def _combined_header(s: dict[str, Any]) -> str:
    names = ", ".join(c["folder"] for c in s["combined_from"])
    left = (f" {len(s['left_out_unfinished'])} images are left out: runs on survivors have not attacked them (not "
            "finished yet, or they took survivors under each run's own clean vote: data.survivors_clean: first "
            "attacks every image this row counts)." if s.get("left_out_unfinished") else "")
    return (f"**Combined row: the per-image worst case over {len(s['combined_from'])} runs** ({names}). "
            f"An image counts robust only if every adversarial evaluation of every run is correct; the clean "
            f"evaluation is that of {s['clean_evaluation_from']}.{left}\n\n")


def compare(folder_a: str | Path, folder_b: str | Path, ties: str = "wrong") -> dict[str, Any]:
    """The paired comparison of two rows (evaluated, combined or rescored folders) of the same data.

    Refuses folders of different data (naming the key); the defences may differ (that is the comparison).
    Returns ``{"row", "reference", "n", "clean": {...}, "robust": {...}}`` as
    :func:`~hetpure.evaluation.stats.paired_comparison` computes it under the counting rules.
    """
    a, b = load_run(folder_a), load_run(folder_b)
    check_same([a, b], ("data",), "compare")
    result = paired_comparison(a.records, b.records, ties)
    if not result["n"]:
        raise ConfigError(f"{a.path} and {b.path} share no finished image; nothing to compare")
    return {"row": a.name, "reference": b.name, **result}


def compare_markdown(c: dict[str, Any]) -> str:
    """The paired table of :func:`compare` in Markdown."""
    lines = [f"Paired comparison of {c['row']} against {c['reference']} on {c['n']} images (wins = images only "
             f"{c['row']} gets right; exact McNemar p; ties {c.get('ties', 'wrong')}):", "",
             "| accuracy | difference (points) | wins / losses | p | vote-share difference ± SE |",
             "|---|---|---|---|---|"]
    for key in ("clean", "robust"):
        r = c[key]
        share = (f"{100 * r['vote_share_difference']:+.1f} ± {100 * r['vote_share_se']:.1f}"
                 if "vote_share_difference" in r else "–")
        lines.append(f"| {key} | {100 * r['difference']:+.1f} | {r['wins']} / {r['losses']} | {r['p_value']:.2g} | "
                     f"{share} |")
    return "\n".join(lines)

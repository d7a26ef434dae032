"""Finished run folders as inputs: loading them, checking that they measure the same thing, and the images
still robust in them (``data.survivors_of``).

A run folder is ``config.json`` (its identity and portable config) and its records; :func:`load_run` reads
both without writing anything. Two folders "measure the same thing" when the identities of what they
evaluate agree — data, classifier, diffusion model and defence; :func:`check_same` names the first keys
that differ otherwise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, RecordsError
from .counting import image_status
from .identity import expand_path, flatten
from .records import read_records

#: What a row evaluates: two folders can be combined, compared or conditioned on when these agree.
EVALUATED = ("data", "classifier", "diffusion", "defense")


@dataclass
class RunFolder:
    """A finished (or partly finished) run folder, read only."""

    path: Path
    settings_hash: str
    identity: dict[str, Any]
    config: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    def by_index(self) -> dict[int, dict[str, Any]]:
        return {int(r["index"]): r for r in self.records}

    def resolved_config(self) -> dict[str, Any]:
        """The run's portable config with its paths expanded (``$HETPURE_SHARED``, folder-relative)."""
        cfg = json.loads(json.dumps(self.config))
        for section, key in (("data", "root"), ("classifier", "path"), ("diffusion", "path"), ("diffusion", "config")):
            if isinstance(cfg.get(section, {}).get(key), str):
                cfg[section][key] = expand_path(cfg[section][key], self.path)
        if isinstance(cfg.get("data", {}).get("survivors_of"), list):
            cfg["data"]["survivors_of"] = [expand_path(f, self.path) for f in cfg["data"]["survivors_of"]]
        attacks = cfg.get("attack")
        for a in attacks if isinstance(attacks, list) else [attacks] if isinstance(attacks, dict) else []:
            if isinstance(a.get("source"), str):
                a["source"] = expand_path(a["source"], self.path)
        cfg.setdefault("run", {})["out"] = str(self.path)
        return cfg


def load_run(path: str | Path, what: str = "run folder") -> RunFolder:
    """Read a run folder (``config.json`` and the records of its identity); a clear error when it is not one."""
    folder = Path(path)
    config_file = folder / "config.json"
    if not folder.is_dir():
        raise ConfigError(f"{what} {path} is not a folder; give a run folder made by hetpure evaluate "
                          "(it holds config.json and records.jsonl)")
    try:
        data = json.loads(config_file.read_text())
    except FileNotFoundError as exc:
        raise RecordsError(f"{path} has no config.json, so it is not a finished hetpure run folder (or a run that "
                           "failed before its first batch); run hetpure evaluate into it first") from exc
    except ValueError as exc:
        raise RecordsError(f"{config_file} is not valid JSON ({exc}); the folder cannot be used") from exc
    digest = data.get("settings_hash")
    if not digest or "identity" not in data:
        raise RecordsError(f"{config_file} lacks settings_hash or identity (a run made before hetpure recorded "
                           "identities): migrate it with scripts/migrate_runs.py")
    done: dict[int, dict[str, Any]] = {}
    for file in sorted(folder.glob("records*.jsonl")):
        for r in read_records(file):
            if r.get("settings_hash") == digest:
                done.setdefault(int(r["index"]), r)
    return RunFolder(folder, digest, data["identity"], data.get("config") or {}, [done[i] for i in sorted(done)])


def check_same(runs: list[RunFolder], sections: tuple[str, ...] = EVALUATED, action: str = "combine") -> None:
    """Refuse runs whose identities differ in ``sections``, naming the first keys that differ."""
    first = runs[0]
    for other in runs[1:]:
        a = flatten({s: first.identity.get(s) for s in sections})
        b = flatten({s: other.identity.get(s) for s in sections})
        diff = [f"{k}: {a.get(k, 'absent')!r} vs {b.get(k, 'absent')!r}" for k in sorted(set(a) | set(b))
                if a.get(k, "absent") != b.get(k, "absent")]
        if diff:
            shown = "; ".join(diff[:6]) + (f"; … {len(diff) - 6} more" if len(diff) > 6 else "")
            raise ConfigError(f"cannot {action} {first.path} and {other.path}: they do not evaluate the same "
                              f"{' / '.join(sections)} — {shown}")


def robust_indices(run: RunFolder, ties: str) -> set[int]:
    """The dataset indices a run counts robust (clean-correct, every attack correct, under ``ties``)."""
    return {int(r["index"]) for r in run.records if image_status(r, ties)["robust"]}


def unconditioned(identity: dict[str, Any]) -> dict[str, Any]:
    """An identity without its ``data.survivors_of`` (a survivors run may condition on another one)."""
    data = {k: v for k, v in identity.get("data", {}).items() if k != "survivors_of"}
    return {**identity, "data": data}


def survivors(folders: list[str], identity: dict[str, Any], ties: str,
              clean: str = "each") -> tuple[set[int], list[dict[str, str]]]:
    """The images robust in every folder of ``data.survivors_of`` (each checked against this run's identity),
    and what the run conditions on (each folder's name and settings hash, for the identity and summary).

    ``clean``: ``each`` — robust under each folder's own clean evaluation; ``first`` — the clean evaluation of
    the first listed run on the full subset, and every run's adversarial evaluations correct: exactly the
    images ``combine`` of these folders counts robust, so a chain of survivors runs never skips an image the
    combined row counts.
    """
    runs = [load_run(f, "data.survivors_of") for f in folders]
    here = RunFolder(Path("."), "", unconditioned(identity), {})
    for run in runs:
        try:
            check_same([here, RunFolder(run.path, "", unconditioned(run.identity), {})], EVALUATED, "condition on")
        except ConfigError as exc:
            raise ConfigError(f"data.survivors_of: {run.path} does not evaluate what this run does "
                              f"({str(exc).split(' — ', 1)[-1]}); list only runs of the same data and defence") from exc
    keep = survivor_indices(runs, ties, clean)
    return keep, [{"folder": r.name, "settings_hash": r.settings_hash, "n": str(len(r.records))} for r in runs]


def survivor_indices(runs: list[RunFolder], ties: str, clean: str = "each") -> set[int]:
    """The images robust in every run (``clean``: ``each`` run's own clean evaluation, or the ``first`` listed
    run on the full subset's, which is ``combine``'s rule), without the identity checks of :func:`survivors`."""
    if clean == "first":
        full = [r for r in runs if not (r.identity.get("data") or {}).get("survivors_of")]
        if not full:
            raise ConfigError("data.survivors_clean: first takes the clean evaluation of the first listed run on the "
                              "full subset, and every listed run attacks only survivors; list that run too")
        judged = {int(r["index"]) for r in full[0].records if image_status(r, ties)["clean"]}
        sets = [judged] + [{int(r["index"]) for r in run.records if image_status(r, ties)["adversarial"]}
                           for run in runs]
    else:
        sets = [robust_indices(run, ties) for run in runs]
    return set.intersection(*sets) if sets else set()


class SurvivorSubset:
    """The images of a dataset (subset) whose dataset indices are in ``keep``, in the dataset's order.

    The order is that of the dataset's seeded permutation, so when the source runs grow, new survivors come
    after the old ones and every finished batch keeps its images (the runner's batches are prefix-stable).
    """

    def __init__(self, dataset: Any, keep: set[int]) -> None:
        positions = list(range(len(dataset)))
        indices = [int(i) for i in getattr(dataset, "indices", positions)]
        if len(indices) != len(positions):
            indices = positions
        self.base = dataset
        self.positions = [p for p, i in zip(positions, indices) if i in keep]
        self.indices = [indices[p] for p in self.positions]
        self.classes = getattr(dataset, "classes", None)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> Any:
        return self.base[self.positions[i]]

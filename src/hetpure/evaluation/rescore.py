"""``hetpure rescore RUN_DIR --out DIR``: the two-phase protocol — score a run's saved adversarial examples again.

Phase one (``hetpure evaluate``) crafts the examples and saves them (``run.save_adversarial``); phase two scores
exactly those examples with fresh defence noise, any number of votes R (``--set defense.runs=32``), any K
(``--set run.worst_case_k=…``), a new seed, or another defence (``--set defense.method=uniform …``: a transfer
evaluation, marked as such in the summary). A rescoring is an ordinary run whose attacks are ``saved``
sections (one per attack of the source): it has an identity that records the source run's identity, resumes
like every run, and its summary and records follow the same counting rules.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .config import parse_set, resolve_config
from .runs import load_run

#: a rescoring's default run.seed is the source's plus this: fresh noise for every vote (``--set run.seed=…``)
FRESH_SEED_OFFSET = 1


def rescore_config(run_dir: str | Path, out: str | Path,
                   overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The evaluation config of a rescoring of ``run_dir`` into ``out`` (resolved and validated)."""
    source = load_run(run_dir, "rescore RUN_DIR")
    if not source.records:
        raise ConfigError(f"{run_dir} has no finished image to rescore")
    if any("adversarial_shard" not in r for r in source.records):
        raise ConfigError(f"{run_dir} saved no adversarial examples (made before hetpure saved them, or with "
                          "run.save_adversarial false); rerun it with --set run.save_adversarial=true into a new "
                          "folder, then rescore that")
    overrides = copy.deepcopy(overrides or {})
    if "attack" in overrides:
        raise ConfigError("rescore replays the saved examples, so attack settings cannot change (got --set attack."
                          f"{next(iter(overrides['attack']))}); run hetpure evaluate for a new attack")
    if "data" in overrides:
        raise ConfigError("rescore scores the source run's images; data settings cannot change (got --set data."
                          f"{next(iter(overrides['data']))})")
    cfg = source.resolved_config()
    cfg["data"].pop("survivors_of", None)  # the images are the source's; its conditioning is in the identity
    cfg["data"].pop("survivors_clean", None)
    cfg["data"]["n"] = covering_n(cfg, {int(r["index"]) for r in source.records})
    sections = cfg["attack"] if isinstance(cfg["attack"], list) else [cfg["attack"]]
    new = {s: {**cfg.get(s, {}), **overrides.get(s, {})} for s in ("defense", "diffusion")}
    defense = resolve_config({**cfg, **new, "attack": {"name": "none"}})["defense"]
    source_defense = resolve_config({**cfg, "attack": {"name": "none"}})["defense"]
    # another defence is a transfer evaluation; more votes or another ε-call batch is the same defence
    through = None if _pipeline(defense) == _pipeline(source_defense) else source_defense
    saved = [{"name": "saved", "source": str(source.path), "slot": j, "norm": a.get("norm", "linf"),
              "eps": a.get("eps"), **({"through": _through_keys(through)} if through else {})}
             for j, a in enumerate(sections)]
    cfg["attack"] = saved if len(saved) > 1 else saved[0]
    # fresh defence noise: another seed than the source's (the same seed would replay its very votes)
    cfg["run"] = {**cfg.get("run", {}), "out": str(out), "sanity": False,
                  "seed": int(cfg.get("run", {}).get("seed", 0)) + FRESH_SEED_OFFSET}
    return resolve_config(cfg, overrides)


def covering_n(cfg: dict[str, Any], indices: set[int]) -> int | None:
    """The smallest ``data.n`` whose subset holds every image in ``indices``: a grown run's ``config.json`` keeps the
    ``data.n`` of its first batch (``n`` is not part of a run's identity), so its records reach past that subset."""
    from .components import build_dataset

    if cfg["data"].get("n") is None:
        return None
    full = resolve_config({**cfg, "data": {**cfg["data"], "n": None}, "attack": {"name": "none"}})
    total = len(build_dataset(full))
    order = build_dataset({**full, "data": {**full["data"], "n": total}}).indices
    positions = [p for p, i in enumerate(order) if int(i) in indices]
    return max(int(cfg["data"]["n"]), positions[-1] + 1 if positions else 0)


def _pipeline(defense: dict[str, Any]) -> dict[str, Any]:
    """A defence section without what does not change the pipeline an example passes through (R, the ε-call batch)."""
    return {k: v for k, v in defense.items() if k not in ("runs", "max_batch")}


def _through_keys(defense: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in defense.items() if v is not None}


def rescore(run_dir: str | Path, out: str | Path, overrides: dict[str, dict[str, Any]] | list[str] | None = None,
            components: tuple[Any, Any, Any] | None = None) -> dict[str, Any]:
    """Score the saved adversarial examples of ``run_dir`` again into ``out`` (see the module docstring);
    ``overrides`` as ``{"defense": {"runs": 32}}`` or ``--set`` strings; ``components`` = (dataset, classifier,
    purifier) in memory, as for :func:`~hetpure.evaluation.runner.evaluate`. Returns the summary."""
    from .runner import evaluate

    if isinstance(overrides, list):
        overrides = parse_set(overrides)
    if Path(out).resolve() == Path(run_dir).resolve():
        raise ConfigError(f"--out {out} is the run being rescored; give a new folder")
    return evaluate(rescore_config(run_dir, out, overrides), components=components)

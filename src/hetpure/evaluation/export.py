"""``hetpure export RUN_DIR``: a leaderboard record of a run, in RobustBench's ``model_info`` fields plus what a
randomised defence needs and RobustBench lacks.

RobustBench's fields (``name``, ``clean_acc``, ``autoattack_acc``, ``threat_model``, ``eps``, ``dataset``,
``number_forward_passes``, …) are filled from the summary; ``autoattack_acc`` is renamed to the attack that
actually ran (``pgd_acc``, ``ensemble_acc`` …), since only AutoAttack's own runs may claim that name. Added:
the vote rule, R, K, the ties rule, the counting rule, the gradient mode, the attack's and the defence's
ε-calls, one column per attack, the seeds and the run identity.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError, RecordsError
from .records import write_json_atomic
from .runs import load_run


def _attack_key(sections: list[dict[str, Any]]) -> str:
    if len(sections) > 1:
        return "ensemble_acc"
    return f"{str(sections[0].get('name', 'attack')).replace('-', '_')}_acc"


def leaderboard_record(run_dir: str | Path) -> dict[str, Any]:
    """The record of :func:`export` as a dict (reads ``summary.json`` and ``config.json``; writes nothing)."""
    run = load_run(run_dir)
    if (run.identity.get("data") or {}).get("survivors_of"):
        raise ConfigError(f"{run_dir} attacked only the survivors of other runs (data.survivors_of), so its accuracy "
                          "is conditional, not a leaderboard number; export the row hetpure combine makes of it and "
                          "the runs it conditions on")
    try:
        s = json.loads((run.path / "summary.json").read_text())
    except (OSError, ValueError) as exc:
        raise RecordsError(f"{run_dir} has no readable summary.json; resume the run (hetpure evaluate) or "
                           "combine it again to write one") from exc
    cfg = s["config"]
    sections = cfg["attack"] if isinstance(cfg["attack"], list) else [cfg["attack"]]
    first = sections[0]
    norm = {"linf": "Linf", "l2": "L2"}.get(first.get("norm"), first.get("norm"))
    calls = s["eps_calls"]
    pct = lambda v: None if v is None else round(100 * v, 2)  # noqa: E731
    record = {
        # RobustBench model_info fields
        "link": None, "name": run.name, "authors": None, "additional_data": False,
        "number_forward_passes": s["votes_per_evaluation"] * max(1, calls["defence_per_purification"]),
        "dataset": cfg["data"]["name"], "venue": None, "architecture": cfg["classifier"]["name"],
        "eps": f"{first['eps'] * 255:.4g}/255" if norm == "Linf" and first.get("eps") else first.get("eps"),
        "clean_acc": pct(s["clean_accuracy"]), "reported": None, "footnote": None,
        _attack_key(sections): pct(s["robust_accuracy"]), "threat_model": norm,
        # what a randomised defence needs besides
        "counting": s.get("counting"),
        "n": s["n"],
        "adversarial_acc": pct(s.get("adversarial_accuracy")),
        "robust_acc_worst_case_of_k": pct(s["robust_accuracy_worst_case"]),
        "vote_rule": "majority vote of R purifications", "runs_per_vote": s["votes_per_evaluation"],
        "worst_case_k": s["worst_case_k"], "ties": (s.get("counting") or {}).get("ties", "lowest"),
        "defense": cfg["defense"], "pipelines": s.get("pipelines"),
        "attacks": [{k: a.get(k) for k in ("name", "norm", "eps", "steps", "eot", "gradient", "surrogate_ddim_steps",
                                          "step_size", "source", "slot") if a.get(k) is not None
                     and (k not in ("source", "slot") or a.get("name") == "saved")} for a in sections],
        "per_attack": [{k: e.get(k) for k in ("attack", "attacked", "broke", "robust_accuracy_after",
                                             "robust_accuracy_alone")} for e in s.get("per_attack", [])],
        "gradient": calls.get("attack_gradient"),
        "eps_calls": {"attack_per_forward_pass": calls["attack_per_forward_pass"],
                      "attack_per_image": calls["attack_per_image"],
                      "defence_per_purification": calls["defence_per_purification"]},
        "eot_diagnostic": s.get("eot_diagnostic"),
        "seeds": {"data": cfg["data"].get("seed"), "run": cfg["run"].get("seed")},
        "settings_hash": run.settings_hash, "identity": run.identity,
        "combined_from": s.get("combined_from"), "conditioned_on": s.get("conditioned_on"),
        "hetpure_version": s.get("version"), "machine": s.get("machine"),
    }
    return {k: v for k, v in record.items() if v is not None or k in ("link", "authors", "venue", "reported",
                                                                      "footnote")}


def export(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the leaderboard record of ``run_dir`` to ``out`` (default ``RUN_DIR/leaderboard.json``)."""
    target = Path(out) if out is not None else Path(run_dir) / "leaderboard.json"
    record = leaderboard_record(run_dir)
    from .records import make_folder

    make_folder(target.parent)
    write_json_atomic(target, record)
    return target

"""The summary of an evaluation run: accuracies with intervals, ε-model calls, cost, and its Markdown form."""

from __future__ import annotations

import datetime as _dt
import json
import math
import platform
import resource
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from ..gdmp import gdmp_eps_calls
from ..sampling import eps_calls
from ..sde import diffpure_eps_calls
from .config import attack_sections, is_ensemble, purify_config
from .counting import RULES, accuracies, outcomes
from .diagnostics import read_diagnostic
from .identity import portable_config


def describe_pipeline(defense: dict[str, Any], ddim_steps: int | None = None) -> str:
    """One line naming a defence's method and levels, e.g. ``heterogeneous t_s 0.1 / t_l 0.2, τ 0.9, U 3, S = 10``."""
    method = defense["method"]
    if method == "none":
        return "none (the bare classifier)"
    if method == "diffpure":
        return f"diffpure t* = {defense['t_star']}, Euler–Maruyama {ddim_steps or defense['sde_steps']} steps"
    if method == "gdmp":
        chain = f" × {ddim_steps} steps" if ddim_steps else ""
        return (f"gdmp t* = {defense['t_star']}, {defense['gdmp_guidance']} guidance s = {defense['gdmp_scale']:g}, "
                f"{defense['gdmp_iterations']} iterations{chain}")
    steps = ddim_steps or defense["ddim_steps"]
    if method == "uniform":
        sampler = "" if defense.get("sampler", "ddim") == "ddim" else f", {defense['sampler']}"
        return f"uniform t* = {defense['t_star']}{sampler}, S = {steps}"
    if defense.get("levels") == "graded":
        select = f"graded τ {defense['tau_lo']}–{defense['tau_hi']}"
    else:
        select = f"top-p {defense['top_p']}" if defense.get("top_p") is not None else f"τ {defense['tau']}"
    return (f"heterogeneous t_s {defense['t_s']} / t_l {defense['t_l']}, {select}, "
            f"U {defense['resample_steps']}, S = {steps}")


def running_postfix(records: Iterable[dict[str, Any]], ties: str = "wrong") -> dict[str, str]:
    """The progress bar's running n, clean and robust accuracy (the counting rules of the summary)."""
    rs = list(records)
    if not rs:
        return {}
    acc = accuracies(rs, ties)
    return {"n": str(len(rs)), "clean": f"{acc['clean_accuracy']:.3f}", "robust": f"{acc['robust_accuracy']:.3f}"}


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    mem = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        mem["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return mem


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def pipeline_calls(defense: dict[str, Any], num_timesteps: int, ddim_steps: int | None = None) -> int:
    """ε-model calls of one pass through a pipeline (a resolved defense section)."""
    if defense["method"] == "none":
        return 0
    config = purify_config(defense)
    if defense["method"] == "diffpure":
        return diffpure_eps_calls(config, ddim_steps)
    if defense["method"] == "gdmp":
        return gdmp_eps_calls(config, num_timesteps, ddim_steps)
    if ddim_steps is not None:
        config = config.replace(ddim_steps=ddim_steps)
    return eps_calls(config, num_timesteps, uniform=defense["method"] == "uniform")


def attack_cost(a: dict[str, Any], defense: dict[str, Any], num_timesteps: int,
                passes: int | None) -> dict[str, Any]:
    """ε-calls of one attack section: per forward pass through the attacked pipeline and per attacked image."""
    if a["name"] == "saved":  # replayed: no attack ran here
        return {"attack_per_forward_pass": 0, "attack_per_image": 0, "forward_passes": 0, "attack_gradient": "saved",
                "pipeline": f"saved adversarial examples of {Path(str(a['source'])).name} (attack {a['slot']}"
                            + (f", crafted on {describe_pipeline(a['through'])})" if a.get("through") else ")")}
    through = a["through"] or defense
    attacked_steps = a["surrogate_ddim_steps"] if a["gradient"] == "surrogate" else None
    calls = 0 if a["gradient"] == "bpda" else pipeline_calls(through, num_timesteps, attacked_steps)
    if passes is None:  # records of hetpure 0.1: the nominal count
        passes = 0 if a["name"] == "none" else (1 if a["name"] == "fgsm" else a["steps"]) * a["eot"]
    return {"attack_per_forward_pass": calls, "attack_per_image": calls * passes, "forward_passes": passes,
            "attack_gradient": a["gradient"] if through["method"] != "none" else "classifier",
            "pipeline": describe_pipeline(through, attacked_steps if through["method"] != "none" else None)}


def _attack_passes(records: list[dict[str, Any]], j: int, single: bool) -> int | None:
    """Forward passes per attacked image of attack ``j`` (the largest recorded), None when not recorded."""
    if single:
        counted = [r["attack_forward_passes"] for r in records if "attack_forward_passes" in r]
    else:
        counted = [o["forward_passes"] for r in records for o in outcomes(r)[j: j + 1]
                   if o.get("attacked", True) and o.get("forward_passes") is not None]
    return max(counted) if counted else None


def summarise(cfg: dict[str, Any], digest: str, records: list[dict[str, Any]], stats: dict[str, Any],
               sanity_report: dict[str, Any] | None, device: torch.device, out: Path,
               num_timesteps: int = 1000) -> dict[str, Any]:
    """The summary of a run's records under the counting rules of :mod:`hetpure.evaluation.counting`
    (``run.ties``), with costs, the EOT diagnostic and the machine."""
    from .. import __version__

    sections = attack_sections(cfg)
    single = not is_ensemble(cfg)
    ties = cfg["run"].get("ties", "wrong")
    acc = accuracies(records, ties, [a["name"] if a["name"] != "saved" else f"saved[{a['slot']}]" for a in sections])
    n = len(records)
    costs = [attack_cost(a, cfg["defense"], num_timesteps, _attack_passes(records, j, single))
             for j, a in enumerate(sections)]
    for j, (entry, cost) in enumerate(zip(acc["per_attack"], costs)):
        entry["eps_calls"] = cost
        backward = [o["backward_passes"] for r in records for o in outcomes(r)[j: j + 1] if "backward_passes" in o]
        if backward:  # backward passes through the attacked pipeline per attacked image (the O(1) of DiffHammer)
            cost["backward_passes"] = max(backward)
    first = sections[0]
    through = first["through"] or cfg["defense"]
    per_image = sum(c["attack_per_image"] * e["attacked"] for c, e in zip(costs, acc["per_attack"])) / n if n else 0
    summary = {
        "n": n,
        "counting": {"robust": RULES["robust"], "ties": ties, "ties_rule": RULES[ties]},
        **{k: v for k, v in acc.items() if k not in ("n", "ties", "per_attack")},  # unresolved: rescorings only
        "per_attack": acc["per_attack"],
        "worst_case_k": cfg["run"]["worst_case_k"],
        "pipelines": {
            "attacked": costs[0]["pipeline"],
            "evaluated": describe_pipeline(cfg["defense"]),
            "transfer": first["through"] is not None,
        },
        "votes_per_evaluation": cfg["defense"]["runs"] if cfg["defense"]["method"] != "none" else 1,
        "eps_calls": {
            "attack_per_forward_pass": costs[0]["attack_per_forward_pass"],
            "defence_per_purification": pipeline_calls(cfg["defense"], num_timesteps),
            "attack_per_image": costs[0]["attack_per_image"] if single else round(per_image, 1),
            "attack_gradient": costs[0]["attack_gradient"] if through["method"] != "none" else "classifier",
            **({"attack_checkpointed": stats["checkpointed"]} if stats.get("checkpointed") is not None else {}),
        },
        "seconds_per_image": _mean([r["seconds"] for r in records if "seconds" in r]),
        "seconds_per_image_this_session": stats["seconds"] / stats["images"] if stats["images"] else None,
        "images_this_session": stats["images"],
        "memory": peak_memory_mb(device),
        "settings_hash": digest,
        "config": portable_config(cfg, out),
        "version": __version__,
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {cpu_model()} threads={torch.get_num_threads()}",
        "device": str(device),
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if cfg["data"].get("survivors_of"):  # the images this run attacked: those still robust in these runs
        summary["conditioned_on"] = [Path(f).name for f in cfg["data"]["survivors_of"]]
    diagnostic = read_diagnostic(out, digest)
    if diagnostic is not None:
        summary["eot_diagnostic"] = diagnostic
    if sanity_report is not None:
        summary["sanity"] = sanity_report
    return summary


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``): timings are only
    comparable on one CPU model, so every time is recorded with it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _pct(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}%"


def summary_markdown(s: dict[str, Any]) -> str:
    ci = s["robust_accuracy_ci95"]
    wci = s["robust_accuracy_worst_case_ci95"]
    cci = s["clean_accuracy_ci95"]
    calls = s["eps_calls"]
    spi = s["seconds_per_image"]
    lines = ["# hetpure evaluation summary", ""]
    counting = s.get("counting")
    if counting:
        lines += [f"Counting: {counting['robust']}. Ties ({counting['ties']}): {counting['ties_rule']}.", ""]
    if s.get("unresolved"):
        lines += [f"{s['unresolved']} images still stand in this rescoring where a later attack of the source "
                  "ensemble has no saved example (the source broke them earlier): counted not robust.", ""]
    if s.get("conditioned_on"):
        lines += [f"Images: only those still robust in {', '.join(s['conditioned_on'])} (data.survivors_of); "
                  "combine this run with them for the per-image worst case over all their attacks.", ""]
    pipes = s.get("pipelines")
    if pipes and pipes["transfer"]:
        lines += [
            "**Transfer evaluation: the attack differentiated another pipeline than the one evaluated.** "
            "Robust accuracy here is that of transferred examples, not of an adaptive attack on the defence.",
            "",
            f"- attacked: {pipes['attacked']} ({calls['attack_per_forward_pass']} ε-calls per forward pass)",
            f"- evaluated: {pipes['evaluated']} ({calls['defence_per_purification']} ε-calls per purification)",
            "",
        ]
    lines += [
        "| metric | value | 95% CI |",
        "|---|---|---|",
        f"| n | {s['n']} | |",
        f"| clean accuracy | {_pct(s['clean_accuracy'])} | {_pct(cci[0])} – {_pct(cci[1])} |",
        f"| robust accuracy (clean-correct, majority vote of {s['votes_per_evaluation']}) | "
        f"{_pct(s['robust_accuracy'])} | {_pct(ci[0])} – {_pct(ci[1])} |",
        *([f"| adversarial accuracy (clean ignored) | {_pct(s['adversarial_accuracy'])} | "
           f"{_pct(s['adversarial_accuracy_ci95'][0])} – {_pct(s['adversarial_accuracy_ci95'][1])} |"]
          if "adversarial_accuracy" in s else []),
        f"| robust accuracy (worst case of K = {s['worst_case_k']}) | {_pct(s['robust_accuracy_worst_case'])} | "
        f"{_pct(wci[0])} – {_pct(wci[1])} |",
        f"| time per image (attack + evaluation) | {'n/a' if spi is None else f'{spi:.2f} s'} | |",
        f"| peak memory | {', '.join(f'{k} {v:.0f}' for k, v in s['memory'].items())} | |",
        "",
        "## ε-model calls",
        "",
        f"- attack: {calls['attack_per_forward_pass']} per forward pass through the defence "
        f"(gradient: {calls['attack_gradient']}), {calls['attack_per_image']} per image in total",
        f"- defence: {calls['defence_per_purification']} per purification, "
        f"× {s['votes_per_evaluation']} votes per evaluation",
    ]
    if calls["attack_per_forward_pass"] != calls["defence_per_purification"]:
        lines.append(
            f"- **the attacked pipeline differs from the evaluated one**: "
            f"{calls['attack_per_forward_pass']} vs {calls['defence_per_purification']} ε-model calls"
        )
    lines += _per_attack_lines(s)
    for e in s.get("per_attack") or []:
        fb = e.get("first_broken")
        if fb:
            lines += ["", f"- keep first_broken ({e['attack']}): {fb['kept']} examples kept as first judged wrong; "
                          f"{fb['still_wrong_on_rescore']} of them ({100 * fb['rate']:.0f}%) still wrong when "
                          "re-scored with fresh noise"]
    for j, diag in enumerate(s.get("eot_diagnostic") or []):
        lines += _diagnostic_lines(diag, j, len(s["eot_diagnostic"]))
    if (s.get("sanity") or {}).get("eot_diagnostic"):
        lines += _diagnostic_lines(s["sanity"]["eot_diagnostic"], 0, 1, "sanity probe")
    if "sanity" in s:
        lines += ["", "## Sanity checks (Carlini et al. 2019)", ""]
        for name, check in s["sanity"]["checks"].items():
            mark = "PASS" if check["passed"] else "**FAILED**"
            lines.append(f"- {mark} {name}: {check['detail']}")
    lines += [
        "",
        f"hetpure {s['version']}, torch {s['torch']}, {s['machine']}, device {s['device']}, "
        f"settings hash `{s['settings_hash']}`, finished {s['finished']}",
        "",
        "## Resolved config",
        "",
        "```json",
        json.dumps(s["config"], indent=2, default=str),
        "```",
        "",
    ]
    return "\n".join(lines)


def _per_attack_lines(s: dict[str, Any]) -> list[str]:
    """The ensemble's table: each attack's images, breaks and the running robust accuracy (AutoAttack's)."""
    per = s.get("per_attack") or []
    if len(per) < 2:
        return []
    lines = ["", "## Attacks of the ensemble (in order)", "",
             "| attack | images attacked | broke first | robust after it | robust alone | ε-calls / attacked image |",
             "|---|---|---|---|---|---|"]
    for e in per:
        alone = _pct(e["robust_accuracy_alone"]) if "robust_accuracy_alone" in e else "–"
        lines.append(f"| {e['attack']} | {e['attacked']} | {e['broke']} | {_pct(e['robust_accuracy_after'])} | "
                     f"{alone} | {e['eps_calls']['attack_per_image']} |")
    return lines


def _diagnostic_lines(d: dict[str, Any] | None, j: int, count: int, where: str = "first batch") -> list[str]:
    """The EOT diagnostic in words, with its warning."""
    if d is None:
        return []
    title = f"## EOT diagnostic ({where}{f', attack {j}' if count > 1 else ''})"
    needed = d["eot_for_cosine_0.9"]
    images = f"{d['images']} image{'s' if d['images'] != 1 else ''}"
    lines = ["", title, "",
             f"- cosine of two independent EOT-{d['half']} half-gradients: {d['clean']['cosine_of_halves']:.3f} at "
             f"the clean images, {d['final']['cosine_of_halves']:.3f} at the final iterates ({images})",
             f"- cosine of this run's EOT-{d['eot']} gradient with the expected gradient (1/n variance model): "
             f"{d['clean']['cosine_with_expected_at_run_eot']:.2f} (clean), "
             f"{d['final']['cosine_with_expected_at_run_eot']:.2f} (final)",
             f"- EOT that reaches a cosine of 0.9: {'unbounded' if needed is None else f'{needed:.0f}'}"]
    if d.get("warning"):
        lines.append(f"- **warning**: {d['warning']}")
    return lines

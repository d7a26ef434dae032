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
from .config import purify_config
from .identity import portable_config
from .stats import wilson_interval


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


def running_postfix(records: Iterable[dict[str, Any]]) -> dict[str, str]:
    rs = list(records)
    if not rs:
        return {}
    clean = sum(r["clean_prediction"] == r["label"] for r in rs) / len(rs)
    robust = sum(r["adversarial_prediction"] == r["label"] for r in rs) / len(rs)
    return {"n": str(len(rs)), "clean": f"{clean:.3f}", "robust": f"{robust:.3f}"}


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


def summarise(cfg: dict[str, Any], digest: str, records: list[dict[str, Any]], stats: dict[str, Any],
               sanity_report: dict[str, Any] | None, device: torch.device, out: Path,
               num_timesteps: int = 1000) -> dict[str, Any]:
    from .. import __version__

    n = len(records)
    clean = sum(r["clean_prediction"] == r["label"] for r in records)
    robust = sum(r["adversarial_prediction"] == r["label"] for r in records)
    worst = sum(r["worst_case_correct"] == r["worst_case_k"] for r in records)
    a = cfg["attack"]
    through = a["through"] or cfg["defense"]
    attacked_steps = a["surrogate_ddim_steps"] if a["gradient"] == "surrogate" else None
    defence_calls = pipeline_calls(cfg["defense"], num_timesteps)
    attack_calls = 0 if a["gradient"] == "bpda" else pipeline_calls(through, num_timesteps, attacked_steps)
    counted = [r["attack_forward_passes"] for r in records if "attack_forward_passes" in r]
    if counted:  # what the attacks did (Attack.forward_passes: APGD's extra evaluations included)
        passes = max(counted)
    else:  # records of hetpure 0.1: the nominal count
        passes = 0 if a["name"] == "none" else (1 if a["name"] == "fgsm" else a["steps"]) * a["eot"]
    summary = {
        "n": n,
        "clean_accuracy": clean / n if n else math.nan,
        "clean_accuracy_ci95": wilson_interval(clean, n),
        "robust_accuracy": robust / n if n else math.nan,
        "robust_accuracy_ci95": wilson_interval(robust, n),
        "robust_accuracy_worst_case": worst / n if n else math.nan,
        "robust_accuracy_worst_case_ci95": wilson_interval(worst, n),
        "worst_case_k": cfg["run"]["worst_case_k"],
        "pipelines": {
            "attacked": describe_pipeline(through, attacked_steps if through["method"] != "none" else None),
            "evaluated": describe_pipeline(cfg["defense"]),
            "transfer": a["through"] is not None,
        },
        "votes_per_evaluation": cfg["defense"]["runs"] if cfg["defense"]["method"] != "none" else 1,
        "eps_calls": {
            "attack_per_forward_pass": attack_calls,
            "defence_per_purification": defence_calls,
            "attack_per_image": attack_calls * passes,
            "attack_gradient": a["gradient"] if through["method"] != "none" else "classifier",
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
        f"| robust accuracy (majority vote of {s['votes_per_evaluation']}) | {_pct(s['robust_accuracy'])} | "
        f"{_pct(ci[0])} – {_pct(ci[1])} |",
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

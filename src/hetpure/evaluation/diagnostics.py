"""The EOT diagnostic: how much of an EOT gradient is signal, measured on the run's own attack.

Two independent halves of the EOT gradient, each the mean of m = ⌈EOT/2⌉ stochastic passes, are compared by
their cosine, per image, at the first batch's clean images and at its final adversarial iterates. Under the
usual variance model — each single-pass gradient is g = μ + ξ with independent noise of total variance σ², so
a mean of n passes has noise σ²/n — the expected cosine of two independent n-means is

    c_n = nρ / (nρ + 1),        ρ = |μ|² / σ²    (the signal-to-noise ratio of one pass),

so the measured halves give ρ = c_m / (m (1 − c_m)), and the cosine of an n-mean with the expected gradient μ
is √(nρ / (nρ + 1)). The EOT that reaches a cosine of 0.9 with μ is n = 0.81 / (0.19 ρ). A run whose EOT is far
below it (a quarter or less) follows mostly noise: its robust accuracy overstates the defence.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..attacks import cross_entropy
from ..attacks.base import LOSSES

DIAGNOSTIC_FILE = "eot_diagnostic.json"  # in the run folder, written with the first batch
TARGET_COSINE = 0.9
FAR_BELOW = 4  # warn when the run's EOT is this many times below the EOT that reaches the target


def signal_to_noise(cosine_of_halves: float, half: int) -> float:
    """ρ = c_m / (m (1 − c_m)) from the mean cosine ``c_m`` of two independent ``half``-pass means (0 when c ≤ 0).

    >>> round(signal_to_noise(0.04, 1), 4)
    0.0417
    """
    c = min(cosine_of_halves, 1 - 1e-12)
    return max(0.0, c) / (half * (1 - c))


def cosine_with_expected(rho: float, eot: int) -> float:
    """Expected cosine between an ``eot``-pass mean gradient and the expected gradient: √(nρ / (nρ + 1)).

    >>> round(cosine_with_expected(0.04 / 0.96, 2), 3)   # single-pass cosine 0.04, EOT 2: mostly noise
    0.277
    """
    return math.sqrt(eot * rho / (eot * rho + 1)) if rho > 0 else 0.0


def eot_for_cosine(rho: float, target: float = TARGET_COSINE) -> float:
    """The EOT whose mean gradient has cosine ``target`` with the expected gradient: n = t² / ((1 − t²) ρ).

    >>> round(eot_for_cosine(0.04 / 0.96))
    102
    """
    return math.inf if rho <= 0 else target**2 / ((1 - target**2) * rho)


def half_cosines(attack: Any, model: nn.Module, x: Tensor, y: Tensor) -> list[float]:
    """Per image, the cosine of two independent EOT half-gradients of ``attack``'s own loss at ``x`` (the attack's
    own gradient machinery, chunking and model; its cost counter is restored)."""
    eot, passes = attack.eot, attack.forward_passes
    loss = getattr(attack, "loss", "ce")
    loss_fn = LOSSES[loss] if isinstance(loss, str) and loss in LOSSES else cross_entropy  # the loss it follows
    attack.eot = max(1, math.ceil(eot / 2))
    try:
        g1, _, _ = attack.gradient(model, x, y, loss_fn)
        g2, _, _ = attack.gradient(model, x, y, loss_fn)
    finally:
        attack.eot, attack.forward_passes = eot, passes
    cos = torch.nn.functional.cosine_similarity(g1.flatten(1).double(), g2.flatten(1).double(), dim=1, eps=1e-30)
    return [float(v) for v in cos.cpu()]


def summarise_cosines(clean: list[float], final: list[float], eot: int) -> dict[str, Any]:
    """The diagnostic's numbers from the per-image cosines at the clean images and at the final iterates."""
    half = max(1, math.ceil(eot / 2))
    out: dict[str, Any] = {"eot": eot, "half": half, "images": len(clean)}
    for where, values in (("clean", clean), ("final", final)):
        mean = sum(values) / len(values) if values else math.nan
        rho = signal_to_noise(mean, half) if values else math.nan
        out[where] = {"cosine_of_halves": mean, "cosine_with_expected_at_run_eot": cosine_with_expected(rho, eot),
                      "eot_for_cosine_0.9": eot_for_cosine(rho)}
    needed = max(out["clean"]["eot_for_cosine_0.9"], out["final"]["eot_for_cosine_0.9"])
    out["eot_for_cosine_0.9"] = needed if math.isfinite(needed) else None
    out["warning"] = (None if eot * FAR_BELOW > needed else
                      f"the run's EOT {eot} is far below the EOT that reaches a gradient cosine of 0.9 with the "
                      f"expected gradient ({'unbounded' if not math.isfinite(needed) else round(needed)}): the "
                      "attack follows mostly noise, so its robust accuracy overstates the defence")
    return out


def eot_diagnostic(ev: Any, x: Tensor, y: Tensor, x_adv: Tensor, generator: torch.Generator,
                   j: int = 0) -> dict[str, Any] | None:
    """The diagnostic of attack ``j`` of an :class:`~hetpure.evaluation.batch.Evaluator` on one batch (clean
    images ``x`` and the final iterates ``x_adv``), from its own random stream; None for a gradient-free case."""
    attack, model = ev.build(x, generator, j)
    if attack is None or not hasattr(attack, "gradient"):
        return None
    return summarise_cosines(half_cosines(attack, model, x, y), half_cosines(attack, model, x_adv, y), attack.eot)


def read_diagnostic(out: Path, digest: str) -> list[dict[str, Any] | None] | None:
    """A run folder's EOT diagnostic per attack, when it was measured for this identity (else None)."""
    try:
        data = json.loads((Path(out) / DIAGNOSTIC_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data.get("attacks") if isinstance(data, dict) and data.get("settings_hash") == digest else None

"""Attacks: each a small class called as ``attack(model, x, y) -> x_adv`` on [0, 1] images.

``defended_model`` builds the module an attack differentiates for a purifier: through the S-step
surrogate, through the exact sampler with per-step gradient checkpointing, or with BPDA (identity backward).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..errors import ConfigError
from ..purify import Purifier
from .adaptive import MASK_MODES, LowFrequencyPGD, MaskAwarePGD, attention_overlap
from .apgd import APGD, apgd_checkpoints
from .base import Attack, cross_entropy, dlr_loss, project
from .pgd import FGSM, PGD

GRADIENTS = ("surrogate", "exact", "bpda")


class BPDAPurified(nn.Module):
    """classifier(purify(x)) in the forward pass, identity through purification in the backward pass
    (Athalye et al. 2018): a weak reference, since purification is differentiable here."""

    def __init__(self, purifier: Purifier) -> None:
        super().__init__()
        self.purifier = purifier
        self.generator = None

    def eps_calls(self) -> int:
        return 0

    def forward(self, x: Tensor) -> Tensor:
        pure = self.purifier.purify(x.detach(), generator=self.generator).detach()
        return self.purifier.classifier(x + (pure - x).detach())


def defended_model(purifier: Purifier | None, classifier: nn.Module, gradient: str = "surrogate",
                   surrogate_ddim_steps: int = 10) -> nn.Module:
    """The module the attack differentiates: the bare classifier when there is no purifier."""
    if purifier is None:
        return classifier
    if gradient == "surrogate":
        return purifier.as_module(ddim_steps=surrogate_ddim_steps)
    if gradient == "exact":
        return purifier.as_module(use_checkpoint=True)
    if gradient == "bpda":
        return BPDAPurified(purifier)
    raise ConfigError(f"attack.gradient must be one of {GRADIENTS}, got {gradient!r}")


ATTACKS = ("none", "fgsm", "pgd", "apgd-ce", "apgd-dlr", "mask-pgd", "lowfreq-pgd")


def make_attack(name: str, **kwargs: Any) -> Attack | None:
    """Build an attack by name (``none`` gives None); keyword arguments go to its constructor."""
    if name == "none":
        return None
    if name == "fgsm":
        return FGSM(**kwargs)
    if name == "pgd":
        return PGD(**kwargs)
    if name == "mask-pgd":
        return MaskAwarePGD(**kwargs)
    if name == "lowfreq-pgd":
        return LowFrequencyPGD(**kwargs)
    if name in ("apgd-ce", "apgd-dlr"):
        return APGD(loss=name.split("-")[1], **kwargs)
    raise ConfigError(f"unknown attack {name!r}; use one of {ATTACKS}")


__all__ = [
    "APGD", "ATTACKS", "Attack", "BPDAPurified", "FGSM", "GRADIENTS", "LowFrequencyPGD", "MASK_MODES",
    "MaskAwarePGD", "PGD", "apgd_checkpoints", "attention_overlap", "cross_entropy", "defended_model", "dlr_loss",
    "make_attack", "project",
]

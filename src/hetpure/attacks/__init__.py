"""Attacks: each a small class called as ``attack(model, x, y) -> x_adv`` on [0, 1] images.

The general attacks (FGSM, PGD, APGD), hetpure's own adaptive ones (mask-aware and low-frequency PGD) and the
published attacks on diffusion purification (DiffAttack, DiffHammer), one file each; ``keep`` (last, best,
first_broken) is in :mod:`hetpure.attacks.keep`.

``defended_model`` builds the module an attack differentiates for a purifier: through the S-step
surrogate, through the exact sampler with per-step gradient checkpointing, or with BPDA (identity backward).
For a large ε-model (:func:`hetpure.devices.is_large_eps_model`: ADM 256², NCSN++) the differentiated pass
is also chunked by the purifier's memory-sized ``max_batch`` and checkpointed per sampler step, surrogate
included, and the attacks' EOT chunks are capped at that ``max_batch``. float16 is refused on every
gradient path (:func:`hetpure.devices.check_gradient_precision`).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn

from ..devices import check_gradient_precision, is_large_eps_model
from ..errors import ConfigError
from ..purify import Purifier
from .adaptive import MASK_MODES, LowFrequencyPGD, MaskAwarePGD, attention_overlap
from .apgd import APGD, APGDCE, APGDDLR, apgd_checkpoints
from .base import KEEP_MODES, Attack, Judge, cross_entropy, dlr_loss, project
from .diffattack import DiffAttack, deviated_reconstruction
from .diffhammer import DiffHammer, em_weights, n_evaluation_correct
from .keep import Keeper, rescore_summary
from .pgd import FGSM, PGD

GRADIENTS = ("surrogate", "exact", "bpda", "adjoint")


class BPDAPurified(nn.Module):
    """classifier(purify(x)) in the forward pass, identity through purification in the backward pass
    (Athalye et al. 2018): a weak reference, since purification is differentiable here."""

    def __init__(self, purifier: Purifier, max_batch: int | None = None) -> None:
        super().__init__()
        self.purifier = purifier
        self.generator = None
        self.max_batch = max_batch  # caps the attack's EOT chunk (large ε-models)

    def eps_calls(self) -> int:
        return 0

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():  # identity backward: no graph through the sampler
            pure = self.purifier.purify(x.detach(), generator=self.generator)
        return self.purifier.classifier(x + (pure - x).detach())


def defended_model(purifier: Purifier | None, classifier: nn.Module, gradient: str = "surrogate",
                   surrogate_ddim_steps: int = 10, checkpoint: bool | None = None) -> nn.Module:
    """The module the attack differentiates: the bare classifier when there is no purifier.

    ``checkpoint`` (exact gradient only): per-step gradient checkpointing; None keeps the default (on).
    Both give the same gradients bit for bit (every step's noise is drawn before the step and replayed);
    without it the whole graph is kept, faster when it fits (see :mod:`hetpure.graph_memory`).
    ``surrogate_ddim_steps`` is the surrogate's step count: DDIM steps (uniform, heterogeneous), Euler–Maruyama
    steps (diffpure) or reverse steps per iteration (gdmp). ``adjoint`` (diffpure only): torchsde's adjoint SDE.
    """
    if purifier is None or gradient == "bpda":
        check_gradient_precision((classifier,), "the attacked classifier")
    if purifier is None:
        return classifier
    large = is_large_eps_model(purifier.eps_model)
    chunk = purifier.config.max_batch if large else None  # chunks bound memory only when checkpointed
    if gradient in ("surrogate", "exact"):
        check_gradient_precision((purifier.eps_model, purifier.classifier), f"attack.gradient {gradient!r}")
        if gradient == "surrogate":
            return purifier.as_module(ddim_steps=surrogate_ddim_steps, use_checkpoint=large, max_batch=chunk)
        return purifier.as_module(use_checkpoint=True if checkpoint is None else checkpoint, max_batch=chunk)
    if gradient == "bpda":
        return BPDAPurified(purifier, max_batch=chunk)
    if gradient == "adjoint":  # DiffPure's own gradient: torchsde's adjoint SDE (hetpure.sde)
        adjoint_module = getattr(purifier, "adjoint_module", None)
        if adjoint_module is None:
            raise ConfigError(f"attack.gradient adjoint is DiffPure's adjoint SDE and needs a diffpure purifier, got "
                              f"{type(purifier).__name__}; fix: --set attack.gradient=exact")
        check_gradient_precision((purifier.eps_model, purifier.classifier), "attack.gradient 'adjoint'")
        return adjoint_module(max_batch=chunk)
    raise ConfigError(f"attack.gradient must be one of {GRADIENTS}, got {gradient!r}")


#: Every attack by its config name: one class each. A new attack is one new file and one entry here; its
#: constructor's parameter names are the ``attack`` config keys it takes (:func:`attack_kwargs`).
ATTACKS: dict[str, type[Attack]] = {
    "fgsm": FGSM,
    "pgd": PGD,
    "apgd-ce": APGDCE,
    "apgd-dlr": APGDDLR,
    "mask-pgd": MaskAwarePGD,
    "lowfreq-pgd": LowFrequencyPGD,
    "diffattack": DiffAttack,
    "diffhammer": DiffHammer,
}
#: Config keys whose constructor parameter has another name.
CONFIG_KEY_OF_PARAMETER = {"mode": "mask_mode"}


def attack_class(name: str) -> type[Attack]:
    """The class of a config attack name (a clear error naming the closest valid names)."""
    if name not in ATTACKS:
        import difflib

        close = difflib.get_close_matches(str(name), list(ATTACKS), n=2, cutoff=0.6)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise ConfigError(f"unknown attack {name!r}{hint}; use one of none, {', '.join(ATTACKS)}")
    return ATTACKS[name]


def attack_kwargs(name: str, config: dict[str, Any], **given: Any) -> dict[str, Any]:
    """Constructor arguments of attack ``name`` read from an ``attack`` config section by parameter name
    (``None`` values keep the constructor's default); ``given`` (e.g. the generator) is passed as it is. A
    ``keep`` other than ``last`` for an attack that does not take it is refused."""
    params = inspect.signature(attack_class(name).__init__).parameters
    if config.get("keep") not in (None, "last") and "keep" not in params:
        takers = [n for n, cls in ATTACKS.items() if "keep" in inspect.signature(cls.__init__).parameters]
        raise ConfigError(f"attack.keep {config['keep']} is not supported by {name} (it returns its last iterate); "
                          f"the attacks that take it: {', '.join(takers)}; fix: --set attack.keep=last")
    kwargs: dict[str, Any] = {}
    for param in params:
        if param == "self":
            continue
        if param in given:
            kwargs[param] = given[param]
            continue
        key = CONFIG_KEY_OF_PARAMETER.get(param, param)
        if config.get(key) is not None:
            kwargs[param] = config[key]
    return kwargs


def make_attack(name: str, **kwargs: Any) -> Attack | None:
    """Build an attack by name (``none`` gives None); keyword arguments go to its constructor."""
    if name == "none":
        return None
    return attack_class(name)(**kwargs)


__all__ = [
    "APGD", "APGDCE", "APGDDLR", "ATTACKS", "Attack", "BPDAPurified", "DiffAttack", "DiffHammer", "FGSM", "GRADIENTS",
    "KEEP_MODES", "Judge", "Keeper", "LowFrequencyPGD", "MASK_MODES", "MaskAwarePGD", "PGD", "apgd_checkpoints",
    "attack_class", "attack_kwargs", "attention_overlap", "cross_entropy", "defended_model", "deviated_reconstruction",
    "dlr_loss", "em_weights", "make_attack", "n_evaluation_correct", "project", "rescore_summary",
]

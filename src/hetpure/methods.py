"""Every purification method by its ``defense.method`` name: the table, and building a purifier from it."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .config import METHODS, PurifyConfig
from .errors import ConfigError
from .gdmp import GDMPPurifier
from .models.base import EpsModel
from .purify import HeterogeneousPurifier, Purifier, UniformPurifier
from .sde import DiffPurePurifier

#: ``defense.method`` → purifier class ("none" is no purifier).
PURIFIERS: dict[str, type[Purifier]] = {
    "uniform": UniformPurifier,
    "heterogeneous": HeterogeneousPurifier,
    "diffpure": DiffPurePurifier,
    "gdmp": GDMPPurifier,
}


def purifier_from_config(
    eps_model: EpsModel, classifier: nn.Module, method: str, config: PurifyConfig,
    mask_layers: Sequence[str] | None = None,
) -> Purifier | None:
    """Build the purifier for ``method`` in :data:`~hetpure.config.METHODS` (None for 'none').

    Example:
        >>> import hetpure
        >>> from hetpure.demo import load_demo_models
        >>> eps, clf = load_demo_models()
        >>> pur = purifier_from_config(eps, clf, "uniform", hetpure.PurifyConfig(t_star=0.2, ddim_steps=10))
        >>> type(pur).__name__
        'UniformPurifier'
    """
    if method == "none":
        return None
    if method not in PURIFIERS:
        raise ConfigError(f"unknown defense method {method!r}; use one of {', '.join(METHODS)}")
    if method == "heterogeneous":
        return HeterogeneousPurifier(eps_model, classifier, config, mask_layers=mask_layers)
    return PURIFIERS[method](eps_model, classifier, config)

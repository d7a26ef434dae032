"""One entry of the classifier zoo (:data:`hetpure.models.zoo.ZOO`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ClassifierSpec:
    """One registry entry.

    Attributes:
        name: the registry name.
        factory: ``factory(path, trust_pickle=False, **kw) -> nn.Module``.
        description: one line for listings and error messages.
        input_shape: ``(C, H, W)`` the weights expect, if fixed.
        label_set: the class names its outputs stand for (``"cifar10"``, ``"mnist"``, ``"imagenet"``), if
            known: image folders are then labelled by folder name, not by sorted position.
        mask_layers: the layers the mask is computed from with the default options (the model's own
            ``mask_layers`` attribute is what is used; it follows options such as the depth).
    """

    name: str
    factory: Callable[..., nn.Module]
    description: str
    input_shape: tuple[int, int, int] | None
    label_set: str | None = None
    mask_layers: tuple[str, ...] | None = None

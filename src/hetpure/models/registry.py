"""Name -> classifier: ``load_classifier("name")`` over the zoo table (:data:`hetpure.models.zoo.ZOO`), and
``@register_classifier("name")`` to add a factory of your own.

A factory is called as ``factory(path, trust_pickle=..., **kw)`` and returns a classifier module that
takes [0, 1] images, holds its own normalisation and has a ``mask_layers`` attribute. The registry puts
the result in eval mode and records where its weights came from in ``weights_source`` (``None`` when no
weights were loaded: the network is then randomly initialised).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from torch import nn

from ..errors import ConfigError, HetpureError
from .checkpoint import check_trust_pickle
from .spec import ClassifierSpec
from .zoo import ZOO

__all__ = [
    "ClassifierSpec",
    "describe_classifier",
    "list_classifiers",
    "load_classifier",
    "register_classifier",
]

F = TypeVar("F", bound=Callable[..., nn.Module])


#: Every classifier by name: the zoo's built-in entries plus those added with :func:`register_classifier`.
_REGISTRY: dict[str, ClassifierSpec] = ZOO



def register_classifier(
    name: str, *, description: str = "", input_shape: tuple[int, int, int] | None = None,
    label_set: str | None = None,
) -> Callable[[F], F]:
    """Decorator registering a classifier factory under ``name`` (an error if the name is taken)."""

    def deco(factory: F) -> F:
        if name in _REGISTRY:
            raise HetpureError(f"a classifier named {name!r} is already registered; pick another name")
        doc = (factory.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = ClassifierSpec(name, factory, description or (doc[0] if doc else ""), input_shape,
                                         label_set)
        return factory

    return deco


def list_classifiers() -> list[str]:
    """Sorted names accepted by :func:`load_classifier`.

    Example:
        >>> import hetpure
        >>> "cifar_resnet20" in hetpure.list_classifiers()
        True
    """
    return sorted(_REGISTRY)


def describe_classifier(name: str) -> ClassifierSpec:
    """The registry entry for ``name`` (a clear error for unknown names)."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"unknown classifier {name!r}.{hint} Available: {', '.join(sorted(_REGISTRY))} "
            "(or wrap your own nn.Module with hetpure.as_classifier)"
        )
    return _REGISTRY[name]


def load_classifier(
    name: str, path: str | Path | None = None, *, trust_pickle: bool = False, **kw: object
) -> nn.Module:
    """Build the registered classifier ``name`` and, if ``path`` is given, load its weights strictly.

    Args:
        name: one of :func:`list_classifiers`.
        path: a checkpoint (safetensors, or a torch file readable with ``weights_only=True``). Without it
            the network is randomly initialised (``model.weights_source is None``), unless a factory option
            fetches weights (``wrn28_10(from_robustbench=True)``, ``resnet50(weights="DEFAULT")``).
        trust_pickle: allow full unpickling of a torch checkpoint (runs code from the file; see
            :func:`hetpure.load_state_dict_file`). Only the boolean ``True`` allows it; another value that is
            not ``False`` (``"false"``, ``1``) is an :class:`~hetpure.errors.InputTypeError`.
        **kw: architecture options of that classifier (e.g. ``depth=16, widen_factor=1``).

    Returns:
        The classifier in eval mode, taking [0, 1] images, with ``mask_layers`` and ``weights_source``.

    Example:
        >>> import hetpure
        >>> clf = hetpure.load_classifier("cifar_resnet20")  # random weights; give path= for trained ones
        >>> clf.mask_layers, clf.weights_source
        (['layer1', 'layer2', 'layer3'], None)
        >>> clf = hetpure.load_classifier("cifar_resnet20", "resnet20.safetensors")  # doctest: +SKIP
    """
    check_trust_pickle(trust_pickle)  # before anything: only the boolean True may allow unpickling
    spec = describe_classifier(name)
    params = inspect.signature(spec.factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    allowed = [p for p in params if p not in ("path", "trust_pickle")]
    unknown = [k for k in kw if k not in allowed]
    if unknown and not takes_any:
        raise HetpureError(
            f"classifier {name!r} has no option {', '.join(map(repr, unknown))}; "
            f"its options are: {', '.join(allowed) or '(none)'}"
        )
    model = spec.factory(None if path is None else Path(path), trust_pickle=trust_pickle, **kw)
    if path is not None:
        model.weights_source = str(path)
    elif not hasattr(model, "weights_source"):
        model.weights_source = None
    return model.eval()

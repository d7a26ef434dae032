"""The classifier base class (normalisation inside, mask-layer presets), the wrapper for user networks,
and the logits check."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import HetpureError
from ..mask import resolve_layers
from .checkpoint import check_trust_pickle, load_into, load_state_dict_file

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2471, 0.2435, 0.2616)
MNIST_MEAN: tuple[float] = (0.1307,)
MNIST_STD: tuple[float] = (0.3081,)



# --------------------------------------------------------------------------------------------------------
# Base class, wrapper, validation helpers
# --------------------------------------------------------------------------------------------------------


class ImageClassifier(nn.Module):
    """Base class: [0, 1] images in, logits out, normalisation held as non-persistent buffers.

    Attributes:
        mask_layers: default mask layers (module names in ``named_modules()``).
        num_classes: number of logits.
        in_channels: image channels expected (``None``: not checked).
        weights_source: where the weights came from (set by :func:`hetpure.load_classifier`).
    """

    mask_layers: list[str]

    def __init__(
        self,
        num_classes: int | None,
        in_channels: int | None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.weights_source: str | None = None
        self.mask_layers = []
        if (mean is None) != (std is None):
            raise HetpureError("give both mean and std for the normalisation, or neither")
        if mean is not None and std is not None:
            mean_l = [float(v) for v in mean]
            std_l = [float(v) for v in std]
            if len(mean_l) != len(std_l):
                raise HetpureError(
                    f"mean has {len(mean_l)} values but std has {len(std_l)}; give one per channel"
                )
            if in_channels is not None and len(mean_l) not in (1, in_channels):
                raise HetpureError(
                    f"mean/std have {len(mean_l)} values but the network takes {in_channels} channels"
                )
            if not all(v > 0 for v in std_l):
                raise HetpureError(f"std must be positive, got {std_l}")
            m = torch.tensor(mean_l, dtype=torch.float32).reshape(-1, 1, 1)
            s = torch.tensor(std_l, dtype=torch.float32).reshape(-1, 1, 1)
            self.register_buffer("mean", m, persistent=False)
            self.register_buffer("std", s, persistent=False)
        else:
            self.register_buffer("mean", None, persistent=False)
            self.register_buffer("std", None, persistent=False)

    def normalize(self, x: Tensor) -> Tensor:
        """Check the input's layout and apply ``(x - mean) / std`` (identity without mean/std)."""
        if not torch.is_tensor(x) or x.dim() != 4:
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise HetpureError(
                f"{type(self).__name__} expects a (B, C, H, W) image tensor in [0, 1], got {shape}; "
                "add a batch dimension with x.unsqueeze(0) for a single image"
            )
        if self.in_channels is not None and x.shape[1] != self.in_channels:
            raise HetpureError(
                f"{type(self).__name__} expects {self.in_channels}-channel images, got {x.shape[1]} channels "
                f"(shape {tuple(x.shape)})"
            )
        if not x.is_floating_point():
            raise HetpureError(
                f"{type(self).__name__} expects float images in [0, 1], got dtype {x.dtype}; "
                "convert with x.float() / 255"
            )
        if self.mean is None:
            return x
        return (x - self.mean) / self.std


class WrappedClassifier(ImageClassifier):
    """A user network under ``net`` with optional normalisation in front; see :func:`as_classifier`."""

    def __init__(
        self,
        net: nn.Module,
        mask_layers: Sequence[str],
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        num_classes: int | None = None,
        in_channels: int | None = None,
    ) -> None:
        super().__init__(num_classes, in_channels, mean, std)
        self.net = net
        self.mask_layers = [f"net.{name}" for name in mask_layers]

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.normalize(x))


def as_classifier(
    module: nn.Module,
    mask_layers: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    *,
    num_classes: int | None = None,
    in_channels: int | None = None,
) -> WrappedClassifier:
    """Wrap any ``nn.Module`` that maps images to logits as a hetpure classifier.

    Args:
        module: the network. If it expects normalised input, give ``mean``/``std`` and the wrapper takes
            [0, 1] images; without them the images are passed through unchanged.
        mask_layers: names of layers in ``module`` (as in ``module.named_modules()``) whose activations
            build the attention mask, usually the last block of each stage. ``None`` takes
            ``module.mask_layers`` if the module has that attribute. In the wrapper they become
            ``"net." + name``.
        mean, std: per-channel normalisation applied inside the wrapper.
        num_classes, in_channels: optional, recorded and (for channels) checked on every call.

    Raises:
        HetpureError: a layer name that does not exist (with close names), no mask layers, or bad mean/std.

    Example:
        >>> import torch, hetpure
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        ...                     nn.Linear(8, 10))
        >>> clf = hetpure.as_classifier(net, mask_layers=["1"], mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
        >>> clf.mask_layers, tuple(clf(torch.rand(2, 3, 32, 32)).shape)
        (['net.1'], (2, 10))
    """
    if not isinstance(module, nn.Module):
        raise HetpureError(f"as_classifier needs a torch.nn.Module, got {type(module).__name__}")
    if mask_layers is None:
        mask_layers = getattr(module, "mask_layers", None)
        if mask_layers is None:
            raise HetpureError(
                f"{type(module).__name__} has no mask_layers attribute; pass mask_layers=[...] with the "
                "names (from module.named_modules()) of the last block of each stage"
            )
    names = list(mask_layers) if not isinstance(mask_layers, str) else mask_layers
    resolve_layers(module, names)
    if not names:
        raise HetpureError(
            "mask_layers is empty; give at least one layer name (the last block of each stage)"
        )
    return WrappedClassifier(module, names, mean, std, num_classes=num_classes, in_channels=in_channels)


def check_logits(classifier: nn.Module, x: Tensor, num_classes: int | None = None) -> Tensor:
    """Run ``classifier`` on ``x`` (without gradients) and check that it returns (B, num_classes) logits.

    Returns the logits. Raises :class:`~hetpure.errors.HetpureError` for a tuple/dict/other object, a wrong
    batch dimension, a 1-D or >2-D tensor, an integer tensor, a class count different from ``num_classes``
    (or the classifier's ``num_classes`` attribute), or non-finite values.

    Example:
        >>> import torch, hetpure
        >>> clf = hetpure.load_classifier("cifar_resnet20")
        >>> tuple(hetpure.check_logits(clf, torch.rand(2, 3, 32, 32)).shape)
        (2, 10)
        >>> hetpure.check_logits(clf, torch.rand(2, 3, 32, 32), num_classes=100)
        Traceback (most recent call last):
            ...
        hetpure.errors.HetpureError: CifarResNet returned 10 logits per image; expected 100 classes
    """
    name = type(classifier).__name__
    if not torch.is_tensor(x) or x.dim() != 4:
        raise HetpureError(
            f"check_logits needs a (B, C, H, W) image batch, got {getattr(x, 'shape', type(x))}"
        )
    with torch.no_grad():
        out = classifier(x)
    if isinstance(out, (tuple, list)):
        raise HetpureError(
            f"{name} returned a {type(out).__name__} of {len(out)} items, not a logits tensor; wrap it so "
            "that forward returns only the (B, num_classes) logits, e.g. out[0]"
        )
    if not torch.is_tensor(out):
        raise HetpureError(f"{name} returned a {type(out).__name__}, not a (B, num_classes) logits tensor")
    batch = x.shape[0]
    if out.dim() != 2:
        raise HetpureError(
            f"{name} returned shape {tuple(out.shape)}; expected 2-D (B, num_classes) logits with B = {batch}"
            + (" (a 1-D output: did it squeeze the batch or class dimension?)" if out.dim() == 1 else "")
        )
    if out.shape[0] != batch:
        raise HetpureError(
            f"{name} returned {out.shape[0]} rows for a batch of {batch} images (shape {tuple(out.shape)}); "
            "the first dimension must be the batch"
        )
    expected = num_classes if num_classes is not None else getattr(classifier, "num_classes", None)
    if out.shape[1] < 2 or (expected is not None and out.shape[1] != expected):
        want = f"{expected}" if expected is not None else "at least 2"
        raise HetpureError(f"{name} returned {out.shape[1]} logits per image; expected {want} classes")
    if not out.is_floating_point():
        raise HetpureError(f"{name} returned dtype {out.dtype}; logits must be floating point (not labels)")
    if not bool(torch.isfinite(out).all()):
        raise HetpureError(f"{name} returned NaN or infinite logits for this input")
    return out


def _load_weights(model: nn.Module, path: Path | None, trust_pickle: bool) -> nn.Module:
    check_trust_pickle(trust_pickle)
    if path is not None:
        load_into(model, load_state_dict_file(path, trust_pickle=trust_pickle), strict=True)
    return model

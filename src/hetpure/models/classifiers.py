"""Image classifiers with their normalisation inside and mask-layer presets.

Every classifier here takes RGB (or grey) images in [0, 1] of shape (B, C, H, W), normalises them itself
(the mean/std are non-persistent buffers, so they are not part of any checkpoint) and returns (B, K)
logits. ``mask_layers`` lists the module names (as in ``named_modules()``) whose activations the
purifiers use to build the attention mask by default: the last block of each stage.

Built-in architectures (registered in :mod:`hetpure.models.registry`):

* :class:`CifarResNet` - He et al. 2016 CIFAR ResNet-(6n+2) with option-A (parameter-free) shortcuts,
  the key layout of github.com/akamaster/pytorch_resnet_cifar10; ImageNet mean/std inside.
* :class:`WideResNet` - RobustBench's ``WideResNet`` (cifar10 "Standard" = WRN-28-10), no normalisation.
* :class:`DMWideResNet` - RobustBench's ``DMWideResNet`` (WRN-70-16, Swish), CIFAR-10 mean/std inside.
* ``resnet50`` - torchvision's ImageNet ResNet-50 wrapped with ImageNet normalisation (needs torchvision).
* :class:`MnistCNN` - a small three-stage CNN for 1x28x28 digits.

User networks are wrapped with :func:`as_classifier`; :func:`check_logits` validates a classifier's output.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import HetpureError, MissingDependencyError
from ..mask import resolve_layers
from .checkpoint import load_into, load_state_dict_file
from .registry import register_classifier

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MNIST_MEAN",
    "MNIST_STD",
    "CifarResNet",
    "DMWideResNet",
    "ImageClassifier",
    "MnistCNN",
    "Swish",
    "WideResNet",
    "WrappedClassifier",
    "as_classifier",
    "check_logits",
    "resolve_layers",
]

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
    if path is not None:
        load_into(model, load_state_dict_file(path, trust_pickle=trust_pickle), strict=True)
    return model


# --------------------------------------------------------------------------------------------------------
# CIFAR ResNet (He et al. 2016, option A)
# --------------------------------------------------------------------------------------------------------


class _ShortcutA(nn.Module):
    """Option-A shortcut: subsample by ``stride`` and zero-pad the channels (half before, half after)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        extra = planes - in_planes
        self.pad_before = extra // 2
        self.pad_after = extra - extra // 2

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))


class _CifarBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = (
            _ShortcutA(in_planes, planes, stride) if stride != 1 or in_planes != planes else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(ImageClassifier):
    """CIFAR ResNet-(6n+2) of He et al. 2016 with option-A shortcuts; ImageNet mean/std inside by default.

    Keys follow akamaster/pytorch_resnet_cifar10 (``conv1``, ``bn1``, ``layer{1,2,3}.{i}.{conv,bn}{1,2}``,
    ``linear``). Mask layers: ``layer1``, ``layer2``, ``layer3`` (the stage outputs).
    """

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        mean: Sequence[float] | None = IMAGENET_MEAN,
        std: Sequence[float] | None = IMAGENET_STD,
    ) -> None:
        if depth < 8 or (depth - 2) % 6:
            raise HetpureError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110, ...), got {depth}")
        super().__init__(num_classes, 3, mean, std)
        n = (depth - 2) // 6
        self.depth = depth
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, n, 1)
        self.layer2 = self._stage(16, 32, n, 2)
        self.layer3 = self._stage(32, 64, n, 2)
        self.linear = nn.Linear(64, num_classes)
        self.mask_layers = ["layer1", "layer2", "layer3"]
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    @staticmethod
    def _stage(in_planes: int, planes: int, n: int, stride: int) -> nn.Sequential:
        blocks = [
            _CifarBlock(in_planes if i == 0 else planes, planes, stride if i == 0 else 1) for i in range(n)
        ]
        return nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = out.mean(dim=(2, 3))
        return self.linear(out)


# --------------------------------------------------------------------------------------------------------
# RobustBench WideResNet (WRN-28-10 "Standard")
# --------------------------------------------------------------------------------------------------------


class _WideBlock(nn.Module):
    """Pre-activation wide block; the 1x1 ``convShortcut`` (if channels change) takes the activated input."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equalInOut = in_planes == out_planes
        self.convShortcut: nn.Conv2d | None = (
            None
            if self.equalInOut
            else nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        act = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        if self.convShortcut is None:
            return x + out
        return self.convShortcut(act) + out


class _WideGroup(nn.Module):
    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[
                _WideBlock(
                    in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate
                )
                for i in range(n)
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(ImageClassifier):
    """RobustBench's ``WideResNet`` (key layout and computation); WRN-28-10 is the cifar10 "Standard" model.

    ``depth = 6n + 4`` (n blocks per group), widths 16, 16k, 32k, 64k for ``widen_factor`` k. No
    normalisation by default (RobustBench models take [0, 1] input). ``sub_block1`` adds the unused
    ``sub_block1`` group some checkpoints carry. Mask layers: ``block{1,2,3}.layer.{n-1}.relu2`` and
    ``relu``, as the official Purification code hooks them.
    """

    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 10,
        num_classes: int = 10,
        sub_block1: bool = False,
        drop_rate: float = 0.0,
        bias_last: bool = True,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        if depth < 10 or (depth - 4) % 6:
            raise HetpureError(f"WideResNet depth must be 6n+4 (16, 22, 28, 34, 40, 70, ...), got {depth}")
        if widen_factor < 1:
            raise HetpureError(f"widen_factor must be a positive integer, got {widen_factor}")
        super().__init__(num_classes, 3, mean, std)
        n = (depth - 4) // 6
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, ch[0], 3, stride=1, padding=1, bias=False)
        self.block1 = _WideGroup(n, ch[0], ch[1], 1, drop_rate)
        if sub_block1:
            self.sub_block1 = _WideGroup(n, ch[0], ch[1], 1, drop_rate)
        self.block2 = _WideGroup(n, ch[1], ch[2], 2, drop_rate)
        self.block3 = _WideGroup(n, ch[2], ch[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = nn.ReLU()
        self.fc = nn.Linear(ch[3], num_classes, bias=bias_last)
        self.nChannels = ch[3]
        self.mask_layers = [f"block{g}.layer.{n - 1}.relu2" for g in (1, 2, 3)] + ["relu"]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    @classmethod
    def from_config(cls, config: dict) -> WideResNet:
        """Build from RobustBench's constructor keywords (``dropRate`` etc., as in the fixture manifests)."""
        cfg = dict(config)
        if "dropRate" in cfg:
            cfg["drop_rate"] = cfg.pop("dropRate")
        return cls(**cfg)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(self.normalize(x))
        out = self.block3(self.block2(self.block1(out)))
        out = self.relu(self.bn1(out))
        return self.fc(out.mean(dim=(2, 3)))


# --------------------------------------------------------------------------------------------------------
# RobustBench DMWideResNet (WRN-70-16, Swish)
# --------------------------------------------------------------------------------------------------------


class Swish(nn.Module):
    """``x * sigmoid(x)`` as a module (so that it can be hooked by name)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(x)


_ACTIVATIONS: dict[str, type[nn.Module]] = {"swish": Swish, "silu": Swish, "relu": nn.ReLU}


class _DMBlock(nn.Module):
    """DeepMind-style block: explicit padding before ``conv_0`` (TF "SAME" on stride 2)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, act: type[nn.Module]) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise HetpureError(f"DMWideResNet blocks support stride 1 or 2, got {stride}")
        self.batchnorm_0 = nn.BatchNorm2d(in_planes)
        self.relu_0 = act()
        self.conv_0 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_planes)
        self.relu_1 = act()
        self.conv_1 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.has_shortcut = in_planes != out_planes
        self.shortcut: nn.Conv2d | None = (
            nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=0, bias=False)
            if self.has_shortcut
            else None
        )
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        act = self.relu_0(self.batchnorm_0(x))
        pad = (1, 1, 1, 1) if self.stride == 1 else (0, 1, 0, 1)
        out = self.conv_0(F.pad(act, pad))
        out = self.conv_1(self.relu_1(self.batchnorm_1(out)))
        if self.shortcut is None:
            return x + out
        return self.shortcut(act) + out


class _DMGroup(nn.Module):
    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.block = nn.Sequential(
            *[
                _DMBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, act)
                for i in range(n)
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class DMWideResNet(ImageClassifier):
    """RobustBench's ``DMWideResNet`` (Gowal et al. 2020), e.g. WRN-70-16 with Swish.

    ``depth = 6n + 4``; widths 16, 16w, 32w, 64w. CIFAR-10 mean/std applied inside (non-persistent
    buffers, as in the reference). ``padding`` > 0 zero-pads the input first. Mask layers:
    ``layer.{0,1,2}.block.{n-1}.relu_1`` and ``relu``.
    """

    def __init__(
        self,
        num_classes: int = 10,
        depth: int = 70,
        width: int = 16,
        activation: str = "swish",
        mean: Sequence[float] | None = CIFAR10_MEAN,
        std: Sequence[float] | None = CIFAR10_STD,
        padding: int = 0,
        num_input_channels: int = 3,
    ) -> None:
        if depth < 10 or (depth - 4) % 6:
            raise HetpureError(f"DMWideResNet depth must be 6n+4 (16, 28, 34, 70, 106, ...), got {depth}")
        if width < 1:
            raise HetpureError(f"width must be a positive integer, got {width}")
        act = _ACTIVATIONS.get(activation.lower())
        if act is None:
            raise HetpureError(f"unknown activation {activation!r}; choose one of {', '.join(_ACTIVATIONS)}")
        super().__init__(num_classes, num_input_channels, mean, std)
        n = (depth - 4) // 6
        ch = [16, 16 * width, 32 * width, 64 * width]
        self.padding = padding
        self.num_channels = ch[3]
        self.init_conv = nn.Conv2d(num_input_channels, ch[0], 3, stride=1, padding=1, bias=False)
        self.layer = nn.Sequential(
            _DMGroup(n, ch[0], ch[1], 1, act),
            _DMGroup(n, ch[1], ch[2], 2, act),
            _DMGroup(n, ch[2], ch[3], 2, act),
        )
        self.batchnorm = nn.BatchNorm2d(ch[3])
        self.relu = act()
        self.logits = nn.Linear(ch[3], num_classes)
        self.mask_layers = [f"layer.{g}.block.{n - 1}.relu_1" for g in range(3)] + ["relu"]

    @classmethod
    def from_config(cls, config: dict) -> DMWideResNet:
        """Build from RobustBench's constructor keywords (``activation_fn`` given as a class name)."""
        cfg = dict(config)
        if "activation_fn" in cfg:
            cfg["activation"] = str(cfg.pop("activation_fn"))
        return cls(**cfg)

    def forward(self, x: Tensor) -> Tensor:
        x = self.normalize(x)
        if self.padding > 0:
            x = F.pad(x, (self.padding,) * 4)
        out = self.layer(self.init_conv(x))
        out = self.relu(self.batchnorm(out))
        return self.logits(out.mean(dim=(2, 3)))


# --------------------------------------------------------------------------------------------------------
# MNIST CNN
# --------------------------------------------------------------------------------------------------------


def _conv_stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class MnistCNN(ImageClassifier):
    """Small CNN for 1x28x28 digits: three conv stages (28, 14, 7 pixels; 16, 32, 64 channels) with 2x2
    max-pooling between them, global average pooling and a linear layer. MNIST mean/std inside.
    Mask layers: ``stage1``, ``stage2``, ``stage3``.
    """

    def __init__(
        self,
        num_classes: int = 10,
        width: int = 16,
        mean: Sequence[float] | None = MNIST_MEAN,
        std: Sequence[float] | None = MNIST_STD,
    ) -> None:
        super().__init__(num_classes, 1, mean, std)
        self.stage1 = _conv_stage(1, width)
        self.pool1 = nn.MaxPool2d(2)
        self.stage2 = _conv_stage(width, 2 * width)
        self.pool2 = nn.MaxPool2d(2)
        self.stage3 = _conv_stage(2 * width, 4 * width)
        self.fc = nn.Linear(4 * width, num_classes)
        self.mask_layers = ["stage1", "stage2", "stage3"]

    def forward(self, x: Tensor) -> Tensor:
        out = self.pool1(self.stage1(self.normalize(x)))
        out = self.pool2(self.stage2(out))
        out = self.stage3(out)
        return self.fc(out.mean(dim=(2, 3)))


# --------------------------------------------------------------------------------------------------------
# Registry entries
# --------------------------------------------------------------------------------------------------------


def _register_cifar_resnet(depth: int) -> None:
    def factory(path: Path | None, trust_pickle: bool = False, num_classes: int = 10) -> nn.Module:
        return _load_weights(CifarResNet(depth, num_classes=num_classes), path, trust_pickle)

    factory.__doc__ = f"CIFAR ResNet-{depth} (He et al. 2016, option A), ImageNet mean/std inside"
    register_classifier(f"cifar_resnet{depth}", input_shape=(3, 32, 32), label_set="cifar10")(factory)


for _depth in (20, 32, 44, 56, 110):
    _register_cifar_resnet(_depth)


@register_classifier("wrn28_10", input_shape=(3, 32, 32), label_set="cifar10")
def _wrn28_10(
    path: Path | None,
    trust_pickle: bool = False,
    depth: int = 28,
    widen_factor: int = 10,
    num_classes: int = 10,
    sub_block1: bool = False,
    from_robustbench: bool = False,
    threat_model: str = "Linf",
    model_dir: str | Path = "./models",
) -> nn.Module:
    """WideResNet-28-10, RobustBench cifar10 "Standard" key layout, [0, 1] input without normalisation"""
    model = WideResNet(depth, widen_factor, num_classes=num_classes, sub_block1=sub_block1)
    if path is not None and from_robustbench:
        raise HetpureError("give either path= (a local checkpoint) or from_robustbench=True, not both")
    if from_robustbench:
        try:
            from robustbench.utils import load_model as rb_load_model
        except ImportError:
            raise HetpureError(
                "from_robustbench=True needs the robustbench package (pip install "
                "git+https://github.com/RobustBench/robustbench.git); or download the 'Standard' checkpoint "
                "yourself and pass path=<file>"
            ) from None
        try:
            ref = rb_load_model(
                model_name="Standard", model_dir=str(model_dir), dataset="cifar10", threat_model=threat_model
            )
        except Exception as exc:  # network or robustbench errors: say how to work offline
            raise HetpureError(
                f"robustbench could not provide the cifar10 'Standard' model ({type(exc).__name__}: {exc}). "
                "Offline? Copy the checkpoint file to this machine and pass path=<file>"
            ) from None
        load_into(model, ref.state_dict(), strict=True)
        model.weights_source = f"robustbench:cifar10/{threat_model}/Standard"
        return model
    return _load_weights(model, path, trust_pickle)


@register_classifier("wrn70_16", input_shape=(3, 32, 32), label_set="cifar10")
def _wrn70_16(
    path: Path | None,
    trust_pickle: bool = False,
    depth: int = 70,
    width: int = 16,
    num_classes: int = 10,
    activation: str = "swish",
) -> nn.Module:
    """DMWideResNet-70-16 (Swish), RobustBench/DiffPure key layout, CIFAR-10 mean/std inside"""
    model = DMWideResNet(num_classes=num_classes, depth=depth, width=width, activation=activation)
    return _load_weights(model, path, trust_pickle)


@register_classifier("mnist_cnn", input_shape=(1, 28, 28), label_set="mnist")
def _mnist_cnn(
    path: Path | None, trust_pickle: bool = False, width: int = 16, num_classes: int = 10
) -> nn.Module:
    """Small three-stage MNIST CNN (1x28x28 in), MNIST mean/std inside"""
    return _load_weights(MnistCNN(num_classes=num_classes, width=width), path, trust_pickle)


@register_classifier("resnet50", input_shape=(3, 224, 224), label_set="imagenet")
def _resnet50(path: Path | None, trust_pickle: bool = False, weights: str | None = None) -> nn.Module:
    """torchvision ImageNet ResNet-50 with ImageNet mean/std inside (needs torchvision)"""
    try:
        import torchvision
    except ImportError as exc:
        raise MissingDependencyError(
            "the resnet50 classifier needs torchvision, which is not installed: "
            "pip install 'hetpure[torchvision]' (or pip install torchvision)"
        ) from exc
    if path is not None and weights is not None:
        raise HetpureError(
            "give either path= (a local checkpoint) or weights= (torchvision weights), not both"
        )
    try:
        net = torchvision.models.resnet50(weights=weights)
    except Exception as exc:  # unknown weight names, download failures
        raise HetpureError(
            f"torchvision could not build resnet50(weights={weights!r}): {type(exc).__name__}: {exc}. "
            "Use weights='DEFAULT' online, or pass path=<local checkpoint>"
        ) from None
    _load_weights(net, path, trust_pickle)
    model = WrappedClassifier(
        net,
        ["layer1", "layer2", "layer3", "layer4"],
        IMAGENET_MEAN,
        IMAGENET_STD,
        num_classes=1000,
        in_channels=3,
    )
    if weights is not None:
        model.weights_source = f"torchvision:resnet50/{weights}"
    return model

"""RobustBench's DMWideResNet (WRN-70-16, Swish) with CIFAR-10 mean/std inside."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, HetpureError
from .classifier_base import CIFAR10_MEAN, CIFAR10_STD, ImageClassifier

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
            raise ConfigError(f"unknown activation {activation!r}; choose one of {', '.join(_ACTIVATIONS)}")
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

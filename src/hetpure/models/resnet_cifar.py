"""CIFAR ResNet-(6n+2) with option-A (parameter-free) shortcuts (He et al. 2016); ImageNet mean/std inside."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import HetpureError
from .classifier_base import IMAGENET_MEAN, IMAGENET_STD, ImageClassifier

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

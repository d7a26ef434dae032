"""RobustBench's WideResNet (cifar10 "Standard" = WRN-28-10), [0, 1] input without normalisation."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import HetpureError
from .classifier_base import ImageClassifier

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

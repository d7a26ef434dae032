"""Small building blocks shared by the ADM and NCSN++ re-implementations."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Float32GroupNorm(nn.GroupNorm):
    """GroupNorm that normalises in float32 and returns the input's dtype.

    For float32 inputs this is exactly ``nn.GroupNorm``. For float16/bfloat16 it avoids the loss of
    precision of half-precision statistics (guided-diffusion's ``GroupNorm32`` does the same).
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype in (torch.float32, torch.float64):
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


def param_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of a module's first floating-point parameter (float32 when it has none)."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32

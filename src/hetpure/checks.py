"""Input checks shared by every entry point: clear messages instead of deep torch errors."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .errors import HetpureError


def _min_max(x: Tensor) -> tuple[float, float]:
    """(min, max) of a tensor with one device-to-host copy; NaN propagates into both, ±inf into one."""
    d = x.detach()
    lo, hi = torch.stack((d.min(), d.max())).tolist()
    return float(lo), float(hi)


def check_images(x: object, channels: int | None = None, name: str = "x") -> Tensor:
    """Check a batch of images in [0, 1] of shape (B, C, H, W) and return it.

    Raises :class:`HetpureError` for a non-tensor, a wrong rank, a non-float dtype, NaN/inf values,
    values outside [0, 1] or a channel count that differs from ``channels``.
    """
    if not torch.is_tensor(x):
        raise HetpureError(f"{name} must be a torch.Tensor of images, got {type(x).__name__}")
    if x.dim() == 3:
        raise HetpureError(
            f"{name} has shape {tuple(x.shape)}: expected a batch (B, C, H, W); use {name}.unsqueeze(0) "
            "for a single image"
        )
    if x.dim() != 4:
        raise HetpureError(f"{name} must have shape (B, C, H, W), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise HetpureError(f"{name} is an empty batch")
    if not x.is_floating_point():
        raise HetpureError(
            f"{name} has dtype {x.dtype}: expected float images in [0, 1]; convert with {name}.float() / 255"
        )
    lo, hi = _min_max(x)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise HetpureError(f"{name} contains NaN or inf values; clean the input before purifying")
    if lo < -1e-6 or hi > 1 + 1e-6:
        hint = " (it looks like [-1, 1]: map it with (x + 1) / 2)" if lo < 0 and lo >= -1 - 1e-6 else ""
        hint = hint or (" (it looks like [0, 255]: divide by 255)" if hi > 1.5 else "")
        raise HetpureError(f"{name} has values in [{lo:.4g}, {hi:.4g}], outside [0, 1]{hint}")
    if channels is not None and x.shape[1] != channels:
        raise HetpureError(
            f"{name} has {x.shape[1]} channels but the diffusion model expects {channels}; "
            "use a model trained on images of this kind"
        )
    return x


def check_mask(mask: object, x: Tensor) -> Tensor:
    """Check a mask of shape (B, 1, H, W) (or broadcastable (1, 1, H, W)) with values in [0, 1]."""
    if not torch.is_tensor(mask):
        raise HetpureError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    b, _, h, w = x.shape
    if mask.dim() == 3:
        mask = mask.unsqueeze(1)
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[2:] != (h, w) or mask.shape[0] not in (1, b):
        raise HetpureError(f"mask must have shape ({b}, 1, {h}, {w}), got {tuple(mask.shape)}")
    lo, hi = _min_max(mask)
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0 or hi > 1:
        raise HetpureError("mask values must lie in [0, 1] (1 = attended pixel = high noise)")
    return mask.to(device=x.device, dtype=x.dtype)


def check_logit_batch(logits: object, x: Tensor) -> Tensor:
    """Check that a classifier returned (B, num_classes) logits for the B images of ``x``; return them."""
    if not torch.is_tensor(logits) or logits.dim() != 2 or logits.shape[0] != x.shape[0]:
        shape = tuple(logits.shape) if torch.is_tensor(logits) else type(logits).__name__
        raise HetpureError(
            f"the classifier must return (B, num_classes) logits for B = {x.shape[0]} images, got {shape}; "
            "wrap it so that forward returns the logits tensor"
        )
    return logits

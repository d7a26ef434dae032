"""Input checks shared by every entry point: clear messages instead of deep torch errors."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .errors import HetpureError, InputError, InputTypeError


def _min_max(x: Tensor) -> tuple[float, float]:
    """(min, max) of a tensor with one device-to-host copy; NaN propagates into both, ±inf into one."""
    d = x.detach()
    lo, hi = torch.stack((d.min(), d.max())).tolist()
    return float(lo), float(hi)


def check_images(x: object, channels: int | None = None, name: str = "x") -> Tensor:
    """Check a batch of images in [0, 1] of shape (B, C, H, W) and return it.

    Raises :class:`~hetpure.errors.InputError` (a ``ValueError``) for a wrong rank, a non-float dtype, a tensor
    without data (``meta``), NaN/inf values, values outside [0, 1] or a channel count that differs from
    ``channels``; :class:`~hetpure.errors.InputTypeError` for a non-tensor.
    """
    if not torch.is_tensor(x):
        raise InputTypeError(f"{name} must be a torch.Tensor of images, got {type(x).__name__}")
    if x.dim() == 3:
        raise InputError(
            f"{name} has shape {tuple(x.shape)}: expected a batch (B, C, H, W); use {name}.unsqueeze(0) "
            "for a single image"
        )
    if x.dim() != 4:
        raise InputError(f"{name} must have shape (B, C, H, W), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise InputError(f"{name} is an empty batch")
    if x.device.type == "meta":
        raise InputError(f"{name} is a meta tensor (a shape without data); pass real images, e.g. on "
                         f"device='cpu' or 'cuda'")
    if not x.is_floating_point():
        raise InputError(
            f"{name} has dtype {x.dtype}: expected float images in [0, 1]; convert with {name}.float() / 255"
        )
    lo, hi = _min_max(x)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise InputError(f"{name} contains NaN or inf values; clean the input before purifying")
    if lo < -1e-6 or hi > 1 + 1e-6:
        hint = " (it looks like [-1, 1]: map it with (x + 1) / 2)" if lo < 0 and lo >= -1 - 1e-6 else ""
        hint = hint or (" (it looks like [0, 255]: divide by 255)" if hi > 1.5 else "")
        raise InputError(f"{name} has values in [{lo:.4g}, {hi:.4g}], outside [0, 1]{hint}")
    if channels is not None and x.shape[1] != channels:
        raise InputError(
            f"{name} has {x.shape[1]} channels but the diffusion model expects {channels}; "
            "use a model trained on images of this kind"
        )
    return x


def check_mask(mask: object, x: Tensor) -> Tensor:
    """Check a mask of shape (B, 1, H, W) (or broadcastable (1, 1, H, W)) with values in [0, 1]."""
    if not torch.is_tensor(mask):
        raise InputTypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    b, _, h, w = x.shape
    if mask.device.type == "meta":
        raise InputError("mask is a meta tensor (a shape without data); pass real values in [0, 1]")
    if mask.dim() == 3:
        mask = mask.unsqueeze(1)
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[2:] != (h, w) or mask.shape[0] not in (1, b):
        raise InputError(f"mask must have shape ({b}, 1, {h}, {w}), got {tuple(mask.shape)}")
    lo, hi = _min_max(mask)
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0 or hi > 1:
        raise InputError("mask values must lie in [0, 1] (1 = attended pixel = high noise)")
    return mask.to(device=x.device, dtype=x.dtype)


def check_logit_batch(logits: object, x: Tensor, images: str | None = None, finite: bool = True) -> Tensor:
    """Check that a classifier returned finite (N, num_classes) logits for the N images of ``x``; return them.

    ``images`` says what those N images are, for the message (e.g. ``"4 purified copies (2 runs × 2 images)"``);
    by default "N images". Non-finite logits (NaN, ±inf) would make every argmax class 0: they are refused
    (``finite=False`` skips that check, which syncs the device: the attacks' differentiated forward passes).
    """
    n = x.shape[0]
    what = images or f"{n} images"
    if not torch.is_tensor(logits) or logits.dim() != 2 or logits.shape[0] != n:
        shape = tuple(logits.shape) if torch.is_tensor(logits) else type(logits).__name__
        raise HetpureError(
            f"the classifier must return (N, num_classes) logits for N = {what}, got {shape}; "
            "wrap it so that forward returns the logits tensor"
        )
    if finite and logits.is_floating_point() and not bool(torch.isfinite(logits).all()):
        raise HetpureError(
            f"the classifier returned NaN or infinite logits for {what}; a vote over them would say class 0 "
            "for every image. Check the classifier (and a float16/bfloat16 ε-model: use dtype float32)"
        )
    return logits

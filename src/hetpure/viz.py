"""Figures with Pillow only: labelled image grids (rows of images in [0, 1])."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor


def to_uint8(x: Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] → (H, W, 3) uint8 (grey images are repeated to RGB)."""
    x = x.detach().float().cpu().clamp(0, 1)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return (x.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def save_grid(rows: dict[str, Tensor], path: str | Path, scale: int = 3, label_width: int | None = None) -> Path:
    """Save a grid: one labelled row per entry of ``rows`` (each (N, C, H, W) in [0, 1]).

    ``label_width`` (pixels) defaults to the width of the longest label.
    """
    tensors = list(rows.values())
    n = max(t.shape[0] for t in tensors)
    h, w = tensors[0].shape[-2] * scale, tensors[0].shape[-1] * scale
    pad = 2
    if label_width is None:
        measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        label_width = 8 + max(int(measure.textlength(name)) for name in rows)
    canvas = Image.new("RGB", (label_width + n * (w + pad), len(rows) * (h + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (name, batch) in enumerate(rows.items()):
        top = r * (h + pad)
        draw.text((4, top + h // 2 - 6), name, fill="black")
        for i in range(batch.shape[0]):
            tile = Image.fromarray(to_uint8(batch[i])).resize((w, h), Image.NEAREST)
            canvas.paste(tile, (label_width + i * (w + pad), top))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def level_map_image(levels: Tensor) -> Tensor:
    """Per-pixel noise levels (B, 1, H, W) in [0, 1] → a blue-to-red colour map (B, 3, H, W)."""
    v = levels.clamp(0, 1)
    return torch.cat([v, 0.2 * torch.ones_like(v), 1 - v], dim=1)

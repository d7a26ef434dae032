"""Image folder trees: ``root/<class>/<image>`` (optionally under a split folder)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError, describe_missing
from .base import _SPLIT_NAMES, IMAGE_EXTENSIONS, ImageDataset, _to_float

_UNREADABLE_FIX = "fix: re-save it as PNG or JPEG, or move it out of the data folder"

# --------------------------------------------------------------------------------------------------------
# Image folder trees (generic, ImageNet)
# --------------------------------------------------------------------------------------------------------


def _pair(v: int | Sequence[int], what: str) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        pair = (int(v), int(v))
    elif isinstance(v, Sequence) and len(v) == 2 and all(isinstance(e, (int, np.integer)) for e in v):
        pair = (int(v[0]), int(v[1]))
    else:
        raise DataError(f"{what} must be an int or a (height, width) pair, got {v!r}")
    if min(pair) < 1:
        raise DataError(f"{what} must be positive, got {v!r}")
    return pair


class ImageFolderDataset(ImageDataset):
    """Images in ``root/<class>/<image>`` (or ``root/<split>/<class>/<image>`` when that folder exists).

    Labels are the positions of the class folders in sorted order. Items are listed folder by folder (sorted
    names), files in sorted name order, which fixes ``indices``. Images are decoded lazily with Pillow.

    Args:
        root: the tree. If ``root/<split>`` exists it is used; otherwise ``root`` itself must hold the class
            folders (and must not hold other split folders such as ``train``/``val``).
        split: subfolder name; ``None`` uses ``root`` directly.
        resize: int -> shorter side to this size (aspect kept); (h, w) -> exactly that size. Bilinear.
        center_crop: int or (h, w) crop taken from the centre after resizing.
        mode: Pillow mode, ``"RGB"`` (3 channels) or ``"L"`` (1 channel).
        transform: optional callable applied to each image tensor.
    """

    def __init__(
        self,
        root: str | Path,
        split: str | None = "test",
        resize: int | Sequence[int] | None = None,
        center_crop: int | Sequence[int] | None = None,
        mode: str = "RGB",
        transform: Callable[[Tensor], Tensor] | None = None,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        name: str = "imagefolder",
        class_names: Sequence[str] | None = None,
    ) -> None:
        if mode not in ("RGB", "L"):
            raise DataError(f"mode must be 'RGB' or 'L', got {mode!r}")
        self.resize = (
            None if resize is None else (int(resize) if isinstance(resize, int) else _pair(resize, "resize"))
        )
        if isinstance(self.resize, int) and self.resize < 1:
            raise DataError(f"resize must be positive, got {resize!r}")
        self.center_crop = None if center_crop is None else _pair(center_crop, "center_crop")
        self.mode = mode
        folder = self._split_folder(Path(root).expanduser(), split, name)
        exts = tuple(e.lower() for e in extensions)
        classes = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise DataError(
                f"no class folders in {folder}: expected {folder}/<class name>/<image files> "
                "(one folder per class, sorted names = labels)"
            )
        self.folder = folder
        self.samples: list[tuple[str, int]] = []
        files_of = {
            cls: sorted(e.name for e in os.scandir(folder / cls)
                        if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(exts))
            for cls in classes
        }
        if class_names is not None:  # the model's classes: label = position of the folder's name among them
            classes = [c for c in classes if files_of[c]]  # an empty folder holds no label to shift
            known = {str(c).lower(): i for i, c in enumerate(class_names)}
            unknown = [c for c in classes if c.lower() not in known]
            if unknown:
                raise DataError(
                    f"{name}: class folders {', '.join(unknown[:5])} in {folder} are not classes of the model "
                    f"({', '.join(map(str, class_names[:10]))}{', …' if len(class_names) > 10 else ''}); "
                    "rename the folders to the model's class names, or use a classifier trained on these classes"
                )
            label_order = list(class_names)
            label_of = {c: known[c.lower()] for c in classes}
        else:
            empty = [c for c in classes if not files_of[c]]
            if empty and len(empty) < len(classes):
                raise DataError(
                    f"{name}: class folder(s) {', '.join(empty[:5])} in {folder} hold no images; labels are the "
                    "positions of the sorted class folders, so an empty folder would shift the labels — remove it"
                )
            label_order = self._label_order(classes)
            label_of = {cls: i for i, cls in enumerate(label_order)}
        for cls in classes:  # sorted folder names fix the item order, whatever the label order
            cdir = folder / cls
            self.samples.extend((str(cdir / f), label_of[cls]) for f in files_of[cls])
        if not self.samples:
            raise DataError(
                f"no images found in the class folders of {folder} (looked for {', '.join(exts)} files in "
                f"{folder}/<class>/)"
            )
        super().__init__(name, split or "", label_order, len(self.samples), transform)

    def _label_order(self, found: list[str]) -> list[str]:
        """Class names in label order (sorted folder names; ImageNet may use a fixed list instead)."""
        return found

    @staticmethod
    def _split_folder(root: Path, split: str | None, name: str) -> Path:
        if not root.is_dir():
            why = "is a file, not a folder" if root.is_file() else describe_missing(root)
            raise DataError(
                f"{name}: folder {root} {why}; expected a tree root/<class>/<image> "
                "(optionally root/<split>/<class>/<image>)"
            )
        if split is None or (root / split).is_dir():
            return root if split is None else root / split
        present = sorted(s for s in _SPLIT_NAMES if (root / s).is_dir())
        if present:
            raise DataError(
                f"{name}: split {split!r} not found: {root / split} does not exist; available splits under "
                f"{root}: {', '.join(present)}"
            )
        return root

    def _load(self, index: int) -> Tensor:
        from PIL import Image, UnidentifiedImageError

        path = self.samples[index][0]
        try:
            with Image.open(path) as im:
                im = im.convert(self.mode)
                im = self._resize_crop(im, path)
                arr = np.array(im, dtype=np.uint8)
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
            raise DataError(f"could not read image {path}: {exc}; {_UNREADABLE_FIX}") from exc
        if arr.ndim == 2:
            arr = arr[:, :, None]
        return _to_float(torch.from_numpy(arr).permute(2, 0, 1).contiguous())

    def _resized(self, w: int, h: int) -> tuple[int, int]:
        """(width, height) of a w×h image after ``resize`` (before the crop)."""
        if self.resize is None:
            return w, h
        if isinstance(self.resize, int):
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = self.resize, int(self.resize * long / short)
            return (new_short, new_long) if w <= h else (new_long, new_short)
        return self.resize[1], self.resize[0]

    def _check_crop(self, w: int, h: int, path: str) -> None:
        if self.center_crop is not None and (self.center_crop[0] > h or self.center_crop[1] > w):
            ch, cw = self.center_crop
            raise DataError(
                f"image {path} is {h}x{w}, smaller than the center crop {ch}x{cw}; set resize= to at "
                "least the crop size"
            )

    def image_shapes(self) -> dict[tuple[int, int, int], list[str]]:
        """The (C, H, W) each selected item will have, with the files of each shape, read from the files'
        headers (no resampling), every file decoded once so that a corrupt one is named now, not mid-run.

        Raises :class:`~hetpure.errors.DataError` naming a file that cannot be read, or one smaller than the
        center crop. With a ``transform`` the shapes are not known from the headers: every file is still
        decoded, and the shape of the first item stands for all.
        """
        from PIL import Image, UnidentifiedImageError

        channels = 1 if self.mode == "L" else 3
        shapes: dict[tuple[int, int, int], list[str]] = {}
        for j in self.indices:
            path = self.samples[j][0]
            try:
                with Image.open(path) as im:
                    w, h = im.size
                    im.load()  # decode: a truncated or corrupt file fails here, before any model work
            except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
                raise DataError(f"cannot read image {path}: {exc}; {_UNREADABLE_FIX}") from exc
            w, h = self._resized(w, h)
            self._check_crop(w, h, path)
            if self.center_crop is not None:
                h, w = self.center_crop
            shapes.setdefault((channels, h, w), []).append(path)
        if self.transform is not None:
            return {tuple(self[0][0].shape): [self.samples[j][0] for j in self.indices]}  # type: ignore[dict-item]
        return shapes

    def _resize_crop(self, im: Any, path: str) -> Any:
        from PIL import Image

        if self.resize is not None:
            w, h = im.size
            size = self._resized(w, h)
            if size != (w, h):
                im = im.resize(size, Image.BILINEAR)
        if self.center_crop is not None:
            ch, cw = self.center_crop
            w, h = im.size
            self._check_crop(w, h, path)
            top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
            im = im.crop((left, top, left + cw, top + ch))
        return im

    def _label(self, index: int) -> int:
        return self.samples[index][1]

    def path_of(self, i: int) -> str:
        """File path of item ``i`` of this view."""
        return self.samples[self._position(i)][0]

"""The dataset base class: a split of float images in [0, 1] (C, H, W) with int labels and class names;
seeded subsets; shared constants and helpers."""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import DataError, InputError

MNIST_CLASSES: list[str] = [str(d) for d in range(10)]
CIFAR10_CLASSES: list[str] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".webp",
    ".ppm",
    ".pgm",
    ".tif",
    ".tiff",
)

_SPLIT_NAMES = ("train", "test", "val", "valid", "validation", "extra")


def default_data_root() -> Path:
    """Where datasets live when ``root`` is not given: ``$HETPURE_DATA`` or ``~/.cache/hetpure/data``."""
    env = os.environ.get("HETPURE_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hetpure" / "data"


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _to_float(img: Tensor) -> Tensor:
    return img.to(torch.float32).div_(255.0)


# --------------------------------------------------------------------------------------------------------
# Base class
# --------------------------------------------------------------------------------------------------------


class ImageDataset(Dataset):
    """A split of an image data set, possibly restricted to a selection of its items.

    Attributes:
        name: data set name (``"cifar10"``, ...).
        split: the split it was loaded from.
        classes: class names in label order.
        indices: for each item of this view, its position in the underlying split.
        transform: optional callable applied to each (C, H, W) float image.
    """

    def __init__(
        self,
        name: str,
        split: str,
        classes: Sequence[str],
        num_items: int,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        if num_items == 0:
            raise DataError(f"the {name} {split!r} split is empty")
        self.name = name
        self.split = split
        self.classes = list(classes)
        self.indices: list[int] = list(range(num_items))
        self.transform = transform

    # subclasses implement these two, addressed by position in the underlying split
    def _load(self, index: int) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _label(self, index: int) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.indices)

    def _position(self, i: int) -> int:
        n = len(self.indices)
        if not isinstance(i, (int, np.integer)) or isinstance(i, bool):
            raise TypeError(f"{type(self).__name__} indices must be integers, not {type(i).__name__}")
        if i < -n or i >= n:
            raise IndexError(f"index {i} out of range for a dataset of {n} items")
        return self.indices[int(i)]

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        j = self._position(i)
        img = self._load(j)
        if self.transform is not None:
            img = self.transform(img)
        return img, self._label(j)

    def get_with_index(self, i: int) -> tuple[Tensor, int, int]:
        """``(image, label, index)`` with ``index`` the position in the underlying split."""
        img, label = self[i]
        return img, label, self._position(i)

    def original_index(self, i: int) -> int:
        """Position in the underlying split of item ``i`` of this view."""
        return self._position(i)

    @property
    def targets(self) -> list[int]:
        """Labels of the items of this view, in order (cheap: no image is decoded)."""
        return [self._label(j) for j in self.indices]

    def with_indices(self, indices: Sequence[int]) -> ImageDataset:
        """A view of this dataset's items ``indices`` (positions in this view)."""
        picked = [self._position(int(i)) for i in indices]
        if not picked:
            raise DataError("cannot make an empty selection of a dataset")
        view = copy.copy(self)
        view.indices = picked
        return view

    def subset(self, n: int, seed: int = 0) -> ImageDataset:
        """``n`` distinct items drawn uniformly with ``RandomState(seed).permutation(len(self))[:n]``."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise DataError(f"n must be a positive integer (the number of images to draw), got {n!r}")
        if n > len(self):
            raise DataError(
                f"asked for n={n} random images but the {self.name} {self.split!r} split has only "
                f"{len(self)}; "
                f"use n <= {len(self)} or n=None for all of them"
            )
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
            raise InputError(f"seed must be a whole number from 0 to 2**32 - 1 (the seed of NumPy's RandomState "
                             f"draw), got {seed!r}; fix: seed=0")
        perm = np.random.RandomState(int(seed)).permutation(len(self))[: int(n)]
        return self.with_indices(perm.tolist())

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, items={len(self)}, "
            f"classes={len(self.classes)})"
        )


class _ArrayDataset(ImageDataset):
    """Images held in memory as a uint8 tensor (N, C, H, W) with int64 labels (N,)."""

    def __init__(
        self,
        name: str,
        split: str,
        classes: Sequence[str],
        images: Tensor,
        labels: Tensor,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__(name, split, classes, int(images.shape[0]), transform)
        self.images = images
        self.labels = labels

    def _load(self, index: int) -> Tensor:
        return _to_float(self.images[index])

    def _label(self, index: int) -> int:
        return int(self.labels[index])

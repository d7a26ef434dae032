"""SVHN cropped digits from the official ``{train,test,extra}_32x32.mat`` files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError, MissingDependencyError
from .base import _ArrayDataset

# --------------------------------------------------------------------------------------------------------
# SVHN (official .mat files)
# --------------------------------------------------------------------------------------------------------


class SvhnDataset(_ArrayDataset):
    """SVHN cropped digits from the official ``{train,test,extra}_32x32.mat`` files.

    ``X`` is (32, 32, 3, N) uint8 and ``y`` (N, 1) with digit 0 stored as label 10, which is mapped to 0.
    ``root`` holds the .mat files (directly or in an ``svhn/`` subfolder). Needs scipy.
    """

    def __init__(
        self, root: str | Path, split: str = "test", transform: Callable[[Tensor], Tensor] | None = None
    ) -> None:
        if split not in ("train", "test", "extra"):
            raise DataError(f"SVHN split must be 'train', 'test' or 'extra', got {split!r}")
        root = Path(root).expanduser()
        fname = f"{split}_32x32.mat"
        path = next((p for p in (root / fname, root / "svhn" / fname) if p.is_file()), None)
        if path is None:
            raise DataError(
                f"SVHN file {root / fname} not found. Download {fname} from "
                "http://ufldl.stanford.edu/housenumbers/ and pass root=<folder holding it>"
            )
        try:
            from scipy.io import loadmat
        except ImportError as exc:
            raise MissingDependencyError(
                "reading SVHN .mat files needs scipy: pip install 'hetpure[data]' (or pip install scipy)"
            ) from exc
        try:
            mat = loadmat(str(path))
        except Exception as exc:  # scipy raises several types for bad files
            raise DataError(
                f"could not read {path} as a MATLAB file: {type(exc).__name__}: {exc}"
            ) from exc
        x, y = mat.get("X"), mat.get("y")
        if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
            raise DataError(
                f"{path}: 'X' must be an array (32, 32, 3, N), got {getattr(x, 'shape', None)}"
            )
        n = x.shape[3]
        if not isinstance(y, np.ndarray) or y.size != n:
            raise DataError(f"{path}: 'y' must hold {n} labels, got {getattr(y, 'shape', None)}")
        labels = y.reshape(-1).astype(np.int64)
        if labels.min() < 0 or labels.max() > 10:
            raise DataError(
                f"{path}: labels must be in 0..10 (10 = digit 0), got {labels.min()}..{labels.max()}"
            )
        labels[labels == 10] = 0
        if x.dtype != np.uint8:
            if x.min() < 0 or x.max() > 255:
                raise DataError(
                    f"{path}: 'X' must hold 8-bit pixel values, got range {x.min()}..{x.max()}"
                )
            x = x.astype(np.uint8)
        images = torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1)))
        super().__init__(
            "svhn", split, [str(d) for d in range(10)], images, torch.from_numpy(labels), transform
        )
        self.root = path.parent

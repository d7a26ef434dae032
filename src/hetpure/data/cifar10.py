"""CIFAR-10 from the official python batches (MD5-checked, array-only unpickling, offline paths)."""

from __future__ import annotations

import importlib.util
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError, DownloadError, HetpureError
from .base import CIFAR10_CLASSES, _ArrayDataset, _md5

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_TAR_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_DIR = "cifar-10-batches-py"
#: Official MD5 of every file in ``cifar-10-batches-py``.
CIFAR10_FILE_MD5: dict[str, str] = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}

# --------------------------------------------------------------------------------------------------------
# CIFAR-10 (official python batches)
# --------------------------------------------------------------------------------------------------------


_NUMPY_HAS_CORE = importlib.util.find_spec("numpy._core") is not None


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can only rebuild NumPy arrays (plus builtin containers, which need no class)."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def __init__(self, file: Any, source: Path) -> None:
        super().__init__(file, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        # The official batches (and NumPy 1.x pickles) say numpy.core; NumPy 2 calls it numpy._core.
        canonical = (
            "numpy._core." + module[len("numpy.core.") :] if module.startswith("numpy.core.") else module
        )
        if (canonical, name) not in self._ALLOWED:
            raise DataError(
                f"refusing to unpickle {self.source}: it references {module}.{name}, but CIFAR-10 "
                "batches hold only NumPy arrays and lists. The file is not a CIFAR-10 batch "
                "(or was tampered with)"
            )
        if canonical.startswith("numpy._core.") and not _NUMPY_HAS_CORE:
            canonical = "numpy.core." + canonical[len("numpy._core.") :]
        return super().find_class(canonical, name)


def _read_cifar_pickle(path: Path, verify: bool) -> dict[str, Any]:
    if verify:
        expected = CIFAR10_FILE_MD5.get(path.name)
        if expected is None:
            raise DataError(f"{path.name} is not one of the official CIFAR-10 batch files")
        got = _md5(path)
        if got != expected:
            raise DataError(
                f"checksum mismatch for {path}: md5 {got}, expected the official {expected}. The file is "
                "corrupted or not the official CIFAR-10 batch; delete it and download again "
                "(verify_checksums=False is only for synthetic test files)"
            )
    try:
        with path.open("rb") as f:
            obj = _ArraysOnlyUnpickler(f, path).load()
    except HetpureError:
        raise
    except Exception as exc:  # truncated or not a pickle at all
        raise DataError(
            f"could not read {path} as a CIFAR-10 python batch: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, not a CIFAR-10 batch dict")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _safe_extract_cifar(tar_path: Path, dest: Path) -> None:
    """Extract only the known CIFAR-10 members (no links, no paths outside ``dest``)."""
    wanted = {f"{CIFAR10_DIR}/{name}" for name in CIFAR10_FILE_MD5}
    out_dir = dest / CIFAR10_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    found = set()
    try:
        with tarfile.open(tar_path, "r:gz") as tar:
            for member in tar:
                name = member.name.lstrip("./")
                if name not in wanted or not member.isfile():
                    continue
                src = tar.extractfile(member)
                if src is None:
                    continue
                tmp = out_dir / (Path(name).name + ".part")
                with src, tmp.open("wb") as f:
                    shutil.copyfileobj(src, f)
                tmp.replace(out_dir / Path(name).name)
                found.add(name)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"could not extract {tar_path}: {exc}; delete it and download again") from exc
    missing = sorted(wanted - found)
    if missing:
        raise DataError(f"{tar_path} lacks the CIFAR-10 files {', '.join(missing)}")


def _download(url: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, suffix=".part")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, tmp.open("wb") as f:
            shutil.copyfileobj(resp, f)
        tmp.replace(dest)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise DownloadError(
            f"could not download {url} ({exc}). Offline? Fetch cifar-10-python.tar.gz elsewhere, copy it (or "
            f"its extracted {CIFAR10_DIR} folder) to a folder here and pass root=<that folder>"
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)


class Cifar10Dataset(_ArrayDataset):
    """CIFAR-10 from the official python batches (``cifar-10-batches-py``).

    Args:
        root: a folder holding ``cifar-10-batches-py/`` (or that folder itself), or
            ``cifar-10-python.tar.gz``, which is verified (MD5) and extracted there.
        split: ``"train"`` (50,000 images, data_batch_1..5) or ``"test"`` (10,000, test_batch).
        download: fetch the archive from :data:`CIFAR10_URL` when nothing is found under ``root``.
        verify_checksums: check every file against the official MD5 before unpickling. Set to False only
            for synthetic test files; even then the unpickler builds nothing but arrays.
        transform: optional callable applied to each image tensor.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "test",
        download: bool = False,
        verify_checksums: bool = True,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        if split not in ("train", "test"):
            raise DataError(f"CIFAR-10 split must be 'train' or 'test', got {split!r}")
        root = Path(root).expanduser()
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        base = self._find(root, files)
        if base is None:
            tar = root / "cifar-10-python.tar.gz"
            if not tar.exists() and download:
                _download(CIFAR10_URL, tar)
            if not tar.exists():
                raise DataError(
                    f"CIFAR-10 not found under {root}: expected {root / CIFAR10_DIR}/{files[0]} "
                    f"(the official python batches) or {tar}. Pass root=<folder holding {CIFAR10_DIR} "
                    f"or the tar.gz>, or download=True to fetch {CIFAR10_URL} (md5 {CIFAR10_TAR_MD5})"
                )
            if verify_checksums and _md5(tar) != CIFAR10_TAR_MD5:
                raise DataError(
                    f"checksum mismatch for {tar}: it is not the official cifar-10-python.tar.gz "
                    f"(md5 {CIFAR10_TAR_MD5}); delete it and download again"
                )
            _safe_extract_cifar(tar, root)
            base = root / CIFAR10_DIR
        images, labels = [], []
        for name in files:
            batch = _read_cifar_pickle(base / name, verify_checksums)
            data, lab = batch.get("data"), batch.get("labels")
            if (
                not isinstance(data, np.ndarray)
                or data.ndim != 2
                or data.shape[1] != 3072
                or data.dtype != np.uint8
            ):
                got = getattr(data, "shape", type(data).__name__)
                raise DataError(f"{base / name}: 'data' must be a uint8 array (N, 3072), got {got}")
            lab_arr = np.asarray(lab, dtype=np.int64) if lab is not None else None
            if lab_arr is None or lab_arr.shape != (data.shape[0],) or lab_arr.min() < 0 or lab_arr.max() > 9:
                raise DataError(f"{base / name}: 'labels' must be {data.shape[0]} ints in 0..9")
            images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))
            labels.append(torch.from_numpy(lab_arr))
        classes = CIFAR10_CLASSES
        meta = base / "batches.meta"
        if meta.exists():
            names = _read_cifar_pickle(meta, verify_checksums).get("label_names")
            if isinstance(names, list) and len(names) == 10:
                classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        super().__init__("cifar10", split, classes, torch.cat(images), torch.cat(labels), transform)
        self.root = base

    @staticmethod
    def _find(root: Path, files: list[str]) -> Path | None:
        for cand in (root / CIFAR10_DIR, root):
            if all((cand / f).is_file() for f in files):
                return cand
        return None

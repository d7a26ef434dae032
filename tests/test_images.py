"""Image files for purify and predict (:mod:`hetpure.images`), and the input checks made before any model work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hetpure.catalog import catalog, check_names, format_catalog
from hetpure.errors import HetpureError
from hetpure.images import check_images_fit, find_images, read_image, write_image, write_mask
from hetpure.predict import check_output_file, predict_images, purify_images

CONFIG = {  # models that do not exist: every check below must fail before they are loaded
    "classifier": {"name": "cifar_resnet20", "path": "/nowhere/model.safetensors"},
    "diffusion": {"kind": "diffusers", "path": "/nowhere/ddpm"},
    "defense": {"method": "heterogeneous", "ddim_steps": 10, "runs": 2},
    "run": {"progress": False},
}


def save(path: Path, size: tuple[int, int] = (32, 32), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8), "RGBA").convert(mode).save(path)
    return path


def test_find_images_recurses_sorted_and_skips_masks_hidden_files_and_the_output(tmp_path: Path) -> None:
    for name in ("b/x.png", "a.jpg", "b/c/y.webp", "b/x.mask.png", ".hidden.png", ".git/z.png", "out/o.png"):
        save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    assert [f.relative for f in find_images(tmp_path, exclude=tmp_path / "out")] == ["a.jpg", "b/c/y.webp", "b/x.png"]
    assert [f.relative for f in find_images(tmp_path / "a.jpg")] == ["a.jpg"]
    assert find_images(tmp_path / "b" / "c" / "y.webp")[0].stem == "y"
    with pytest.raises(HetpureError, match="is not an image file"):
        find_images(tmp_path / "notes.txt")
    with pytest.raises(HetpureError, match="does not exist"):
        find_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HetpureError, match="no images in"):
        find_images(tmp_path / "empty")


def test_modes_are_converted_with_a_note_and_sizes_checked(tmp_path: Path) -> None:
    x, note = read_image(save(tmp_path / "g.png", mode="L"), 3)
    assert x.shape == (3, 32, 32) and note == "grayscale converted to RGB" and torch.equal(x[0], x[2])
    assert "alpha channel dropped" in read_image(save(tmp_path / "a.png", mode="RGBA"), 3)[1]
    assert read_image(save(tmp_path / "c.png"), 1)[0].shape == (1, 32, 32)
    assert read_image(tmp_path / "c.png", 3)[1] is None
    big = find_images(save(tmp_path / "big.png", (64, 48)))
    assert check_images_fit(big, (32, 32), "classifier c")[0].size == (48, 64)
    with pytest.raises(HetpureError, match=r"is 48×64 but classifier c takes 32×32; fix: --set defense.resize=true"):
        check_images_fit(big, (32, 32), "classifier c", resize=False)
    with pytest.raises(HetpureError, match="is 48×64, smaller than the 64×64"):
        check_images_fit(big, (64, 64), "classifier c")


def test_written_images_and_graded_masks_round_trip(tmp_path: Path) -> None:
    x = torch.rand(3, 8, 8)
    write_image(x, tmp_path / "a" / "x.png")
    back, _ = read_image(tmp_path / "a" / "x.png", 3)
    assert (back - x).abs().max() <= 0.5 / 255 + 1e-6
    w = torch.tensor([[0.0, 0.5], [1.0, 0.25]])[None]
    write_mask(w, tmp_path / "m.png", size=(4, 4))
    m = np.asarray(Image.open(tmp_path / "m.png"))
    assert m.shape == (4, 4) and m[0, 0] == 0 and m[0, 3] == 128 and m[3, 0] == 255 and m[3, 3] == 64
    assert not list(tmp_path.glob(".*tmp*"))


def test_purify_and_predict_refuse_bad_input_before_loading_a_model(tmp_path: Path) -> None:
    save(tmp_path / "in" / "a.jpg")
    save(tmp_path / "in" / "a.png")
    with pytest.raises(HetpureError, match="a.jpg and a.png would both be written as a.png"):
        purify_images(CONFIG, tmp_path / "in", tmp_path / "out")
    with pytest.raises(HetpureError, match="defense.method none purifies nothing"):
        purify_images(CONFIG, tmp_path / "in", tmp_path / "out", {"defense": {"method": "none"}})
    save(tmp_path / "big" / "b.png", (40, 40))
    with pytest.raises(HetpureError, match="defense.resize=true"):
        predict_images(CONFIG, tmp_path / "big")
    with pytest.raises(HetpureError, match="use a .jsonl or a .csv file"):
        predict_images(CONFIG, tmp_path / "in", tmp_path / "rows.txt")
    assert check_output_file(tmp_path / "rows.CSV") == tmp_path / "rows.CSV"
    with pytest.raises(HetpureError, match="unknown classifier 'resnet20' \\(did you mean"):
        predict_images({**CONFIG, "classifier": {"name": "resnet20"}}, tmp_path / "in")
    with pytest.raises(HetpureError, match="unknown preset 'cifar10-scorsde' \\(did you mean cifar10-scoresde"):
        predict_images({**CONFIG, "preset": "cifar10-scorsde"}, tmp_path / "in")
    with pytest.raises(HetpureError, match="unknown dataset 'imagefoldr' \\(did you mean imagefolder"):
        check_names({"classifier": {"name": "cifar_resnet20"}, "data": {"name": "imagefoldr"}})


def test_catalog_lists_each_category() -> None:
    entries = catalog("attacks")
    assert list(entries) == ["attacks"] and ("pgd", entries["attacks"][2][1]) in entries["attacks"]
    assert all(text for _, text in entries["attacks"])
    text = format_catalog(catalog("eps-models"))
    assert text.startswith("eps-models:") and "ncsnpp" in text and "adm" in text
    with pytest.raises(HetpureError, match="did you mean presets"):
        catalog("preset")

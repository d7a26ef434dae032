"""``hetpure purify`` into one output folder with settings A, then B, then A: the images on disk decide what is
done (the newest log line per file, and the SHA-256 of the written files), never an older line of the same
settings. The folder's lock and write errors speak purify's OUTDIR argument."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import config
from PIL import Image
from safetensors.torch import save_file

import hetpure
from hetpure import cli
from hetpure.errors import RecordsError
from hetpure.evaluation.records import RunLock
from hetpure.predict import purify_images


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def settings(assets: Path, t_l: float) -> dict:
    """Fixed weights (a classifier without weights would be initialised at random on every run)."""
    weights = assets / "resnet20.safetensors"
    if not weights.exists():
        save_file(hetpure.load_classifier("cifar_resnet20").state_dict(), weights)
    cfg = config(assets, assets / "unused", classifier={"path": str(weights)},
                 defense={"t_l": t_l, "ddim_steps": 10, "runs": 1, "resize": True})
    cfg["run"]["batch_size"] = 3
    return cfg


def pixels(folder: Path) -> dict[str, bytes]:
    return {p.name: np.asarray(Image.open(p)).tobytes() for p in sorted(folder.glob("*.png"))}


def test_settings_a_then_b_then_a_rewrites_the_images(assets: Path, inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    a, b = settings(assets, 0.2), settings(assets, 0.4)
    first = purify_images(a, inputs, out, progress=False)
    assert (first["written"], first["skipped"]) == (3, 0)
    images_a = pixels(out)
    second = purify_images(b, inputs, out, progress=False)
    assert (second["written"], second["skipped"]) == (3, 0)
    images_b = pixels(out)
    assert images_b != images_a  # the images on disk are B's now
    third = purify_images(a, inputs, out, progress=False)
    assert (third["written"], third["skipped"]) == (3, 0), "A's old log lines must not count: the files are B's"
    assert pixels(out) == images_a  # the same settings and seed give A's images again
    again = purify_images(a, inputs, out, progress=False)
    assert (again["written"], again["skipped"]) == (0, 3)
    log = [json.loads(line) for line in (out / "purify.jsonl").read_text().splitlines()]
    assert len(log) == 9 and all(len(r["image_sha256"]) == 64 for r in log)


def _strip_digests(log: Path) -> None:
    """Make purify.jsonl look like one written before the lines recorded the outputs' SHA-256."""
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    log.write_text("".join(json.dumps({k: v for k, v in r.items() if not k.endswith("_sha256")}) + "\n"
                           for r in rows))


def test_without_digests_the_newest_line_decides(assets: Path, inputs: Path, tmp_path: Path) -> None:
    """A log of an older hetpure (no SHA-256 in its lines): A, B, A still redoes the files, because B's lines are
    newer than A's first ones."""
    out = tmp_path / "out"
    a, b = settings(assets, 0.2), settings(assets, 0.4)
    purify_images(a, inputs, out, progress=False)
    _strip_digests(out / "purify.jsonl")
    purify_images(b, inputs, out, progress=False)
    _strip_digests(out / "purify.jsonl")
    third = purify_images(a, inputs, out, progress=False)
    assert (third["written"], third["skipped"]) == (3, 0)
    _strip_digests(out / "purify.jsonl")
    again = purify_images(a, inputs, out, progress=False)
    assert (again["written"], again["skipped"]) == (0, 3)


def test_an_image_replaced_after_its_line_is_redone(assets: Path, inputs: Path, tmp_path: Path) -> None:
    """A later run killed between writing an image and its log line leaves a file its line does not describe."""
    out = tmp_path / "out"
    a = settings(assets, 0.2)
    purify_images(a, inputs, out, progress=False)
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(out / "1.png")
    summary = purify_images(a, inputs, out, progress=False)
    assert (summary["written"], summary["skipped"]) == (1, 2)
    assert np.asarray(Image.open(out / "1.png")).max() > 0  # purified again, not the stray file
    newest = [json.loads(line) for line in (out / "purify.jsonl").read_text().splitlines()][-1]
    assert newest["file"] == "1.png"
    assert newest["image_sha256"] == hashlib.sha256((out / "1.png").read_bytes()).hexdigest()


def test_the_lock_and_write_errors_name_the_outdir_argument(assets: Path, inputs: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(settings(assets, 0.2)))
    with RunLock(out):
        assert cli.main(["purify", str(cfg_file), str(inputs), str(out)]) == 2
    err = capsys.readouterr().err
    assert "another hetpure run is writing into" in err and "output folder (purify's OUTDIR argument)" in err, err
    assert "--out" not in err and "run.out" not in err
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(RecordsError, match=r"cannot create the output folder .*give another output folder "
                                           r"\(purify's OUTDIR argument\)"):
        purify_images(settings(assets, 0.2), inputs, a_file / "out", progress=False)

"""``hetpure purify``, ``predict``, ``tune``, ``sweep`` and ``list`` on real CIFAR-10 images with the shared models
(tiny settings: S = 10, R = 2, one PGD step), and their errors for bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import shared_file
from PIL import Image

from hetpure import cli


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """4 CIFAR-10 test images in a nested folder, a small train/test tree, and a config on the shared models."""
    data = shared_file("data/cifar10")
    clf = shared_file("models/resnet20-cifar10/model.safetensors")
    ddpm = shared_file("models/ddpm-cifar10-tiny")
    root = tmp_path_factory.mktemp("commands")
    picks = {"cat": "images/animals/cats", "ship": "images/vehicles", "truck": "images", "dog": "images/animals"}
    for cls, folder in picks.items():  # one image each; nested folders of different depths
        (root / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(sorted((data / "test" / cls).glob("*.png"))[0], root / folder)
    for split in ("train", "test"):
        for cls in ("cat", "ship"):
            (root / "data" / split / cls).mkdir(parents=True)
            for f in sorted((data / split / cls).glob("*.png"))[:2]:
                shutil.copy(f, root / "data" / split / cls)
    config = {
        "data": {"name": "imagefolder", "root": str(root / "data"), "split": "test", "n": 2, "seed": 0},
        "classifier": {"name": "cifar_resnet20", "path": str(clf)},
        "diffusion": {"kind": "diffusers", "path": str(ddpm)},
        "defense": {"method": "heterogeneous", "t_s": 0.1, "t_l": 0.2, "tau": 0.9, "ddim_steps": 10, "runs": 2},
        "attack": {"name": "pgd", "eps": 0.0313725, "step_size": 0.007, "steps": 1, "eot": 1},
        "run": {"batch_size": 4, "device": "cpu", "worst_case_k": 1, "out": str(root / "eval"),
                "save_images": False, "progress": False},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return {"root": root, "config": root / "config.yaml", "images": root / "images"}


def written_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.png") if not p.name.endswith(".mask.png"))


def test_purify_writes_images_masks_and_a_log_and_skips_finished_files(setup: dict[str, Path], capsys) -> None:
    out = setup["root"] / "purified"
    assert cli.main(["purify", str(setup["config"]), str(setup["images"]), str(out)]) == 0
    images, masks = written_images(out), sorted(out.rglob("*.mask.png"))
    inputs = sorted(p.relative_to(setup["images"]).as_posix() for p in setup["images"].rglob("*.png"))
    assert [p.relative_to(out).as_posix() for p in images] == inputs  # mirrors the input's relative paths
    assert {p.parent.relative_to(out).as_posix() for p in images} == {".", "animals", "animals/cats", "vehicles"}
    assert len(masks) == 4 and all(Image.open(p).size == (32, 32) for p in images + masks)
    assert all(Image.open(p).mode == "L" for p in masks) and all(Image.open(p).mode == "RGB" for p in images)
    log = [json.loads(line) for line in (out / "purify.jsonl").read_text().splitlines()]
    assert len(log) == 4 and {"file", "mask_fraction", "eps_calls", "seconds"} <= set(log[0])
    assert all(r["eps_calls"] == 2 and 0 <= r["mask_fraction"] <= 1 for r in log)
    assert "purified 4 image(s)" in capsys.readouterr().out

    assert cli.main(["purify", str(setup["config"]), str(setup["images"]), str(out)]) == 0  # a rerun: nothing to do
    assert "purified 0 image(s), 4 already done" in capsys.readouterr().out
    assert len((out / "purify.jsonl").read_text().splitlines()) == 4


def test_predict_writes_one_line_per_image_with_the_votes(setup: dict[str, Path], capsys) -> None:
    out = setup["root"] / "pred" / "x.jsonl"
    assert cli.main(["predict", str(setup["config"]), str(setup["images"]), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4
    for r in rows:
        assert {"file", "prediction", "votes", "class", "vote_share", "undefended_prediction"} <= set(r)
        assert len(r["votes"]) == 10 and sum(r["votes"]) == 2 and r["votes"][r["prediction"]] == max(r["votes"])
    printed = capsys.readouterr().out
    assert "undefended" in printed and "4 image(s)" in printed


def test_tune_writes_tune_json_and_a_best_yaml_that_evaluate_runs(setup: dict[str, Path], capsys) -> None:
    out = setup["root"] / "tune"
    assert cli.main(["tune", str(setup["config"]), "--grid", "defense.t_l=0.15,0.2", "--grid", "defense.tau=0.9",
                     "--n", "2", "--screen-n", "1", "--keep", "1", "--out", str(out)]) == 0
    result = json.loads((out / "tune.json").read_text())
    assert result["finished"] and result["split"] == "train"
    assert [[(r["settings"]["defense.t_l"], r["n"]) for r in rung] for rung in result["rungs"]][0] == [(0.15, 1),
                                                                                                    (0.2, 1)]
    assert len(result["rungs"]) == 2 and result["rungs"][1][0]["n"] == 2
    point = result["rungs"][0][0]
    assert {"clean_accuracy_ci95", "robust_accuracy_ci95", "eps_calls", "seconds_per_image"} <= set(point)
    assert (out / "tune.png").stat().st_size > 0
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["data"]["split"] == "test" and best["data"]["n"] == 2  # as the config had them
    assert best["defense"]["t_l"] == result["selected"]["settings"]["defense.t_l"]
    assert "best on the train split" in capsys.readouterr().out

    assert best["run"]["out"] == str(out / "evaluate")
    assert cli.main(["evaluate", str(out / "best.yaml")]) == 0  # as it is
    summary = json.loads((out / "evaluate" / "summary.json").read_text())
    assert summary["n"] == 2 and summary["config"]["data"]["split"] == "test"
    assert summary["config"]["defense"]["t_l"] == best["defense"]["t_l"]


def test_sweep_writes_every_point(setup: dict[str, Path]) -> None:
    out = setup["root"] / "sweep"
    assert cli.main(["sweep", str(setup["config"]), "--grid", "defense.tau=0.7,0.9", "--n", "1",
                     "--out", str(out)]) == 0
    data = json.loads((out / "sweep.json").read_text())
    assert [p["settings"]["defense.tau"] for p in data["points"]] == [0.7, 0.9]
    assert all(p["n"] == 1 and len(p["robust_accuracy_ci95"]) == 2 for p in data["points"])
    assert (out / "sweep.png").stat().st_size > 0


def test_list_names_what_is_available(capsys) -> None:
    assert cli.main(["list"]) == 0
    text = capsys.readouterr().out
    for name in ("cifar_resnet20", "pgd", "imagefolder", "ncsnpp", "cifar10-scoresde"):
        assert name in text
    assert "3×32×32" in text and "layer1" in text
    assert cli.main(["list", "classifer"]) == 2
    assert "did you mean classifiers" in capsys.readouterr().err


@pytest.mark.parametrize("case, expected", [
    ("missing file", "does not exist"),
    ("unreadable image", "cannot read image"),
    ("image too small", "is 16×16, smaller than the 32×32"),
    ("grid key", "'defense.tua' is not a config key (did you mean defense.tau"),
    ("grid value type", "defense.tau must be a number, got 'high'"),
])
def test_bad_input_exits_2_with_a_message_and_no_traceback(setup: dict[str, Path], tmp_path: Path, capsys,
                                                           case: str, expected: str) -> None:
    cfg = str(setup["config"])
    if case == "missing file":
        argv = ["predict", cfg, str(tmp_path / "nothing.png")]
    elif case == "unreadable image":
        (tmp_path / "in").mkdir()
        (tmp_path / "in" / "broken.png").write_text("not an image")
        argv = ["purify", cfg, str(tmp_path / "in"), str(tmp_path / "out")]
    elif case == "image too small":
        Image.new("RGB", (16, 16)).save(tmp_path / "small.png")
        argv = ["predict", cfg, str(tmp_path / "small.png")]
    elif case == "grid key":
        argv = ["tune", cfg, "--grid", "defense.tua=0.9", "--n", "2", "--out", str(tmp_path / "t")]
    else:
        argv = ["sweep", cfg, "--grid", "defense.tau=0.7,high", "--n", "1", "--out", str(tmp_path / "t")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and "error:" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "purify.jsonl").exists() and not (tmp_path / "t").exists()

"""Grids, successive halving and sweeps of :mod:`hetpure.tuning`, with the evaluation replaced by a lookup."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from hetpure import tuning
from hetpure.errors import ConfigError, HetpureError
from hetpure.tuning import grid_points, parse_grid, point_folder, set_values, sweep, tune
from hetpure.tuning_plots import MissingDependency

CONFIG = {
    "data": {"name": "imagefolder", "root": "/nowhere", "split": "test", "n": 64},
    "classifier": {"name": "cifar_resnet20"},
    "diffusion": {"kind": "diffusers", "path": "/nowhere/ddpm"},
    "defense": {"method": "heterogeneous", "t_s": 0.1, "t_l": 0.2, "tau": 0.9, "ddim_steps": 100, "runs": 8},
    "run": {"out": "runs/x"},
}


def fake_runner(robust: dict[tuple, float], calls: list, clean: dict[tuple, float] | None = None):
    def run(cfg: dict[str, Any], folder: Path) -> dict[str, Any]:
        d = cfg["defense"]
        key = (d.get("t_l"), d.get("tau"))
        calls.append((*key, cfg["data"]["n"], cfg["data"]["split"], folder.name))
        assert cfg["run"]["out"] == str(folder)
        return {"n": cfg["data"]["n"], "clean_accuracy": (clean or {}).get(key, 0.5),
                "robust_accuracy": robust[key], "seconds_per_image": 1.0}

    return run


def test_parse_grid_reads_yaml_values_and_refuses_what_is_not_a_config_key() -> None:
    grid = parse_grid(["defense.t_l=0.15,0.2", "defense.top_p=null,0.1", "data.options={resize: [32, 32]},{mode: L}"])
    assert grid == {"defense.t_l": [0.15, 0.2], "defense.top_p": [None, 0.1],
                    "data.options": [{"resize": [32, 32]}, {"mode": "L"}]}
    assert grid_points({"a.x": [1, 2], "a.y": [3]}) == [{"a.x": 1, "a.y": 3}, {"a.x": 2, "a.y": 3}]
    for item, message in [("defense.tua=0.9", "did you mean defense.tau"), ("tau=0.9", "did you mean defense.tau"),
                          ("defence.tau=0.9", "did you mean defense"), ("defense.tau", "SECTION.KEY=V1,V2"),
                          ("data.n=4,8", "cannot be a grid key"), ("defense.tau=", "no values"),
                          ("defense.tau=0.9,0.9", "repeated")]:
        with pytest.raises(ConfigError, match=message):
            parse_grid([item])
    with pytest.raises(ConfigError, match="given twice"):
        parse_grid(["defense.tau=0.7", "defense.tau=0.9"])


def test_points_set_values_and_get_readable_distinct_folders() -> None:
    assert point_folder({"defense.t_l": 0.15, "defense.tau": 0.9}) == "t_l0.15_tau0.9"
    assert point_folder({"defense.max_batch": 4, "attack.eot_batch": 4}) == "max_batch4_eot_batch4"
    assert point_folder({"defense.tau": None}) == "taunull"
    names = tuning._folders([{"data.options": {"a": "x/y"}}, {"data.options": {"a": "x-y"}}], None)
    assert len(set(names)) == 2  # two points that sanitise to one name get a hash each
    with_top_p = set_values({**CONFIG, "defense": {**CONFIG["defense"], "top_p": 0.15}}, {"defense.tau": 0.7})
    assert with_top_p["defense"]["tau"] == 0.7 and with_top_p["defense"]["top_p"] is None  # τ is not overruled
    assert "top_p" not in set_values(CONFIG, {"defense.tau": 0.7})["defense"]
    assert CONFIG["defense"]["tau"] == 0.9  # a copy


GRID = {"defense.t_l": [0.2, 0.3], "defense.tau": [0.5, 0.7, 0.9]}
ROBUST = {(0.2, 0.5): 0.15, (0.2, 0.7): 0.21, (0.2, 0.9): 0.28, (0.3, 0.5): 0.25, (0.3, 0.7): 0.20, (0.3, 0.9): 0.18}


def test_tune_halves_at_doubling_rungs_and_writes_its_outputs(tmp_path: Path) -> None:
    calls: list = []
    result = tune(CONFIG, GRID, n=256, screen_n=32, keep=2, out=tmp_path, run=fake_runner(ROBUST, calls),
                  overrides={"run": {"seed": 3}}, log=lambda _: None)
    assert [c[:3] for c in calls] == [(t, tau, 32) for t in (0.2, 0.3) for tau in (0.5, 0.7, 0.9)] + [
        (0.2, 0.9, 64), (0.3, 0.5, 64), (0.2, 0.9, 128), (0.2, 0.9, 256)]
    assert {c[3] for c in calls} == {"train"} and calls[0][4] == "t_l0.2_tau0.5"
    assert result["selected"] == {"settings": {"defense.t_l": 0.2, "defense.tau": 0.9}, "n": 256}
    saved = json.loads((tmp_path / "tune.json").read_text())
    assert saved["finished"] and [len(r) for r in saved["rungs"]] == [6, 2, 1, 1]
    assert all(len(p["clean_accuracy_ci95"]) == 2 for rung in saved["rungs"] for p in rung)
    best = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert best["data"] == CONFIG["data"] and best["run"]["out"] == str(tmp_path / "evaluate")  # split, n kept
    assert best["defense"]["t_l"] == 0.2 and best["defense"]["tau"] == 0.9 and best["run"]["seed"] == 3
    assert (tmp_path / "tune.png").stat().st_size > 0


def test_tune_ranks_by_robust_then_clean_and_keeps_finished_points_when_interrupted(tmp_path: Path) -> None:
    calls: list = []
    robust = {(0.2, 0.9): 0.5, (0.3, 0.9): 0.5}
    result = tune(CONFIG, {"defense.t_l": [0.2, 0.3], "defense.tau": [0.9]}, n=8, screen_n=8, out=tmp_path,
                  run=fake_runner(robust, calls, clean={(0.2, 0.9): 0.6, (0.3, 0.9): 0.7}), write=False,
                  log=lambda _: None)
    assert result["best"]["settings"]["defense.t_l"] == 0.3 and result["rungs"][1:] == []

    def interrupted(cfg: dict[str, Any], folder: Path) -> dict[str, Any]:
        if len(calls) == 4:
            raise KeyboardInterrupt
        return fake_runner(ROBUST, calls)(cfg, folder)

    with pytest.raises(KeyboardInterrupt):
        tune(CONFIG, GRID, n=64, screen_n=32, out=tmp_path / "cut", run=interrupted, log=lambda _: None)
    saved = json.loads((tmp_path / "cut" / "tune.json").read_text())
    assert not saved["finished"] and len(saved["rungs"][0]) == 2


def test_tune_refuses_the_test_split_bad_sizes_and_bad_points_before_any_run(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def never(cfg: dict[str, Any], folder: Path) -> dict[str, Any]:
        raise AssertionError("no run may start")

    kw: dict[str, Any] = {"n": 4, "out": tmp_path / "t", "run": never, "log": lambda _: None}
    with pytest.raises(ConfigError, match="refuses the 'test' split.*--allow-test-split"):
        tune(CONFIG, {"defense.tau": [0.9]}, split="test", **kw)
    with pytest.raises(ConfigError, match="--keep must be at least 1"):
        tune(CONFIG, {"defense.tau": [0.9]}, keep=0, **kw)
    with pytest.raises(ConfigError, match=r"grid point defense.tau=high: defense.tau must be a number.*--grid"):
        tune(CONFIG, {"defense.tau": [0.9, "high"]}, **kw)
    with pytest.raises(ConfigError, match="grid point defense.t_l=0.05: defense.t_s .* must not exceed"):
        tune(CONFIG, {"defense.t_l": [0.2, 0.05]}, **kw)
    with pytest.raises(ConfigError, match="unknown classifier 'cifar_resnet2' \\(did you mean .*cifar_resnet20"):
        tune({**CONFIG, "classifier": {"name": "cifar_resnet2"}}, {"defense.tau": [0.9]}, **kw)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    with pytest.raises(MissingDependency, match=r"pip install 'hetpure\[viz\]'"):
        tune(CONFIG, {"defense.tau": [0.9]}, **kw)
    assert issubclass(MissingDependency, HetpureError) and not (tmp_path / "t").exists()


def test_sweeps_of_one_folder_merge_and_a_new_n_starts_anew(tmp_path: Path) -> None:
    calls: list = []
    robust = {(0.2, tau): tau / 2 for tau in (0.5, 0.7, 0.9)}
    first = sweep(CONFIG, {"defense.tau": [0.9, 0.5]}, n=4, out=tmp_path, run=fake_runner(robust, calls),
                  log=lambda _: None)
    assert [p["settings"]["defense.tau"] for p in first["points"]] == [0.5, 0.9]
    seen: list = []
    merged = sweep(CONFIG, {"defense.tau": [0.7]}, n=4, out=tmp_path, run=fake_runner(robust, calls),
                   on_point=seen.append, log=lambda _: None)  # another process, another part of the grid
    assert [p["settings"]["defense.tau"] for p in merged["points"]] == [0.5, 0.7, 0.9]
    assert merged["grid"] == {"defense.tau": [0.9, 0.5, 0.7]} and len(seen) == 1
    assert [c[2] for c in calls] == [4, 4, 4] and calls[0][3] == "test"  # sweeps use the config's split
    fresh = sweep(CONFIG, {"defense.tau": [0.7]}, n=8, out=tmp_path, run=fake_runner(robust, calls),
                  log=lambda _: None)
    assert [p["n"] for p in fresh["points"]] == [8] and (tmp_path / "sweep.png").exists()

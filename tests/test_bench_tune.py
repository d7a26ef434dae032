"""The successive-halving schedule of ``bench/cifar10_robust.py tune``, with the evaluation mocked out."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture
def cifar10_robust(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location("cifar10_robust_under_test", BENCH / "cifar10_robust.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "REPO", tmp_path)
    monkeypatch.setattr(module, "shared_dir", lambda: tmp_path / "shared")
    (tmp_path / "docs/results").mkdir(parents=True)
    from PIL import Image

    for split in ("test", "train"):  # a two-image stand-in for the shared CIFAR-10 tree (run identities read it)
        for i, cls in enumerate(("airplane", "ship")):
            (tmp_path / "shared/data/cifar10" / split / cls).mkdir(parents=True)
            Image.new("RGB", (32, 32), (40 * i, 0, 0)).save(tmp_path / "shared/data/cifar10" / split / cls / "0.png")
    return module


def run_tune(module: Any, monkeypatch: pytest.MonkeyPatch, robust: dict[tuple[float, float], float],
             *flags: str) -> list[tuple[float, float, int]]:
    """Run ``tune`` with ``run_row`` replaced by a lookup in ``robust``; returns the (t_l, τ, n) runs."""
    calls: list[tuple[float, float, int]] = []

    def fake_run_row(cfg: dict[str, Any], out: Path) -> dict[str, Any]:
        d, n = cfg["defense"], cfg["data"]["n"]
        assert cfg["data"]["split"] == "train"
        calls.append((d["t_l"], d["tau"], n))
        return {"n": n, "clean_accuracy": 0.5, "robust_accuracy": robust[(d["t_l"], d["tau"])],
                "robust_accuracy_ci95": [0.0, 1.0], "seconds_per_image": 1.0}

    monkeypatch.setattr(module, "run_row", fake_run_row)
    monkeypatch.setattr(sys, "argv", ["cifar10_robust.py", "tune", *flags])
    module.main()
    return calls


GRID = {(0.2, 0.5): 0.15, (0.2, 0.7): 0.21, (0.2, 0.9): 0.28, (0.3, 0.5): 0.25, (0.3, 0.7): 0.20, (0.3, 0.9): 0.18}
FLAGS = ("--tl-grid", "0.2", "0.3", "--tau-grid", "0.5", "0.7", "0.9", "--screen-n", "32")


def test_tune_halves_the_field_at_each_doubling_rung(cifar10_robust: Any, monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    calls = run_tune(cifar10_robust, monkeypatch, GRID, *FLAGS, "--keep", "2", "--n", "256")
    screen = [(t_l, tau, 32) for t_l in (0.2, 0.3) for tau in (0.5, 0.7, 0.9)]
    assert calls == screen + [(0.2, 0.9, 64), (0.3, 0.5, 64), (0.2, 0.9, 128), (0.2, 0.9, 256)]
    result = json.loads((tmp_path / "docs/results/cifar10_tune.json").read_text())
    assert result["selected"] == {"t_l": 0.2, "tau": 0.9, "n": 256}
    assert [[(r["t_l"], r["tau"], r["n"]) for r in rung] for rung in result["rungs"]] == [
        [(0.2, 0.9, 64), (0.3, 0.5, 64)], [(0.2, 0.9, 128)], [(0.2, 0.9, 256)]]
    assert result["final"] == result["rungs"][-1]


def test_tune_without_halving_runs_every_point_once(cifar10_robust: Any, monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    calls = run_tune(cifar10_robust, monkeypatch, GRID, *FLAGS, "--n", "32")
    assert calls == [(t_l, tau, 32) for t_l in (0.2, 0.3) for tau in (0.5, 0.7, 0.9)]
    result = json.loads((tmp_path / "docs/results/cifar10_tune.json").read_text())
    assert result["rungs"] == [] and result["final"] == result["grid"]
    assert result["selected"] == {"t_l": 0.2, "tau": 0.9, "n": 32}


@pytest.mark.parametrize("flags", [("--screen-n", "-4"), ("--n", "0")])
def test_tune_rejects_sizes_that_cannot_double(cifar10_robust: Any, monkeypatch: pytest.MonkeyPatch,
                                               flags: tuple[str, str]) -> None:
    with pytest.raises(SystemExit, match="--n must be at least 1 and --screen-n at least 0"):
        run_tune(cifar10_robust, monkeypatch, GRID, "--tl-grid", "0.2", "--tau-grid", "0.9", *flags)


def make_args(module: Any, monkeypatch: pytest.MonkeyPatch, *flags: str) -> Any:
    monkeypatch.setattr(sys, "argv", ["cifar10_robust.py", "table", *flags])
    captured: dict[str, Any] = {}
    monkeypatch.setitem(module.__dict__, "table", lambda args: captured.setdefault("args", args))
    module.main()
    return captured["args"]


def write_run(module: Any, folder: Path, cfg: dict[str, Any], indices: list[int]) -> str:
    from hetpure.evaluate import resolve_config, settings_hash

    digest = settings_hash(resolve_config(cfg))
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"settings_hash": digest, "config": cfg}))
    (folder / "records.jsonl").write_text("".join(
        json.dumps({"index": i, "settings_hash": digest, "label": i % 10}) + "\n" for i in indices))
    return digest


def test_tuned_row_with_the_paper_settings_reuses_the_heterogeneous_records(
        cifar10_robust: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    m = cifar10_robust
    args = make_args(m, monkeypatch, "--tuned-tl", "0.2", "--tuned-tau", "0.9")
    out = tmp_path / "records"
    het = m.row_config("heterogeneous", args)
    digest = write_run(m, out / "heterogeneous", het, [3, 1, 4])
    # another row with other settings is never a twin
    write_run(m, out / "uniform-tl", m.row_config("uniform-tl", args), [3, 1, 4, 5])
    tuned = m.row_config("heterogeneous-tuned", args)
    (out / "heterogeneous-tuned").mkdir()
    (out / "heterogeneous-tuned" / "records.jsonl").write_text(
        json.dumps({"index": 1, "settings_hash": digest, "label": 1, "own": True}) + "\n")

    assert m.adopt_twin(tuned, out / "heterogeneous-tuned") == "heterogeneous"
    assert m.adopt_twin(tuned, out / "heterogeneous-tuned") == "heterogeneous"  # idempotent
    records = [json.loads(line) for line in (out / "heterogeneous-tuned/records.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in records) == [1, 3, 4]
    assert [r for r in records if r["index"] == 1][0].get("own")  # its own record is kept, not duplicated


def test_tuned_row_with_other_settings_has_no_twin(cifar10_robust: Any, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    m = cifar10_robust
    args = make_args(m, monkeypatch, "--tuned-tl", "0.3", "--tuned-tau", "0.5")
    out = tmp_path / "records"
    write_run(m, out / "heterogeneous", m.row_config("heterogeneous", args), [0, 1])
    assert m.adopt_twin(m.row_config("heterogeneous-tuned", args), out / "heterogeneous-tuned") is None
    assert not (out / "heterogeneous-tuned").exists()
    # a folder holding a run with other settings is left for evaluate to report
    paper = make_args(m, monkeypatch, "--tuned-tl", "0.2", "--tuned-tau", "0.9")
    write_run(m, out / "stale", m.row_config("heterogeneous-tuned", args), [0])
    assert m.adopt_twin(m.row_config("heterogeneous-tuned", paper), out / "stale") is None


def test_exact_rows_differ_from_their_surrogate_rows_only_in_the_attack_gradient(
        cifar10_robust: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    m = cifar10_robust
    args = make_args(m, monkeypatch, "--eot", "4")
    for exact, surrogate in (("heterogeneous-exact", "heterogeneous"), ("uniform-tl-exact", "uniform-tl"),
                             ("diffpure-exact", "diffpure"), ("diffpure-adjoint", "diffpure")):
        a, b = m.row_config(exact, args), m.row_config(surrogate, args)
        assert a["defense"] == b["defense"] and a["data"] == b["data"]
        assert (a["attack"]["gradient"], a["attack"]["eot"]) == (exact.rsplit("-", 1)[1], 2)
        assert (b["attack"]["gradient"], b["attack"]["eot"]) == ("surrogate", 4)
    assert m.row_config("uniform-tl-exact", args)["defense"]["t_star"] == m.T_L
    sized = make_args(m, monkeypatch, "--n", "256", "--n-exact", "64")
    assert [m.row_images(r, sized) for r in ("heterogeneous-exact", "diffpure-adjoint", "diffpure")] == [64, 64, None]
    with pytest.raises(SystemExit, match="unknown row"):
        m.row_config("uniform-ts-exact", args)


def test_results_go_beside_the_run_folders_unless_they_are_the_committed_ones(cifar10_robust: Any,
                                                                               tmp_path: Path) -> None:
    committed = tmp_path / "docs/results/records/cifar10"
    name = "cifar10_robust.json"
    assert cifar10_robust.results_file(committed, name) == tmp_path / "docs/results" / name
    assert cifar10_robust.results_file(tmp_path / "gpu", name) == tmp_path / "gpu" / name

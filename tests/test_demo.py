"""The offline demo: embedded models load and work, and ``hetpure demo`` writes its outputs and resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hetpure import cli
from hetpure.demo import HeldOutDigits, assets_dir, load_demo_models
from hetpure.errors import HetpureError


def test_embedded_assets_are_small_and_the_models_work() -> None:
    root = assets_dir()
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert total < 5 * 2**20, f"the demo assets take {total / 2**20:.1f} MB"
    eps, clf = load_demo_models()
    digits = HeldOutDigits(64)
    with torch.no_grad():
        accuracy = (clf(digits.images).argmax(1) == digits.labels).float().mean().item()
        assert accuracy >= 0.95
        x_t = torch.randn(2, 1, 28, 28)
        assert eps(x_t, torch.tensor([50.0, 300.0])).shape == x_t.shape
    assert eps.num_timesteps == 1000 and set(digits.labels.tolist()) == set(range(10))


def test_too_many_digits_is_a_clear_error() -> None:
    with pytest.raises(HetpureError, match="--n"):
        HeldOutDigits(10_000)
    with pytest.raises(HetpureError, match="--n >= 1"):
        HeldOutDigits(0)


def test_quick_demo_writes_outputs_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "demo"
    assert cli.main(["demo", "--quick", "--n", "4", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary) == 4 and all(s["n"] == 4 for s in summary.values())
    assert summary["none"]["eps_calls"]["defence_per_purification"] == 0
    assert summary["heterogeneous"]["eps_calls"]["defence_per_purification"] > 0
    assert (out / "demo.png").stat().st_size > 1000 and "robust" in (out / "summary.md").read_text()
    printed = capsys.readouterr().out
    assert str(out.resolve()) in printed
    records = {p: p.read_text() for p in out.rglob("records.jsonl")}
    assert len(records) == 4
    assert cli.main(["demo", "--quick", "--n", "4", "--out", str(out)]) == 0  # resumes: nothing recomputed
    assert {p: p.read_text() for p in out.rglob("records.jsonl")} == records

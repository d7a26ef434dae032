"""Exact-gradient attacks keep the whole graph when it fits the memory budget, else checkpoint per step;
the records are the same bit for bit either way."""

from __future__ import annotations

from pathlib import Path

from conftest import config, tiny_unet

from hetpure import DiffusersEps
from hetpure.evaluate import evaluate, read_records
from hetpure.graph_memory import graph_bytes, saved_bytes_per_call, use_checkpointing


def test_saved_bytes_scale_with_calls_and_images() -> None:
    eps = DiffusersEps(tiny_unet())
    one = saved_bytes_per_call(eps, (3, 16, 16))
    assert one > 3 * 16 * 16 * 4  # at least the input's activations
    assert graph_bytes(eps, (3, 16, 16), calls=20, images=8) == one * 160
    assert use_checkpointing("auto", budget_gb=one * 159 / 2**30, eps_model=eps, shape=(3, 16, 16), calls=20,
                             images=8)
    assert not use_checkpointing("auto", budget_gb=one * 160 / 2**30, eps_model=eps, shape=(3, 16, 16), calls=20,
                                 images=8)
    assert use_checkpointing("always", 1e9, eps, (3, 16, 16), 20, 8)
    assert not use_checkpointing("never", 1e-9, eps, (3, 16, 16), 20, 8)


def test_checkpointing_changes_no_record(assets: Path, tmp_path: Path) -> None:
    def run(name: str, **attack: object) -> tuple[list[dict], dict]:
        cfg = config(assets, tmp_path / name, attack={"gradient": "exact", "eot": 2, **attack})
        cfg["data"]["n"] = 4
        summary = evaluate(cfg)
        records = sorted(read_records(tmp_path / name / "records.jsonl"), key=lambda r: r["index"])
        return [{k: v for k, v in r.items() if k != "seconds"} for r in records], summary

    always, s_always = run("always", checkpoint="always")
    never, s_never = run("never", checkpoint="never")
    auto_small, s_small = run("auto_small", checkpoint="auto", memory_budget_gb=1e-6)
    auto_big, s_big = run("auto_big", checkpoint="auto", memory_budget_gb=64.0)
    assert always == never == auto_small == auto_big
    assert s_always["settings_hash"] == s_never["settings_hash"] == s_small["settings_hash"]
    assert s_always["eps_calls"]["attack_checkpointed"] is True
    assert s_never["eps_calls"]["attack_checkpointed"] is False
    assert s_small["eps_calls"]["attack_checkpointed"] is True
    assert s_big["eps_calls"]["attack_checkpointed"] is False

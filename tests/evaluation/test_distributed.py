"""torchrun with 2 CPU processes (gloo) gives the same records as one process, and resumes across world sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import config

from hetpure.evaluate import read_records


def _run(cmd: list[str], cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _write_cfg(assets_dir: Path, out: Path, path: Path) -> Path:
    cfg = config(assets_dir, out, data={"n": 6}, defense={"runs": 2, "ddim_steps": 10},
                 attack={"name": "pgd", "steps": 2})
    path.write_text(yaml.safe_dump(cfg))
    return path


def _records(out: Path) -> list[dict]:
    """Records by index, without the wall-clock field (the only one that differs between runs)."""
    records = sorted(read_records(out / "records.jsonl"), key=lambda r: r["index"])
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_two_gloo_ranks_equal_one_process(assets: Path, tmp_path: Path) -> None:
    single = _write_cfg(assets, tmp_path / "single", tmp_path / "single.yaml")
    _run([sys.executable, "-m", "hetpure", "evaluate", str(single)], tmp_path)
    reference = _records(tmp_path / "single")
    assert len(reference) == 6

    multi = _write_cfg(assets, tmp_path / "multi", tmp_path / "multi.yaml")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    _run([*torchrun, "-m", "hetpure", "evaluate", str(multi)], tmp_path)
    assert _records(tmp_path / "multi") == reference
    assert not list((tmp_path / "multi").glob("records.rank*.jsonl"))
    summary = json.loads((tmp_path / "multi" / "summary.json").read_text())
    assert summary["n"] == 6

    # resume across a change of world size: one process finished batch 0, two ranks finish the rest
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    cfg_file = _write_cfg(assets, resumed, tmp_path / "resumed.yaml")
    (resumed / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reference if r["batch"] == 0))
    (resumed / "config.json").write_text((tmp_path / "single" / "config.json").read_text())
    _run([*torchrun, "-m", "hetpure", "evaluate", str(cfg_file)], tmp_path)
    assert _records(resumed) == reference

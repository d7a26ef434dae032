"""A damaged diffusers folder is a ``CheckpointError`` naming the file and the fix (never diffusers' OSError
traceback), in ``DiffusersEps.from_pretrained`` and on the command line; a folder without
``scheduler_config.json`` loads with a warning naming the schedule it assumes."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from conftest import config
from safetensors.torch import load_file

import hetpure
from hetpure import cli
from hetpure.demo import assets_dir
from hetpure.errors import CheckpointError

WEIGHTS = "diffusion_pytorch_model.safetensors"


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.write_text, (Path(self.marker), "pwned"))


def _truncate(d: Path) -> None:
    data = (d / WEIGHTS).read_bytes()
    (d / WEIGHTS).write_bytes(data[: len(data) // 2])


def _to_bin(d: Path) -> None:
    torch.save(load_file(d / WEIGHTS), d / "diffusion_pytorch_model.bin")
    (d / WEIGHTS).unlink()


def _wider(d: Path) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg["block_out_channels"] = [2 * c for c in cfg["block_out_channels"]]
    (d / "config.json").write_text(json.dumps(cfg))


DAMAGE: list[tuple[str, Callable[[Path], None], str]] = [
    ("no weights", lambda d: (d / WEIGHTS).unlink(),
     r"has no weights file: expected diffusion_pytorch_model\.safetensors.*Fix: copy the model's weights file"),
    ("random safetensors", lambda d: (d / WEIGHTS).write_bytes(os.urandom(4096)),
     r"diffusion_pytorch_model\.safetensors is not a safetensors file.*fix: copy the weights file again"),
    ("truncated safetensors", _truncate,
     r"diffusion_pytorch_model\.safetensors is truncated: its header describes \d+ bytes but the file has \d+"),
    ("invalid config.json", lambda d: (d / "config.json").write_text("{not json"),
     r"config\.json \(the UNet config\) is not valid JSON.*fix: restore it"),
    ("config.json not an object", lambda d: (d / "config.json").write_text("[1, 2]"),
     r"config\.json \(the UNet config\) must hold a JSON object, got list"),
    ("random .bin only", lambda d: ((d / WEIGHTS).unlink(), (d / "diffusion_pytorch_model.bin").write_bytes(
        os.urandom(4096))), r"could not load the diffusers model in .*diffusion_pytorch_model\.bin.*fix:"),
    ("weights of another config", _wider, r"the weights in .* do not fit its config\.json.*size mismatch"),
    ("invalid scheduler_config.json", lambda d: (d / "scheduler_config.json").write_text("{"),
     r"scheduler_config\.json \(the scheduler config\) is not valid JSON"),
    ("empty folder", lambda d: [p.unlink() for p in d.iterdir()], r"has no config\.json"),
]


def damaged_copy(tmp_path: Path, damage: Callable[[Path], None], source: Path | None = None) -> Path:
    folder = tmp_path / "ddpm"
    shutil.copytree(source or assets_dir() / "ddpm", folder)
    damage(folder)
    return folder


@pytest.mark.parametrize(("what", "damage", "message"), DAMAGE, ids=[d[0] for d in DAMAGE])
def test_a_damaged_folder_is_a_checkpoint_error(tmp_path: Path, what: str, damage, message: str) -> None:
    folder = damaged_copy(tmp_path, damage)
    with pytest.raises(CheckpointError, match=message):
        hetpure.DiffusersEps.from_pretrained(folder)
    with pytest.raises(CheckpointError, match=message):
        hetpure.load_eps_model("diffusers", folder)


def test_a_bin_with_a_pickle_payload_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "marker"

    def evil(d: Path) -> None:
        (d / WEIGHTS).unlink()
        with open(d / "diffusion_pytorch_model.bin", "wb") as fh:
            pickle.dump({"conv_in.weight": _Payload(marker)}, fh)

    with pytest.raises(CheckpointError, match="could not load the diffusers model"):
        hetpure.DiffusersEps.from_pretrained(damaged_copy(tmp_path, evil))
    assert not marker.exists()


def test_a_plain_bin_folder_loads(tmp_path: Path) -> None:
    eps = hetpure.DiffusersEps.from_pretrained(damaged_copy(tmp_path, _to_bin))
    reference = hetpure.DiffusersEps.from_pretrained(assets_dir() / "ddpm")
    mine, theirs = eps.unet.state_dict(), reference.unet.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_no_scheduler_config_warns_and_names_the_assumed_schedule(tmp_path: Path) -> None:
    folder = damaged_copy(tmp_path, lambda d: (d / "scheduler_config.json").unlink())
    with pytest.warns(UserWarning, match=r"no scheduler_config\.json: assuming DDPM's linear β schedule \(β from "
                                         r"1e-4 to 0\.02 over 1000 steps\).*cosine"):
        eps = hetpure.DiffusersEps.from_pretrained(folder)
    linear = hetpure.NoiseSchedule.linear()
    assert eps.schedule.num_timesteps == 1000
    assert eps.schedule.alpha_bar(999) == pytest.approx(linear.alpha_bar(999), rel=1e-12)


def test_a_cosine_scheduler_config_is_used(tmp_path: Path) -> None:
    """Control: a folder that says its schedule gets it (the warning is only for a missing file)."""
    folder = damaged_copy(tmp_path, lambda d: (d / "scheduler_config.json").write_text(
        json.dumps({"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 1000})))
    eps = hetpure.DiffusersEps.from_pretrained(folder)
    assert eps.schedule.alpha_bar(500) != pytest.approx(hetpure.NoiseSchedule.linear().alpha_bar(500), rel=1e-3)


@pytest.mark.parametrize(("what", "damage", "message"), DAMAGE[:3], ids=[d[0] for d in DAMAGE[:3]])
def test_cli_reports_a_damaged_folder_without_a_traceback(assets: Path, tmp_path: Path, what: str, damage,
                                                          message: str, capsys: pytest.CaptureFixture[str]) -> None:
    folder = damaged_copy(tmp_path, damage, assets / "ddpm")
    cfg = config(assets, tmp_path / "run", diffusion={"path": str(folder)})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli.main(["evaluate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hetpure evaluate: error: ") and "Traceback" not in err and "OSError" not in err, err
    assert str(folder) in err and "fix" in err.lower(), err

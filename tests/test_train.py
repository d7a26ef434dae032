"""Training writes diffusers folders that load as ε-models, and resumes with diffusers' EMAModel state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hetpure import DiffusersEps, cli
from hetpure.train import DiffusionTrainConfig, train_diffusion

pytest.importorskip("mlxtend")


def test_train_diffusion_writes_a_loadable_folder_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "ddpm"
    cfg = DiffusionTrainConfig(out=str(out), steps=3, batch_size=4, warmup=1, checkpoint_every=2, limit=16,
                               t_max=400)
    train_diffusion(cfg)
    scheduler = json.loads((out / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "DDPMScheduler" and scheduler["num_train_timesteps"] == 1000
    assert scheduler["beta_start"] == 1e-4 and scheduler["beta_schedule"] == "linear"
    eps = DiffusersEps.from_pretrained(out)
    y = eps(torch.zeros(2, 1, 28, 28), torch.tensor([10, 200]))
    assert y.shape == (2, 1, 28, 28) and torch.isfinite(y).all()
    state = torch.load(out / "resume.pt", weights_only=True)
    assert state["step"] == 3 and state["averager"]["optimization_step"] == 3
    # the CLI resumes to more steps, continuing diffusers' EMAModel state
    argv = ["train-diffusion", "--out", str(out), "--batch-size", "4", "--warmup", "1", "--checkpoint-every", "2",
            "--limit", "16", "--t-max", "400"]
    assert cli.main([*argv, "--steps", "4"]) == 0
    state = torch.load(out / "resume.pt", weights_only=True)
    assert state["step"] == 4 and state["averager"]["optimization_step"] == 4
    assert cli.main([*argv, "--steps", "5", "--lr", "0.001"]) == 2  # other settings into the same folder: refused

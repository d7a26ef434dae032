"""Shared test helpers and fixtures, for every test folder (the tests mirror ``src/hetpure``).

- locating ``../shared`` (skip when absent, fail when CI says it must be there) and the golden files, which
  are copied into ``tests/fixtures`` so that the golden tests run without ``../shared``;
- the tiny models and images of the purifier, attack and evaluation tests (``tiny_unet``,
  ``TinyClassifier``, ``images``; the module-scoped fixtures ``eps`` and ``clf``);
- the tiny evaluation assets (the module-scoped fixture ``assets``) and the run config built on them
  (``config``);
- the short noise schedule of the closed-form schedule and sampler tests (``T``, ``BETAS``, ``abar``,
  ``rand``, ``close``; the module-scoped fixture ``sched``).

This directory is on ``sys.path`` while the tests run (pytest's default "prepend" import mode puts the
folder of this conftest.py there), so test files in any sub-folder take plain helpers with
``from conftest import ...``; fixtures need no import. No test file imports from another test file.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

import hetpure
from hetpure.models.base import EpsModel
from hetpure.schedule import NoiseSchedule

if TYPE_CHECKING:
    from diffusers import UNet2DModel

REPO = Path(__file__).resolve().parents[1]

# --- ../shared and the golden files ---------------------------------------------------------------------------


def shared_root() -> Path | None:
    env = os.environ.get("HETPURE_SHARED")
    if env:
        root = Path(env)
        if not root.is_absolute():
            root = (REPO / root).resolve()
        return root
    default = (REPO.parent / "shared").resolve()
    return default if default.is_dir() else None


def shared_file(relative: str) -> Path:
    """Path of a file under ../shared; skip if ../shared is absent, fail if HETPURE_SHARED is set."""
    root = shared_root()
    if root is None:
        pytest.skip("../shared is not present (set HETPURE_SHARED to require it)")
    path = root / relative
    if not path.exists():
        if os.environ.get("HETPURE_SHARED"):
            pytest.fail(f"HETPURE_SHARED is set but {path} is missing")
        pytest.skip(f"{path} is not present")
    return path


FIXTURES = REPO / "tests" / "fixtures"


def fixture_file(name: str) -> Path:
    """A golden file: the copy in tests/fixtures (so golden tests run without ../shared), else ../shared."""
    local = FIXTURES / name
    return local if local.exists() else shared_file(f"fixtures/{name}")


@pytest.fixture
def shared():
    """Fixture form: ``shared("fixtures/x.safetensors") -> Path``."""
    return shared_file


# --- tiny models and images -----------------------------------------------------------------------------------


def tiny_unet(seed: int = 0, size: int = 16) -> UNet2DModel:
    """A small diffusers UNet (random weights from ``seed``) on 3×size×size images."""
    from diffusers import UNet2DModel  # imported here: most test files never build one

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=size, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    ).eval()


class TinyClassifier(nn.Module):
    """Two conv stages: enough to hook, small enough to be fast."""

    mask_layers = ["stage1", "stage2"]

    def __init__(self, channels: int = 3, classes: int = 10) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.stage1 = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(16, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stage2(self.stage1(x)).mean((2, 3)))


def images(b: int = 2, size: int = 16, seed: int = 3) -> Tensor:
    """``b`` seeded uniform images in [0, 1], 3×size×size."""
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def eps() -> hetpure.DiffusersEps:
    """The tiny UNet as an ε-model (one per test module)."""
    return hetpure.DiffusersEps(tiny_unet())


@pytest.fixture(scope="module")
def clf() -> TinyClassifier:
    """The tiny classifier in eval mode (one per test module)."""
    return TinyClassifier().eval()


# --- tiny evaluation assets -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image folder (``data/test/{cat,dog}``, three 16×16 PNGs each) and the tiny UNet saved as a diffusers
    folder (``ddpm``); one per test module."""
    root = tmp_path_factory.mktemp("assets")
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / "data" / "test" / c).mkdir(parents=True)
        for i in range(3):
            arr = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / "data" / "test" / c / f"{i}.png")
    unet = tiny_unet()
    unet.save_pretrained(root / "ddpm")
    (root / "ddpm" / "scheduler_config.json").write_text(json.dumps(
        {"beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear", "num_train_timesteps": 1000}
    ))
    return root


def config(assets: Path, out: Path, **changes: dict) -> dict:
    """A small ``hetpure evaluate`` config on ``assets`` writing to ``out``; ``changes`` update its sections."""
    cfg = {
        "data": {"name": "imagefolder", "root": str(assets / "data"), "split": "test", "n": 5, "seed": 0},
        "classifier": {"name": "cifar_resnet20"},
        "diffusion": {"kind": "diffusers", "path": str(assets / "ddpm")},
        "defense": {"method": "heterogeneous", "t_s": 0.1, "t_l": 0.2, "tau": 0.5, "ddim_steps": 20, "runs": 2},
        "attack": {"name": "pgd", "steps": 2, "eot": 1, "gradient": "surrogate", "surrogate_ddim_steps": 10},
        "run": {"batch_size": 2, "device": "cpu", "seed": 0, "out": str(out), "worst_case_k": 2,
                "progress": False},
    }
    for section, values in changes.items():
        cfg[section].update(values)
    return cfg


# --- the short schedule of the closed-form tests --------------------------------------------------------------

# A short schedule with large, all-different betas: an index off by one changes every coefficient visibly.
T = 20
BETAS = [0.01 + 0.01 * i for i in range(T)]


def abar(t: int) -> float:
    """ᾱ_t = Π_{s≤t} (1 − β_s), with ᾱ_{−1} = 1 (a plain product, never through the functions under test)."""
    return math.prod(1.0 - b for b in BETAS[: t + 1])


@pytest.fixture(scope="module")
def sched() -> NoiseSchedule:
    """The schedule of ``BETAS``."""
    return NoiseSchedule.from_betas(BETAS)


def rand(*shape: int, seed: int) -> Tensor:
    """Seeded standard normal float64 values."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def close(a: Tensor, b: Tensor, tol: float = 1e-12) -> bool:
    """Equal to within an absolute ``tol``."""
    return bool(torch.allclose(a, b, rtol=0, atol=tol))


# --- a toy ε-model for the hand-written sampler loops (test_sampling.py, test_repaint_resampling.py) ----------


class ToyEps(EpsModel):
    """ε(x, t) = 0.3·x + 0.02·t·sin(x): depends on both x and t, pixel by pixel, so a wrong timestep shows."""

    def __init__(self, schedule: NoiseSchedule) -> None:
        super().__init__(schedule, in_channels=3)

    def predict_eps(self, x_t: Tensor, t: Tensor) -> Tensor:
        return 0.3 * x_t + 0.02 * t.view(-1, 1, 1, 1).to(x_t.dtype) * torch.sin(x_t)


def toy_eps(x: Tensor, t: int) -> Tensor:
    """:class:`ToyEps` at one integer timestep, for the hand-written loops."""
    return 0.3 * x + 0.02 * t * torch.sin(x)


"""Optional ε-model speed-ups: off by default, equal outputs when on, clear errors where unavailable."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TinyClassifier, tiny_unet

import hetpure
from hetpure.errors import ConfigError
from hetpure.models.fast import AcceleratedEps, accelerate


def eps_pair() -> tuple[hetpure.DiffusersEps, hetpure.DiffusersEps]:
    base = hetpure.DiffusersEps(tiny_unet()).eval()
    return base, copy.deepcopy(base)


def test_every_flag_off_returns_the_model_itself() -> None:
    base, _ = eps_pair()
    assert accelerate(base) is base


def test_channels_last_gives_equal_purification() -> None:
    base, twin = eps_pair()
    fast = accelerate(twin, channels_last=True)
    assert isinstance(fast, AcceleratedEps) and fast.num_timesteps == base.num_timesteps
    clf = TinyClassifier().eval()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    cfg = hetpure.PurifyConfig(tau=0.5, ddim_steps=50)
    with torch.no_grad():
        a = hetpure.HeterogeneousPurifier(base, clf, cfg).purify(x, noise=torch.zeros_like)
        b = hetpure.HeterogeneousPurifier(fast, clf, cfg).purify(x, noise=torch.zeros_like)
    assert torch.allclose(a, b, atol=1e-5)


def test_compile_gives_equal_eps() -> None:
    pytest.importorskip("torch._dynamo")
    base, twin = eps_pair()
    fast = accelerate(twin, compile=True)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([30.0, 150.0])
    with torch.no_grad():
        assert torch.allclose(base(x, t), fast(x, t), atol=1e-4)


@pytest.mark.parametrize("flags", [{"autocast": "bf16"}, {"cuda_graphs": True}])
def test_cuda_only_flags_are_refused_on_the_cpu(flags: dict) -> None:
    base, _ = eps_pair()
    with pytest.raises(ConfigError, match="CUDA"):
        accelerate(base, **flags)


def test_unknown_autocast_dtype() -> None:
    base, _ = eps_pair()
    with pytest.raises(ConfigError, match="autocast"):
        accelerate(base, autocast="fp8")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_autocast_close_on_cuda(dtype: str) -> None:
    base, twin = eps_pair()
    base, fast = base.cuda(), accelerate(twin.cuda(), autocast=dtype)
    x = torch.randn(2, 3, 16, 16, device="cuda")
    t = torch.tensor([30.0, 150.0], device="cuda")
    with torch.no_grad():
        out = fast(x, t)
        assert out.dtype == torch.float32
        assert (out - base(x, t)).abs().max() < 5e-2

"""Graded per-pixel noise levels (binary and uniform as special cases) and the mask-source ablations."""

from __future__ import annotations

import pytest
import torch
from conftest import images

import hetpure
from hetpure import HeterogeneousPurifier, PurifyConfig, UniformPurifier
from hetpure.errors import ConfigError
from hetpure.evaluate import purify_config, resolve_config
from hetpure.mask import graded_weights

ZEROS = torch.zeros_like

# ``eps`` (the tiny UNet) and ``clf`` (the tiny classifier) are conftest.py's module-scoped fixtures.


def test_graded_weights_piecewise_linear() -> None:
    e = torch.tensor([0.0, 0.4, 0.5, 0.6, 0.7, 1.0]).view(1, 1, 1, 6)
    assert graded_weights(e, 0.4, 0.6).flatten().tolist() == pytest.approx([0, 0, 0.5, 1, 1, 1])
    assert graded_weights(e, 0.5, 0.5).flatten().tolist() == [0, 0, 1, 1, 1, 1]
    with pytest.raises(ConfigError):
        graded_weights(e, 0.7, 0.6)


def test_graded_with_equal_thresholds_is_binary(eps, clf) -> None:
    x = images(3)
    binary = HeterogeneousPurifier(eps, clf, PurifyConfig(tau=0.6, ddim_steps=50))
    graded = HeterogeneousPurifier(eps, clf, PurifyConfig(levels="graded", tau_lo=0.6, tau_hi=0.6, ddim_steps=50))
    with torch.no_grad():
        assert torch.equal(binary.purify(x, noise=ZEROS), graded.purify(x, noise=ZEROS))
        g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
        assert torch.equal(binary.purify(x, generator=g1), graded.purify(x, generator=g2))


def test_graded_all_ones_is_uniform_at_tl(eps, clf) -> None:
    x = images(2)
    graded = HeterogeneousPurifier(eps, clf, PurifyConfig(levels="graded", tau_lo=0.0, tau_hi=0.0,
                                                          resample_steps=0, ddim_steps=50))
    assert graded.level_weights(x).min() == 1
    uniform = UniformPurifier(eps, clf, PurifyConfig(t_star=0.2, ddim_steps=50))
    with torch.no_grad():
        assert torch.equal(graded.purify(x, noise=ZEROS), uniform.purify(x, noise=ZEROS))


def test_graded_all_zeros_is_the_all_known_path(eps, clf) -> None:
    x = images(2)
    cfg = PurifyConfig(levels="graded", tau_lo=0.2, tau_hi=0.8, resample_steps=0, ddim_steps=50)
    pur = HeterogeneousPurifier(eps, clf, cfg)
    with torch.no_grad():
        zero = pur.purify(x, mask=torch.zeros(2, 1, 16, 16), noise=ZEROS)
        low = UniformPurifier(eps, clf, PurifyConfig(t_star=0.12, ddim_steps=50)).purify(x, noise=ZEROS)
    assert torch.allclose(zero, low, atol=1e-6)


def test_a_constant_intermediate_level_starts_at_that_level(eps, clf) -> None:
    """w ≡ 0.5 → every pixel starts at 0.15·T: pixels are reset while t > 150, generated below."""
    x = images(2)
    pur = HeterogeneousPurifier(eps, clf, PurifyConfig(t_s=0.1, t_l=0.2, resample_steps=0, ddim_steps=50))
    with torch.no_grad():
        half = pur.purify(x, mask=torch.full((2, 1, 16, 16), 0.5), noise=ZEROS)
        from_160 = UniformPurifier(eps, clf, PurifyConfig(t_star=0.16, ddim_steps=50)).purify(x, noise=ZEROS)
    assert torch.allclose(half, from_160, atol=1e-6)


def test_graded_levels_grow_with_energy(eps, clf) -> None:
    x = images(2)
    pur = HeterogeneousPurifier(eps, clf, PurifyConfig(levels="graded", tau_lo=0.3, tau_hi=0.9))
    e = pur.attention(x).flatten()
    w = pur.level_weights(x).flatten()
    order = e.argsort()
    assert (w[order].diff() >= 0).all()
    assert 0 < w.mean() < 1


@pytest.mark.parametrize("source", ["all", "none", "random", "gradcam", "energy"])
def test_mask_sources(eps, clf, source) -> None:
    x = images(4)
    pur = HeterogeneousPurifier(eps, clf, PurifyConfig(tau=0.5, mask_source=source))
    m = pur.mask(x, generator=torch.Generator().manual_seed(0))
    assert m.shape == (4, 1, 16, 16) and set(m.unique().tolist()) <= {0.0, 1.0}
    energy = HeterogeneousPurifier(eps, clf, PurifyConfig(tau=0.5)).mask(x)
    if source == "all":
        assert m.min() == 1
    elif source == "none":
        assert m.max() == 0
    elif source == "random":
        assert m.sum((1, 2, 3)).tolist() == energy.sum((1, 2, 3)).tolist()
        assert not torch.equal(m, energy)
    elif source == "gradcam":
        assert not torch.equal(m, energy)
    with torch.no_grad():
        out = pur.purify(x, noise=ZEROS, generator=None)
    assert out.shape == x.shape


def test_unknown_mask_source_is_refused(eps, clf) -> None:
    with pytest.raises(ConfigError, match="mask_source"):
        HeterogeneousPurifier(eps, clf, PurifyConfig(mask_source="saliency"))


def test_evaluate_config_accepts_levels_and_mask_source(tmp_path) -> None:
    cfg = resolve_config({
        "data": {"name": "mnist5k"}, "classifier": {"name": "mnist_cnn"},
        "diffusion": {"path": str(tmp_path)},
        "defense": {"levels": "graded", "tau_lo": 0.5, "tau_hi": 0.95, "mask_source": "gradcam"},
        "run": {"out": str(tmp_path / "o")},
    })
    pc = purify_config(cfg["defense"])
    assert (pc.levels, pc.tau_lo, pc.tau_hi, pc.mask_source) == ("graded", 0.5, 0.95, "gradcam")


class CountingEps(hetpure.EpsModel):
    def __init__(self, inner: hetpure.EpsModel) -> None:
        super().__init__(inner.schedule, inner.in_channels, inner.image_size)
        self.inner, self.calls = inner, 0

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(x_t, t)


@pytest.mark.parametrize("jumps, resample_steps", [(1, 3), (1, 0), (3, 0)])
def test_eps_call_accounting_matches_the_sampler(eps, clf, jumps, resample_steps) -> None:
    counting = CountingEps(eps)
    cfg = PurifyConfig(tau=0.5, ddim_steps=50, repaint_jumps=jumps, resample_steps=resample_steps)
    pur = HeterogeneousPurifier(counting, clf, cfg)
    with torch.no_grad():
        pur.purify(images(1), noise=ZEROS)
    assert counting.calls == pur.eps_calls()
    assert pur.eps_calls() == 10 + 5 * (jumps - 1)


def test_repaint_with_an_empty_mask_is_the_single_step_low_path(eps, clf) -> None:
    x = images(2)
    zeros = torch.zeros(2, 1, 16, 16)
    single = HeterogeneousPurifier(eps, clf, PurifyConfig(resample_steps=0, ddim_steps=50))
    repaint = HeterogeneousPurifier(eps, clf, PurifyConfig(resample_steps=0, ddim_steps=50, repaint_jumps=4))
    with torch.no_grad():
        assert torch.allclose(single.purify(x, mask=zeros, noise=ZEROS), repaint.purify(x, mask=zeros, noise=ZEROS),
                              atol=1e-6)
        ones = torch.ones(2, 1, 16, 16)
        assert not torch.allclose(single.purify(x, mask=ones, noise=ZEROS), repaint.purify(x, mask=ones, noise=ZEROS))

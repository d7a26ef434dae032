"""The samplers of :mod:`hetpure.sampling` (Pei et al. 2025, Alg. 1; the uniform DDIM / DDPM baseline).

Closed forms first: ``sample_heterogeneous`` on a short schedule against Alg. 1 written out by hand with ᾱ
and β only (``conftest.abar``), with no fixture files. Then the official implementation's golden file (zero
noise, four settings; ``tests/fixtures``), the special cases in which the heterogeneous sampler is a
uniform one, the ε-call accounting, and checkpointed steps that replay their noise in the backward pass.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import pytest
import torch
from conftest import BETAS, T, ToyEps, abar, close, fixture_file, images, rand, toy_eps
from diffusers import UNet2DModel
from safetensors import safe_open
from torch import Tensor, nn

import hetpure
from hetpure import HeterogeneousPurifier, PurifyConfig, UniformPurifier
from hetpure.sampling import sample_heterogeneous
from hetpure.schedule import NoiseSchedule

ZEROS = torch.zeros_like


# --- the heterogeneous sampler against a hand-written loop ------------------------------------------------




def hand_loop(x0: Tensor, m: Tensor, ts: list[int], t_s: float, resample_steps: int,
              draw: Callable[[], Tensor]) -> Tensor:
    """Pei et al. Alg. 1 as docs/method.md §3–5 states it, written with ᾱ and β only (η = 0)."""
    x = math.sqrt(abar(ts[0])) * x0 + math.sqrt(1 - abar(ts[0])) * draw()
    for t, s in zip(ts[:-1], ts[1:]):
        if s >= t_s * T:
            x = m * x + (1 - m) * (math.sqrt(abar(t)) * x0 + math.sqrt(1 - abar(t)) * draw())
            for u in range(resample_steps):  # x_{t+u} → x_{t+u+1}
                beta = BETAS[t + u + 1]
                x = math.sqrt(1 - beta) * x + math.sqrt(beta) * draw()
            t_up = t + resample_steps
        else:
            t_up = t
        e = toy_eps(x, t_up)
        x0_hat = (x - math.sqrt(1 - abar(t_up)) * e) / math.sqrt(abar(t_up))
        x = math.sqrt(abar(s)) * x0_hat + math.sqrt(1 - abar(s)) * e
    return x


# (t_s, t_l) → the DDIM timesteps for T = 20, S = 10 (stride 2; int(10·t_l) + 1 entries)
CASES = {(0.1, 0.2): [4, 2, 0], (0.2, 0.4): [8, 6, 4, 2, 0], (0.1, 0.4): [8, 6, 4, 2, 0]}


@pytest.mark.parametrize("levels", sorted(CASES))
@pytest.mark.parametrize("resample_steps", [0, 1, 3])
@pytest.mark.parametrize("noisy", [False, True], ids=["zero-noise", "seeded-noise"])
def test_sampler_equals_hand_written_loop(sched: NoiseSchedule, levels: tuple[float, float], resample_steps: int,
                                          noisy: bool) -> None:
    """Start q(x_{t_0} | x_0); stage 1 (s ≥ t_s·T): reset the unattended pixels to q(x_t | x_0), U forward
    steps with α_{t+1}, one DDIM step from t + U with ε_θ(x, t + U); stage 2: plain DDIM steps."""
    t_s, t_l = levels
    shape = (2, 3, 4, 4)
    x0 = rand(*shape, seed=80).clamp(-1, 1)
    m = (torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(81)) > 0.5).to(torch.float64)
    assert 0 < float(m.mean()) < 1
    n_draws = 1 + sum(1 + resample_steps for s in CASES[levels][1:] if s >= t_s * T)
    draws = [rand(*shape, seed=100 + k) if noisy else torch.zeros(shape, dtype=torch.float64)
             for k in range(n_draws)]
    hand_draws = iter(draws)
    expected = hand_loop(x0, m, CASES[levels], t_s, resample_steps, lambda: next(hand_draws))

    fed = iter(draws)
    used = []

    def noise(like: Tensor) -> Tensor:
        used.append(1)
        return next(fed)

    out = sample_heterogeneous(ToyEps(sched), x0, t_s + (t_l - t_s) * m, t_s=t_s, t_l=t_l, ddim_steps=10,
                               resample_steps=resample_steps, noise=noise)
    assert close(out, expected, 1e-10)
    assert len(used) == n_draws  # one draw per reset and per forward step, none for η = 0 DDIM


def test_zero_noise_single_stage1_step(sched: NoiseSchedule) -> None:
    """One stage-1 step 4 → 2 with U = 3 and zero noise, written out in full:
    x_4 = √ᾱ_4 x_0 everywhere; the reset leaves it there; x_7 = √(α_5 α_6 α_7) x_4; then DDIM 7 → 2."""
    x0 = rand(1, 3, 4, 4, seed=90).clamp(-1, 1)
    m = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    m[..., :2, :] = 1
    x7 = math.sqrt(abar(4)) * math.sqrt((1 - BETAS[5]) * (1 - BETAS[6]) * (1 - BETAS[7])) * x0
    e7 = toy_eps(x7, 7)
    x2 = math.sqrt(abar(2)) * (x7 - math.sqrt(1 - abar(7)) * e7) / math.sqrt(abar(7)) + math.sqrt(1 - abar(2)) * e7
    e2 = toy_eps(x2, 2)
    x_last = math.sqrt(abar(0)) * (x2 - math.sqrt(1 - abar(2)) * e2) / math.sqrt(abar(2)) + math.sqrt(1 - abar(0)) * e2
    out = sample_heterogeneous(ToyEps(sched), x0, 0.1 + 0.1 * m, t_s=0.1, t_l=0.2, ddim_steps=10, resample_steps=3,
                               noise=ZEROS)
    assert close(out, x_last, 1e-10)


# --- golden file of the official implementation -------------------------------------------------------


@pytest.fixture(scope="module")
def golden(request: pytest.FixtureRequest):
    path = fixture_file("hetero_sampler_zero_noise.safetensors")
    f = safe_open(str(path), "pt")
    meta = f.metadata()
    unet = UNet2DModel(**json.loads(meta["unet_config"]))
    unet.load_state_dict({k[5:]: f.get_tensor(k) for k in f.keys() if k.startswith("unet.")})
    tensors = {k: f.get_tensor(k) for k in f.keys() if not k.startswith("unet.")}
    return hetpure.DiffusersEps(unet.eval()), json.loads(meta["cases"]), tensors


def test_golden_official_loop_zero_noise(golden, clf) -> None:
    eps_model, cases, t = golden
    x = (t["input.x0"] + 1) / 2
    assert len(cases) == 4
    for i, case in enumerate(cases):
        cfg = PurifyConfig(t_s=case["t_s"], t_l=case["t_l"], resample_steps=case["U"], ddim_steps=case["ddim_steps"])
        pur = HeterogeneousPurifier(eps_model, clf, cfg)
        with torch.no_grad():
            out = pur.purify(x, mask=t["input.mask"], noise=ZEROS)
        expected = ((t[f"output.case{i}"] + 1) / 2).clamp(0, 1)
        assert (out - expected).abs().max() < 1e-5, f"case {i} {case}"


def test_golden_detects_an_off_by_one_in_u(golden, clf) -> None:
    """The golden comparison can fail: one forward step fewer moves the result far beyond 1e-5."""
    eps_model, cases, t = golden
    case = cases[1]
    cfg = PurifyConfig(t_s=case["t_s"], t_l=case["t_l"], resample_steps=case["U"] - 1, ddim_steps=case["ddim_steps"])
    with torch.no_grad():
        pur = HeterogeneousPurifier(eps_model, clf, cfg)
        out = pur.purify((t["input.x0"] + 1) / 2, mask=t["input.mask"], noise=ZEROS)
    assert (out - ((t["output.case1"] + 1) / 2).clamp(0, 1)).abs().max() > 1e-4


# --- special cases: the heterogeneous sampler as a uniform one ---------------------------------------


def test_ts_equal_tl_is_uniform_ddim(eps, clf) -> None:
    x = images()
    het = HeterogeneousPurifier(eps, clf, PurifyConfig(t_s=0.2, t_l=0.2, ddim_steps=50))
    uni = UniformPurifier(eps, clf, PurifyConfig(t_star=0.2, ddim_steps=50))
    with torch.no_grad():
        for noise_kw in ({"noise": ZEROS}, {"generator": None}):
            g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
            a = het.purify(x, generator=g1) if "generator" in noise_kw else het.purify(x, **noise_kw)
            b = uni.purify(x, generator=g2) if "generator" in noise_kw else uni.purify(x, **noise_kw)
            assert torch.equal(a, b)


def test_u0_full_mask_is_plain_ddim_from_tl(eps, clf) -> None:
    x = images()
    het = HeterogeneousPurifier(eps, clf, PurifyConfig(t_s=0.05, t_l=0.2, resample_steps=0, ddim_steps=50))
    uni = UniformPurifier(eps, clf, PurifyConfig(t_star=0.2, ddim_steps=50))
    ones = torch.ones(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(het.purify(x, mask=ones, noise=ZEROS), uni.purify(x, noise=ZEROS))
        # in distribution with real noise: the means over many runs agree
        xs = x[:1].repeat(128, 1, 1, 1)
        g = torch.Generator().manual_seed(0)
        a = het.purify(xs, mask=ones[:1], generator=g)
        b = uni.purify(xs, generator=g)
    se = ((a.var(0) + b.var(0)) / 128).sqrt().clamp_min(1e-4)
    z = ((a.mean(0) - b.mean(0)).abs() / se).mean()
    assert z < 1.0  # |N(0,1)| averages 0.8 when both samplers have the same distribution


def test_zero_mask_keeps_every_pixel_on_the_low_noise_path(eps, clf) -> None:
    """With m ≡ 0 each stage-1 step starts from a fresh q(x_t|x0): the result is the low path from t_s."""
    x = images()
    cfg = PurifyConfig(t_s=0.1, t_l=0.2, resample_steps=0, ddim_steps=50)
    het = HeterogeneousPurifier(eps, clf, cfg)
    with torch.no_grad():
        zero_mask = het.purify(x, mask=torch.zeros(2, 1, 16, 16), noise=ZEROS)
        # the last stage-1 step starts from q(x_{t}|x0) at t = t_s·T + stride: a uniform DDIM from there
        low = UniformPurifier(eps, clf, PurifyConfig(t_star=0.12, ddim_steps=50)).purify(x, noise=ZEROS)
        full = het.purify(x, mask=torch.ones(2, 1, 16, 16), noise=ZEROS)
    assert torch.allclose(zero_mask, low, atol=1e-6)
    assert (zero_mask - full).abs().max() > 1e-3


# --- ε-call accounting and checkpointed steps --------------------------------------------------------


def test_eps_calls_accounting(eps, clf) -> None:
    pur = HeterogeneousPurifier(eps, clf, PurifyConfig(ddim_steps=500))
    assert pur.eps_calls() == 100 and pur.eps_calls(10) == 2
    uni = UniformPurifier(eps, clf, PurifyConfig(t_star=0.1, sampler="ddpm"))
    assert uni.eps_calls() == 100


def test_checkpointed_gradient_equals_plain(eps, clf) -> None:
    pur = HeterogeneousPurifier(eps, clf, PurifyConfig(tau=0.5, ddim_steps=50, eta=0.5))
    x = images()
    grads = []
    for use_checkpoint in (False, True):
        xr = x.clone().requires_grad_(True)
        mod = pur.as_module(use_checkpoint=use_checkpoint)
        mod.generator = torch.Generator().manual_seed(3)
        loss = nn.functional.cross_entropy(mod(xr), torch.tensor([1, 2]))
        grads.append(torch.autograd.grad(loss, xr)[0])
    assert (grads[0] - grads[1]).abs().max() < 1e-5
    assert grads[0].abs().sum() > 0

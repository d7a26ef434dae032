"""Closed forms of the noise schedule and the heterogeneous sampler, with no fixture files.

Every expected value is written from the definitions (DDPM eq. 2 and 4, DDIM eq. 12 and 16, DDPM
eq. 6–7, Pei et al. Alg. 1 as docs/method.md states it), with ᾱ computed here as a plain product of
(1 − β), never through the functions under test.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from hetpure.models.base import EpsModel
from hetpure.purify import sample_heterogeneous
from hetpure.schedule import NoiseSchedule, ddim_step, ddim_timesteps, ddpm_step, forward_step, q_sample

# A short schedule with large, all-different betas: an index off by one changes every coefficient visibly.
T = 20
BETAS = [0.01 + 0.01 * i for i in range(T)]


def abar(t: int) -> float:
    """ᾱ_t = Π_{s≤t} (1 − β_s), with ᾱ_{−1} = 1."""
    return math.prod(1.0 - b for b in BETAS[: t + 1])


@pytest.fixture(scope="module")
def sched() -> NoiseSchedule:
    return NoiseSchedule.from_betas(BETAS)


def rand(*shape: int, seed: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def const(value: float) -> Callable[[Tensor], Tensor]:
    return lambda like: torch.full_like(like, value)


ZEROS = torch.zeros_like


def close(a: Tensor, b: Tensor, tol: float = 1e-12) -> bool:
    return bool(torch.allclose(a, b, rtol=0, atol=tol))


# --- the schedule itself ----------------------------------------------------------------------------------


def test_alpha_bar_is_the_product_of_alphas(sched: NoiseSchedule) -> None:
    """ᾱ_t = Π_{s≤t} α_s and the convention ᾱ_{−1} = 1."""
    assert sched.alpha_bar(-1) == 1.0
    for t in range(T):
        assert sched.alpha(t) == pytest.approx(1.0 - BETAS[t], abs=1e-15)
        assert sched.alpha_bar(t) == pytest.approx(abar(t), rel=1e-12)


def test_default_schedule_is_ddpm_linear() -> None:
    """DDPM §4: β linear from 1e-4 to 2e-2 over T = 1000 steps."""
    s = NoiseSchedule.linear()
    assert s.num_timesteps == 1000
    assert s.betas[0] == pytest.approx(1e-4) and s.betas[-1] == pytest.approx(2e-2)
    assert s.betas[500] - s.betas[499] == pytest.approx((2e-2 - 1e-4) / 999)


@pytest.mark.parametrize(
    "num, steps, frac, expected",
    [(1000, 10, 0.2, [200, 100, 0]), (1000, 500, 0.2, list(range(200, -1, -2))), (20, 10, 0.4, [8, 6, 4, 2, 0])],
)
def test_ddim_timesteps_follow_the_documented_rule(num: int, steps: int, frac: float, expected: list[int]) -> None:
    """Stride T // S from 0, the first int(S·t_l) + 1 entries, descending (docs/method.md §2)."""
    assert ddim_timesteps(num, steps, frac) == expected


# --- DDPM forward process ---------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [0, 1, 7, T - 1])
def test_q_sample_without_noise_is_sqrt_alpha_bar_x0(sched: NoiseSchedule, t: int) -> None:
    """DDPM eq. 4 with z = 0: x_t = √ᾱ_t · x_0."""
    x0 = rand(2, 3, 4, 4, seed=t)
    assert close(q_sample(sched, x0, t, ZEROS), math.sqrt(abar(t)) * x0)


@pytest.mark.parametrize("t", [0, 5, T - 1])
def test_q_sample_noise_coefficient(sched: NoiseSchedule, t: int) -> None:
    """DDPM eq. 4 with z ≡ 1: x_t = √ᾱ_t x_0 + √(1 − ᾱ_t)."""
    x0 = rand(1, 3, 4, 4, seed=10 + t)
    assert close(q_sample(sched, x0, t, const(1.0)), math.sqrt(abar(t)) * x0 + math.sqrt(1 - abar(t)))


@pytest.mark.parametrize("t", [0, 3, T - 2])
def test_forward_step_without_noise_is_sqrt_alpha_next_x(sched: NoiseSchedule, t: int) -> None:
    """DDPM eq. 2, x_t → x_{t+1}, with z = 0: √α_{t+1} · x (the next step's α, not α_t)."""
    x = rand(2, 3, 4, 4, seed=20 + t)
    assert close(forward_step(sched, x, t, ZEROS), math.sqrt(1 - BETAS[t + 1]) * x)


@pytest.mark.parametrize("t", [0, 9])
def test_forward_step_noise_coefficient(sched: NoiseSchedule, t: int) -> None:
    """DDPM eq. 2 with z ≡ 1: √α_{t+1} x + √β_{t+1}."""
    x = rand(1, 3, 4, 4, seed=30 + t)
    expected = math.sqrt(1 - BETAS[t + 1]) * x + math.sqrt(BETAS[t + 1])
    assert close(forward_step(sched, x, t, const(1.0)), expected)


def unit_draw(k: int) -> Callable[[Tensor], Tensor]:
    """A noise function whose k-th draw is all ones and every other draw zero."""
    count = iter(range(1000))
    return lambda like: torch.full_like(like, 1.0 if next(count) == k else 0.0)


def test_forward_steps_compose_to_the_marginal(sched: NoiseSchedule) -> None:
    """Chaining DDPM eq. 2 from q(x_t | x_0) to t' gives q(x_{t'} | x_0): mean √ᾱ_{t'} x_0, variance 1 − ᾱ_{t'}.

    The noise enters linearly, so feeding one unit draw at a time isolates each draw's coefficient.
    """
    t, steps = 4, 5
    x0 = rand(1, 3, 2, 2, seed=40)
    x = q_sample(sched, x0, t, ZEROS)
    for u in range(steps):
        x = forward_step(sched, x, t + u, ZEROS)
    assert close(x, math.sqrt(abar(t + steps)) * x0)
    variance = 0.0
    for k in range(steps + 1):
        noise = unit_draw(k)
        y = q_sample(sched, torch.zeros(1, 1, 1, 1, dtype=torch.float64), t, noise)
        for u in range(steps):
            y = forward_step(sched, y, t + u, noise)
        variance += float(y) ** 2
    assert variance == pytest.approx(1 - abar(t + steps), rel=1e-12)


# --- DDIM ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("t, s", [(8, 6), (12, 3), (19, 0), (5, -1), (1, 0)])
def test_ddim_eta0_with_the_true_eps_is_exact(sched: NoiseSchedule, t: int, s: int) -> None:
    """DDIM eq. 12, η = 0: from x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε with ε̂ = ε, the step lands on
    √ᾱ_s x_0 + √(1 − ᾱ_s) ε exactly (x_0 itself for s = −1)."""
    x0, eps = rand(2, 3, 4, 4, seed=50), rand(2, 3, 4, 4, seed=51)
    x_t = math.sqrt(abar(t)) * x0 + math.sqrt(1 - abar(t)) * eps
    out = ddim_step(sched, x_t, eps, t, s, 0.0, const(float("nan")))  # η = 0 must draw nothing
    assert close(out, math.sqrt(abar(s)) * x0 + math.sqrt(1 - abar(s)) * eps, 1e-10)
    if s == -1:
        assert close(out, x0, 1e-10)


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_ddim_eta_noise_follows_eq16(sched: NoiseSchedule, eta: float) -> None:
    """DDIM eq. 12 and 16 with z ≡ 1: √ᾱ_s x_0 + √(1 − ᾱ_s − σ²) ε + σ,
    σ = η √((1 − ᾱ_s)/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_s)."""
    t, s = 10, 4
    x0, eps = rand(1, 3, 4, 4, seed=60), rand(1, 3, 4, 4, seed=61)
    x_t = math.sqrt(abar(t)) * x0 + math.sqrt(1 - abar(t)) * eps
    sigma = eta * math.sqrt((1 - abar(s)) / (1 - abar(t))) * math.sqrt(1 - abar(t) / abar(s))
    expected = math.sqrt(abar(s)) * x0 + math.sqrt(1 - abar(s) - sigma**2) * eps + sigma
    assert close(ddim_step(sched, x_t, eps, t, s, eta, const(1.0)), expected, 1e-10)


def test_ddim_eta1_keeps_the_marginal_variance(sched: NoiseSchedule) -> None:
    """With η = 1 the step is the DDPM posterior: the coefficients of ε and z square-sum to 1 − ᾱ_s."""
    t, s = 9, 8
    zero = torch.zeros(1, 1, 1, 1, dtype=torch.float64)
    one = torch.ones_like(zero)
    x_t = math.sqrt(1 - abar(t)) * one  # x_0 = 0, ε = 1
    b = float(ddim_step(sched, x_t, one, t, s, 1.0, ZEROS))
    c = float(ddim_step(sched, zero, zero, t, s, 1.0, const(1.0)))
    assert b**2 + c**2 == pytest.approx(1 - abar(s), rel=1e-12)
    # σ² at η = 1 is the DDPM posterior variance β̃ of a single step (s = t − 1)
    assert c**2 == pytest.approx(BETAS[t] * (1 - abar(s)) / (1 - abar(t)), rel=1e-12)


# --- DDPM ancestral step -----------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [1, 6, T - 1])
def test_ddpm_step_is_consistent_with_the_marginals(sched: NoiseSchedule, t: int) -> None:
    """DDPM eq. 6–7: if x_t ~ q(x_t | x_0) and ε̂ is its true ε, then x_{t−1} ~ q(x_{t−1} | x_0):
    the x_0 coefficient is √ᾱ_{t−1} and the ε and z coefficients square-sum to 1 − ᾱ_{t−1}."""
    zero = torch.zeros(1, 1, 1, 1, dtype=torch.float64)
    one = torch.ones_like(zero)
    a = float(ddpm_step(sched, math.sqrt(abar(t)) * one, zero, t, ZEROS))  # x_0 = 1, ε = 0, z = 0
    b = float(ddpm_step(sched, math.sqrt(1 - abar(t)) * one, one, t, ZEROS))  # x_0 = 0, ε = 1, z = 0
    c = float(ddpm_step(sched, zero, zero, t, const(1.0)))  # x_0 = 0, ε = 0, z = 1
    assert a == pytest.approx(math.sqrt(abar(t - 1)), rel=1e-12)
    assert b**2 + c**2 == pytest.approx(1 - abar(t - 1), rel=1e-12)
    assert c**2 == pytest.approx(BETAS[t] * (1 - abar(t - 1)) / (1 - abar(t)), rel=1e-12)


def test_ddpm_last_step_returns_x0_without_noise(sched: NoiseSchedule) -> None:
    """At t = 0 the posterior mean with the true ε is x_0 and no noise is added."""
    x0, eps = rand(1, 3, 4, 4, seed=70), rand(1, 3, 4, 4, seed=71)
    x_t = math.sqrt(abar(0)) * x0 + math.sqrt(1 - abar(0)) * eps
    assert close(ddpm_step(sched, x_t, eps, 0, const(1.0)), x0, 1e-10)


# --- the heterogeneous sampler against a hand-written loop ------------------------------------------------


class ToyEps(EpsModel):
    """ε(x, t) = 0.3·x + 0.02·t·sin(x): depends on both x and t, so a wrong timestep shows."""

    def __init__(self, schedule: NoiseSchedule) -> None:
        super().__init__(schedule, in_channels=3)

    def predict_eps(self, x_t: Tensor, t: Tensor) -> Tensor:
        return 0.3 * x_t + 0.02 * t.view(-1, 1, 1, 1).to(x_t.dtype) * torch.sin(x_t)


def toy_eps(x: Tensor, t: int) -> Tensor:
    return 0.3 * x + 0.02 * t * torch.sin(x)


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

"""Closed forms of the noise schedule, with no fixture files.

Every expected value is written from the definitions (DDPM eq. 2 and 4, DDIM eq. 12 and 16, DDPM
eq. 6–7), with ᾱ computed as a plain product of (1 − β) (``conftest.abar``), never through the functions under
test. The samplers built on these steps are tested in test_sampling.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from conftest import BETAS, T, abar, close, rand
from torch import Tensor

from hetpure.schedule import NoiseSchedule, ddim_step, ddim_timesteps, ddpm_step, forward_step, q_sample


def const(value: float) -> Callable[[Tensor], Tensor]:
    return lambda like: torch.full_like(like, value)


ZEROS = torch.zeros_like


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


def test_timesteps_match_the_issue_examples() -> None:
    assert ddim_timesteps(1000, 10, 0.2) == [200, 100, 0]
    ts = ddim_timesteps(1000, 500, 0.2)
    assert ts[:3] == [200, 198, 196] and ts[-1] == 0 and len(ts) == 101


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

"""The discrete noise schedule of a DDPM and its pure functions.

Notation (Ho et al. 2020; Song et al. 2021, "DDIM"), timesteps indexed 0 … T−1:

* β_t the variance of forward step t, α_t = 1 − β_t, ᾱ_t = Π_{s≤t} α_s.
* Forward marginal (DDPM eq. 4):   q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I).
* One forward step (DDPM eq. 2):   q(x_{t+1} | x_t) = N(√α_{t+1} x_t, β_{t+1} I).
* DDIM step (DDIM eq. 12), from t to s < t with ε̂ = ε_θ(x_t, t):
  x_s = √ᾱ_s x̂_0 + √(1 − ᾱ_s − σ²) ε̂ + σ z,  x̂_0 = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t,
  σ = η √((1 − ᾱ_s)/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_s)  (DDIM eq. 16).
  The target index s = −1 means ᾱ_{−1} = 1 (the clean image).
* Ancestral DDPM step (DDPM eq. 6–7): the posterior q(x_{t−1} | x_t, x̂_0).

All coefficients are Python floats computed once in float64, so the sampler loops do no host↔device
traffic and no per-step tensor construction.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import ConfigError

NoiseFn = Callable[[Tensor], Tensor]


def linear_betas(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 2e-2) -> Tensor:
    """Linear β schedule of DDPM (Ho et al. 2020, §4), float64."""
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


def cosine_betas(num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Cosine schedule of Nichol & Dhariwal 2021 (eq. 17), float64."""
    def f(t: float) -> float:
        return math.cos((t / num_timesteps + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1 - f(i + 1) / f(i), max_beta) for i in range(num_timesteps)]
    return torch.tensor(betas, dtype=torch.float64)


@dataclass(frozen=True)
class NoiseSchedule:
    """A discrete variance schedule β_0 … β_{T−1} with cached ᾱ (as Python floats).

    Example:
        >>> import hetpure
        >>> s = hetpure.NoiseSchedule.linear()  # DDPM's β from 1e-4 to 0.02 over T = 1000 steps
        >>> s.num_timesteps, round(s.alpha_bar(199), 3)  # ᾱ at 0.2·T
        (1000, 0.659)
    """

    betas: tuple[float, ...]

    @classmethod
    def from_betas(cls, betas: Tensor | list[float]) -> NoiseSchedule:
        values = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if values.numel() < 2:
            raise ConfigError("a noise schedule needs at least 2 timesteps")
        if not bool(((values > 0) & (values < 1)).all()):
            raise ConfigError("every beta must lie in (0, 1); check the scheduler config")
        return cls(tuple(float(b) for b in values))

    @classmethod
    def linear(cls, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 2e-2) -> NoiseSchedule:
        return cls.from_betas(linear_betas(num_timesteps, beta_start, beta_end))

    def __post_init__(self) -> None:
        alpha_bars = torch.cumprod(1.0 - torch.tensor(self.betas, dtype=torch.float64), 0)
        object.__setattr__(self, "_alpha_bars", tuple(float(a) for a in alpha_bars))

    @property
    def num_timesteps(self) -> int:
        return len(self.betas)

    def alpha(self, t: int) -> float:
        """α_t = 1 − β_t."""
        return 1.0 - self.betas[t]

    def alpha_bar(self, t: int) -> float:
        """ᾱ_t = Π_{s≤t} α_s, with the convention ᾱ_{−1} = 1."""
        return 1.0 if t < 0 else self._alpha_bars[t]  # type: ignore[attr-defined]

    def betas_tensor(self) -> Tensor:
        return torch.tensor(self.betas, dtype=torch.float64)


def ddim_timesteps(num_timesteps: int, ddim_steps: int, t_frac: float) -> list[int]:
    """The descending DDIM timestep list that starts at noise level ``t_frac``.

    With stride k = T // S the nominal schedule is ``range(0, T − 1, k)``; purification keeps its first
    ``int(S·t_frac) + 1`` entries (those at or below t_frac·T) and runs them in reverse.
    Example: T = 1000, S = 10, t_frac = 0.2 → [200, 100, 0].
    """
    if ddim_steps < 1:
        raise ConfigError(f"ddim_steps must be >= 1, got {ddim_steps}")
    if ddim_steps > num_timesteps:
        raise ConfigError(f"ddim_steps={ddim_steps} exceeds the model's {num_timesteps} timesteps")
    stride = num_timesteps // ddim_steps
    nominal = list(range(0, num_timesteps - 1, stride))
    kept = nominal[: int(ddim_steps * t_frac) + 1]
    return kept[::-1]


def q_sample(schedule: NoiseSchedule, x0: Tensor, t: int, noise: NoiseFn) -> Tensor:
    """Draw x_t ~ q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I)  (DDPM eq. 4)."""
    a = schedule.alpha_bar(t)
    return math.sqrt(a) * x0 + math.sqrt(1.0 - a) * noise(x0)


def forward_step(schedule: NoiseSchedule, x: Tensor, t: int, noise: NoiseFn) -> Tensor:
    """One forward step x_t → x_{t+1} ~ N(√α_{t+1} x_t, β_{t+1} I)  (DDPM eq. 2)."""
    a = schedule.alpha(t + 1)
    return math.sqrt(a) * x + math.sqrt(1.0 - a) * noise(x)


def ddim_step(
    schedule: NoiseSchedule, x: Tensor, eps: Tensor, t: int, s: int, eta: float, noise: NoiseFn
) -> Tensor:
    """One DDIM update from timestep t to s < t (DDIM eq. 12 with σ of eq. 16); s = −1 is x_0."""
    a_t, a_s = schedule.alpha_bar(t), schedule.alpha_bar(s)
    x0_hat = (x - math.sqrt(1.0 - a_t) * eps) / math.sqrt(a_t)
    sigma = eta * math.sqrt((1.0 - a_s) / (1.0 - a_t) * (1.0 - a_t / a_s)) if eta > 0 else 0.0
    out = math.sqrt(a_s) * x0_hat + math.sqrt(max(1.0 - a_s - sigma**2, 0.0)) * eps
    if sigma > 0:
        out = out + sigma * noise(x)
    return out


def ddpm_step(schedule: NoiseSchedule, x: Tensor, eps: Tensor, t: int, noise: NoiseFn) -> Tensor:
    """One ancestral step x_t → x_{t−1} from the posterior q(x_{t−1} | x_t, x̂_0) (DDPM eq. 6–7).

    Mean μ̃ = (√ᾱ_{t−1} β_t/(1 − ᾱ_t)) x̂_0 + (√α_t (1 − ᾱ_{t−1})/(1 − ᾱ_t)) x_t, variance
    β̃_t = β_t (1 − ᾱ_{t−1})/(1 − ᾱ_t); no noise is added at t = 0.
    """
    a_t, a_prev, beta = schedule.alpha_bar(t), schedule.alpha_bar(t - 1), schedule.betas[t]
    x0_hat = (x - math.sqrt(1.0 - a_t) * eps) / math.sqrt(a_t)
    mean = (math.sqrt(a_prev) * beta / (1.0 - a_t)) * x0_hat + (
        math.sqrt(1.0 - beta) * (1.0 - a_prev) / (1.0 - a_t)
    ) * x
    if t == 0:
        return mean
    var = beta * (1.0 - a_prev) / (1.0 - a_t)
    return mean + math.sqrt(var) * noise(x)

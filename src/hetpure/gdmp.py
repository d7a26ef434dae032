"""GDMP (Wang et al. 2022, "Guided Diffusion Model for Adversarial Purification", arXiv:2205.14969).

Each of ``gdmp_iterations`` purification iterations diffuses the current image to t* and runs the ancestral
DDPM chain back to the clean image, every reverse step guided toward the noised *input* (the paper's guided
sampling; its code: purification/diff_purify.py). With the reference y_t ~ q(y_t | x_adv) drawn afresh at every
step (DDPM eq. 4),

    x_{t−1} ~ N(μ_θ(x_t, t) + σ_t² · s_t · ∇_{x_t} G(x_t, y_t),  σ_t² I),   s_t = s · √((1 − ᾱ_t)/ᾱ_t),

where μ_θ is the DDPM posterior mean (DDPM eq. 7) at the clipped x̂_0 = clip((x_t − √(1 − ᾱ_t) ε_θ)/√ᾱ_t, ±1),
σ_t² = β_t (DDPM §3.2, the "fixedlarge" variance of GDMP's CIFAR-10 model), and G is the guidance objective
of one image: G = −mean((x − y)²) ("mse") or G = SSIM(x, y) ("ssim"; Wang et al. 2004, eq. 13,
11×11 Gaussian window, σ = 1.5, K1 = 0.01, K2 = 0.03, L = 1, as the pytorch_ssim package GDMP uses).

The guidance gradient is taken inside the sampler with ``torch.autograd.grad(create_graph=True)`` whenever
the step is differentiated, so an attack's exact gradient flows through ∇G (second order) and through y_t
(which depends on the attacked input). The chain from n − 1 = ⌊t*·T⌋ − 1 has one ε-model call per step; a
step count K < n (the attack's surrogate) runs K evenly spaced timesteps with the respaced posterior
(β' = 1 − ᾱ_t/ᾱ_s for the step t → s).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import PurifyConfig
from .devices import check_timesteps
from .errors import ConfigError
from .models.base import EpsModel
from .purify import Purifier
from .sampling import ReverseState, Trace, _queue, _run_step, _timestep_tensor, active_trace
from .schedule import NoiseFn, NoiseSchedule, q_sample
from .sde import check_t_star, start_index

GUIDANCES = ("mse", "ssim")
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03


# --------------------------------------------------------------------------------------------------
# Guidance objectives (per image) and their gradient
# --------------------------------------------------------------------------------------------------


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, dtype: torch.dtype = torch.float32,
                    device: torch.device | str = "cpu") -> Tensor:
    """The normalised 2-D Gaussian window w = g gᵀ, g_i ∝ exp(−(i − ⌊size/2⌋)²/(2σ²)) (Wang et al. 2004, §III-C)."""
    i = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(i**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g).to(dtype=dtype, device=device)


def ssim(x: Tensor, y: Tensor, window: Tensor | None = None) -> Tensor:
    """Mean SSIM of each image pair, shape (B,) (Wang et al. 2004, eq. 13):

    SSIM = ((2 μ_x μ_y + C1)(2 σ_xy + C2)) / ((μ_x² + μ_y² + C1)(σ_x² + σ_y² + C2)), C1 = (K1·L)², C2 = (K2·L)²,

    with local Gaussian-weighted statistics per channel (zero padding), averaged over channels and pixels.
    """
    w = gaussian_window(dtype=x.dtype, device=x.device) if window is None else window.to(x.dtype)
    c, k = x.shape[1], w.shape[-1]
    kernel = w.expand(c, 1, k, k)

    def blur(v: Tensor) -> Tensor:
        return F.conv2d(v, kernel, padding=k // 2, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(1)


def guidance_objective(x: Tensor, y: Tensor, kind: str) -> Tensor:
    """G(x, y) of each image, shape (B,): −mean((x − y)²) for "mse", SSIM(x, y) for "ssim" (GDMP's guidance)."""
    if kind == "mse":
        return -((x - y) ** 2).flatten(1).mean(1)
    if kind == "ssim":
        return ssim(x, y)
    raise ConfigError(f"gdmp_guidance must be one of {GUIDANCES}, got {kind!r}")


def guidance_gradient(x: Tensor, y: Tensor, kind: str) -> Tensor:
    """∇_x G(x, y) per image, by ``torch.autograd.grad``; with ``create_graph`` whenever x or y carries a graph
    (an attack differentiates the sampler), so the gradient itself is differentiable in x and y."""
    differentiable = torch.is_grad_enabled() and (x.requires_grad or y.requires_grad)
    with torch.enable_grad():
        xg = x if differentiable and x.requires_grad else x.detach().requires_grad_(True)
        objective = guidance_objective(xg, y if differentiable else y.detach(), kind).sum()
        (grad,) = torch.autograd.grad(objective, xg, create_graph=differentiable)
    return grad


# --------------------------------------------------------------------------------------------------
# The guided reverse step and the sampler
# --------------------------------------------------------------------------------------------------


def guided_step(schedule: NoiseSchedule, x: Tensor, eps: Tensor, grad: Tensor, t: int, s: int, scale: float,
                z: Tensor | None) -> Tensor:
    """GDMP's guided ancestral step t → s (s = t − 1 in the full chain; s = −1 is the clean image).

    With β' = 1 − ᾱ_t/ᾱ_s (β_t when s = t − 1) and x̂_0 = clip((x − √(1 − ᾱ_t) ε)/√ᾱ_t, −1, 1):
    μ = (√ᾱ_s β'/(1 − ᾱ_t)) x̂_0 + (√(1 − β') (1 − ᾱ_s)/(1 − ᾱ_t)) x  (DDPM eq. 7);
    x_s = μ + β' · s_t · ∇G + √β' z with s_t = scale·√((1 − ᾱ_t)/ᾱ_t)  (GDMP's guided step); no noise
    when ``z`` is None (the last step).

    >>> import torch
    >>> from hetpure.schedule import NoiseSchedule
    >>> schedule = NoiseSchedule.from_betas([0.1, 0.2, 0.3])  # ᾱ_0 = 0.9, ᾱ_1 = 0.72
    >>> x = torch.tensor([0.5])
    >>> mean = guided_step(schedule, x, eps=torch.tensor([0.1]), grad=torch.tensor([0.3]), t=1, s=0, scale=2.0, z=None)
    >>> round(float(mean), 6)  # μ = 0.5167593, plus β·s·√(0.28/0.72)·∇G = 0.0748331
    0.591592
    """
    a_t, a_s = schedule.alpha_bar(t), schedule.alpha_bar(s)
    beta = 1.0 - a_t / a_s
    x0_hat = ((x - math.sqrt(1.0 - a_t) * eps) / math.sqrt(a_t)).clamp(-1.0, 1.0)
    mean = (math.sqrt(a_s) * beta / (1.0 - a_t)) * x0_hat + (math.sqrt(1.0 - beta) * (1.0 - a_s) / (1.0 - a_t)) * x
    mean = mean + (beta * scale * math.sqrt((1.0 - a_t) / a_t)) * grad
    return mean if z is None else mean + math.sqrt(beta) * z


def gdmp_timesteps(n: int, steps: int | None = None) -> list[int]:
    """The descending timesteps of one iteration: n − 1 … 0 (all n), or ``steps`` < n of them evenly spaced
    from n − 1 to 0 (the respaced surrogate chain)."""
    k = n if steps is None else max(1, min(steps, n))
    if k == n:
        return list(range(n - 1, -1, -1))
    if k == 1:
        return [n - 1]
    return sorted({math.floor(i * (n - 1) / (k - 1) + 0.5) for i in range(k)}, reverse=True)


def _gdmp_step(eps_model: EpsModel, x0: Tensor, guidance: str, scale: float, t: int, s: int, x: Tensor,
               *zs: Tensor) -> Tensor:
    """One guided step: the reference y_t = √ᾱ_t x0 + √(1 − ᾱ_t) z_ref (DDPM eq. 4, the noised input), ∇G at
    x_t, ε_θ(x_t, t), then :func:`guided_step`. ``zs`` = (z_ref, z) with z absent on the last step."""
    schedule = eps_model.schedule
    y = q_sample(schedule, x0, t, _queue(zs[:1]))
    grad = guidance_gradient(x, y, guidance)
    eps = eps_model(x, _timestep_tensor(x, t))
    return guided_step(schedule, x, eps, grad, t, s, scale, zs[1] if len(zs) > 1 else None)


def sample_gdmp(
    eps_model: EpsModel, x0: Tensor, *, t_star: float, iterations: int = 4, guidance: str = "mse",
    scale: float = 28687.5, steps: int | None = None, noise: NoiseFn = torch.randn_like, use_checkpoint: bool = False,
    trace: Trace | None = None,
) -> Tensor:
    """GDMP's purification on the diffusion scale (GDMP's loop): ``iterations`` times
    x ← q(x_{n−1} | x) (DDPM eq. 4, n = ⌊t*·T⌋; the first iteration starts from the input x0), then the guided
    chain of :func:`gdmp_timesteps` down to the clean image, guided toward q(y_t | x0).

    Each step draws its noise (reference, then step noise) before it runs, so checkpointing replays it.
    ``trace`` (default: :func:`hetpure.sampling.active_trace`) sees the state after every guided step t → s of
    every iteration, at timestep s, with the input x0 as the chain's x_0.
    """
    T = eps_model.num_timesteps
    n = start_index(t_star, T)
    check_timesteps(n - 1, T)
    ts = gdmp_timesteps(n, steps)
    trace = active_trace(trace)
    x = x0
    for _ in range(iterations):
        x = q_sample(eps_model.schedule, x, n - 1, noise)
        for t, s in zip(ts, [*ts[1:], -1]):
            step = functools.partial(_gdmp_step, eps_model, x0, guidance, scale, t, s)
            x = _run_step(step, x, 2 if s >= 0 else 1, noise, use_checkpoint)
            if trace is not None:
                trace(ReverseState(s, eps_model.schedule.alpha_bar(s), x, x0))
    return x


# --------------------------------------------------------------------------------------------------
# The purifier
# --------------------------------------------------------------------------------------------------


def check_config(config: PurifyConfig, num_timesteps: int) -> PurifyConfig:
    """Raise :class:`ConfigError` for settings GDMP cannot run; return ``config``."""
    check_t_star(config.t_star, num_timesteps, "gdmp", "GDMP's CIFAR-10 setting: 36 of 1000 steps, t_star=0.036")
    if config.gdmp_guidance not in GUIDANCES:
        raise ConfigError(f"gdmp_guidance must be one of {GUIDANCES}, got {config.gdmp_guidance!r}")
    if config.gdmp_iterations < 1:
        raise ConfigError(f"gdmp_iterations must be >= 1, got {config.gdmp_iterations}")
    if config.gdmp_scale < 0:
        raise ConfigError(f"gdmp_scale must be >= 0, got {config.gdmp_scale}")
    if config.runs < 1 or config.max_batch < 1:
        raise ConfigError(f"runs and max_batch must be >= 1, got runs={config.runs}, max_batch={config.max_batch}")
    return config


def gdmp_eps_calls(config: PurifyConfig, num_timesteps: int = 1000, steps: int | None = None) -> int:
    """ε-model calls of one purification: iterations × the chain's steps (``steps`` overrides n = ⌊t*·T⌋)."""
    n = start_index(config.t_star or 0.0, num_timesteps)
    return config.gdmp_iterations * len(gdmp_timesteps(n, steps))


class GDMPPurifier(Purifier):
    """GDMP's guided purification (Wang et al. 2022) from ``t_star``: ``gdmp_iterations`` guided DDPM chains,
    guidance ``gdmp_guidance`` ("mse" or "ssim") with scale ``gdmp_scale``.

    >>> import torch
    >>> from hetpure import GDMPPurifier, PurifyConfig
    >>> from hetpure.demo import load_demo_models
    >>> eps_model, classifier = load_demo_models()  # the embedded MNIST DDPM and CNN
    >>> purifier = GDMPPurifier(eps_model, classifier, PurifyConfig(t_star=0.01, gdmp_iterations=2, runs=2))
    >>> purifier.eps_calls(), purifier.eps_calls(4)  # 2 iterations × 10 steps; 4 steps each: a surrogate
    (20, 8)
    >>> x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    >>> purifier.purify(x, generator=torch.Generator().manual_seed(1)).shape
    torch.Size([2, 1, 28, 28])
    """

    uniform = True

    def _validated(self, config: PurifyConfig) -> PurifyConfig:
        return check_config(config, self.eps_model.num_timesteps)

    def _steps(self, override: int | None) -> int:
        return override or start_index(self.config.t_star or 0.0, self.eps_model.num_timesteps)

    def eps_calls(self, ddim_steps: int | None = None) -> int:
        return gdmp_eps_calls(self.config, self.eps_model.num_timesteps, ddim_steps)

    def _sample(
        self, x0: Tensor, x: Tensor, noise: NoiseFn, ddim_steps: int, use_checkpoint: bool, levels: Tensor | None
    ) -> Tensor:
        cfg = self.config
        return sample_gdmp(self.eps_model, x0, t_star=float(cfg.t_star or 0.0), iterations=cfg.gdmp_iterations,
                           guidance=cfg.gdmp_guidance, scale=cfg.gdmp_scale, steps=ddim_steps, noise=noise,
                           use_checkpoint=use_checkpoint)

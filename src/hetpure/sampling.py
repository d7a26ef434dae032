"""The samplers, as short functions on the diffusion scale ([-1, 1]) that can be read against the papers:
the heterogeneous-noise sampler (Pei et al. 2025, Alg. 1), the uniform DDIM / DDPM baseline, their step
functions and ε-call counts. Every Gaussian draw goes through one ``noise`` callable and is drawn before its
step, so a checkpointed step replays it exactly in the backward pass.

The samplers take an optional ``trace``, an observer of the reverse chain (:class:`ReverseState` after every
reverse step); by default it is the one of the innermost :func:`tracing` block, so the states of a purifier's
differentiable pass can be read without changing any purifier (DiffAttack's deviated-reconstruction loss,
:mod:`hetpure.attacks.diffattack`). Tracing changes no number: the observer only sees the states.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint as _checkpoint

from .config import PurifyConfig
from .devices import check_timesteps
from .models.base import EpsModel
from .schedule import NoiseFn, ddim_step, ddim_timesteps, ddpm_step, forward_step, q_sample

# --------------------------------------------------------------------------------------------------
# The reverse-chain observer
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReverseState:
    """The state after one reverse step, as an observer sees it.

    ``x`` is the chain's state x_t at time ``t`` (an integer timestep; DiffPure's continuous time in [0, 1]; −1 is
    the clean image), ``alpha_bar`` its ᾱ_t (ᾱ_{−1} = 1), so that the forward marginal of the chain's input ``x0``
    (diffusion scale) at the same time is q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I) (DDPM eq. 4). ``x`` and ``x0``
    carry the sampler's autograd graph when it is differentiated.
    """

    t: float
    alpha_bar: float
    x: Tensor
    x0: Tensor


Trace = Callable[[ReverseState], None]
_ACTIVE_TRACE: contextvars.ContextVar[Trace | None] = contextvars.ContextVar("hetpure_trace", default=None)


@contextlib.contextmanager
def tracing(trace: Trace) -> Iterator[Trace]:
    """Within the block, every sampler called without its own ``trace`` reports each reverse step to ``trace``.

    Example:
        >>> import torch, hetpure
        >>> from hetpure.demo import load_demo_models
        >>> from hetpure.sampling import tracing
        >>> eps, clf = load_demo_models()  # the small MNIST models in the package
        >>> pur = hetpure.UniformPurifier(eps, clf, hetpure.PurifyConfig(t_star=0.2, ddim_steps=10))
        >>> states = []
        >>> with tracing(states.append):
        ...     _ = pur.purify(torch.rand(1, 1, 28, 28))
        >>> [(s.t, round(s.alpha_bar, 3)) for s in states]  # the DDIM steps 200 → 100 → 0
        [(100, 0.895), (0, 1.0)]
    """
    token = _ACTIVE_TRACE.set(trace)
    try:
        yield trace
    finally:
        _ACTIVE_TRACE.reset(token)


def active_trace(trace: Trace | None = None) -> Trace | None:
    """``trace`` if given, else the observer of the innermost :func:`tracing` block (None outside one)."""
    return trace if trace is not None else _ACTIVE_TRACE.get()


# --------------------------------------------------------------------------------------------------
# Samplers (diffusion scale). Each step draws its Gaussian noise first and then applies a pure
# function of (x, noise), so gradient checkpointing replays exactly the noise of the forward pass.
# --------------------------------------------------------------------------------------------------


def _timestep_tensor(x: Tensor, t: int) -> Tensor:
    return torch.full((x.shape[0],), float(t), device=x.device, dtype=torch.float32)


def _queue(noises: Sequence[Tensor]) -> NoiseFn:
    it = iter(noises)
    return lambda like: next(it)


def _run_step(step: Callable[..., Tensor], x: Tensor, n_noise: int, noise: NoiseFn, use_checkpoint: bool) -> Tensor:
    zs = [noise(x) for _ in range(n_noise)]
    if use_checkpoint and torch.is_grad_enabled():
        return _checkpoint(step, x, *zs, use_reentrant=False, preserve_rng_state=False)  # noise drawn above
    return step(x, *zs)


def _report(trace: Trace | None, eps_model: EpsModel, t: int, x: Tensor, x0: Tensor) -> None:
    """Hand the state x_t after a reverse step to ``trace`` (nothing when there is none)."""
    if trace is not None:
        trace(ReverseState(t, eps_model.schedule.alpha_bar(t), x, x0))


def _mixing_step(
    eps_model: EpsModel, x0: Tensor, known: Tensor, t: int, s: int, resample_steps: int, eta: float,
    x: Tensor, *zs: Tensor,
) -> Tensor:
    """Stage-1 step t → s (Alg. 1 as restated in docs/method.md, lines 6–8).

    x ← m_t·x + (1 − m_t)·q(x_t | x_0) with fresh noise (``known`` = 1 − m_t marks the pixels reset to the
    original); then U single forward steps x ← √α_{t+1} x + √(1 − α_{t+1}) z, t ← t + 1; then one DDIM step
    from t + U to s with ε_θ(x, t + U).
    """
    schedule = eps_model.schedule
    noise = _queue(zs)
    x = x + known * (q_sample(schedule, x0, t, noise) - x)  # Alg. 1, line 6: reset the pixels not yet generated
    for u in range(resample_steps):  # line 7: U single forward steps
        x = forward_step(schedule, x, t + u, noise)
    t_up = t + resample_steps
    return ddim_step(schedule, x, eps_model(x, _timestep_tensor(x, t_up)), t_up, s, eta, noise)  # line 8


def _repaint_step(
    eps_model: EpsModel, x0: Tensor, known: Tensor, t: int, s: int, jumps: int, eta: float, x: Tensor, *zs: Tensor
) -> Tensor:
    """Stage-1 step t → s with RePaint's resampling (Lugmayr et al. 2022, Alg. 1) instead of U forward steps:
    r times {x ← m·x + (1 − m)·q(x_t | x_0); DDIM step t → s}, re-noising x_s → x_t with
    q(x_t | x_s) = N(√(ᾱ_t/ᾱ_s) x_s, (1 − ᾱ_t/ᾱ_s) I) between the round trips."""
    schedule = eps_model.schedule
    noise = _queue(zs)
    ratio = schedule.alpha_bar(t) / schedule.alpha_bar(s)
    for j in range(jumps):
        x = x + known * (q_sample(schedule, x0, t, noise) - x)
        x = ddim_step(schedule, x, eps_model(x, _timestep_tensor(x, t)), t, s, eta, noise)
        if j < jumps - 1:
            x = math.sqrt(ratio) * x + math.sqrt(1.0 - ratio) * noise(x)
    return x


def _ddim_step(eps_model: EpsModel, t: int, s: int, eta: float, x: Tensor, *zs: Tensor) -> Tensor:
    """Stage-2 (and uniform) step: plain DDIM from t to s (DDIM eq. 12)."""
    return ddim_step(eps_model.schedule, x, eps_model(x, _timestep_tensor(x, t)), t, s, eta, _queue(zs))


def _ddpm_step(eps_model: EpsModel, t: int, x: Tensor, *zs: Tensor) -> Tensor:
    return ddpm_step(eps_model.schedule, x, eps_model(x, _timestep_tensor(x, t)), t, _queue(zs))


# Float tolerances of the stage tests. Timesteps are integers and levels·T, t_s·T are products of floats that
# should be integers or lie between them (t_s = 0.1, T = 1000 gives 100.00000000000001 or 99.99999999999999):
# 1e-9 keeps "s ≥ t_s·T" true at s = 100, and 1e-6 keeps "level·T < t" false when level·T = t up to rounding.
_STAGE_TOL = 1e-9
_LEVEL_TOL = 1e-6


def in_stage_one(s: int, t_s: float, num_timesteps: int) -> bool:
    """Whether the DDIM step that ends at timestep ``s`` is a stage-1 (mixing) step: s ≥ t_s·T (Alg. 1)."""
    return s >= t_s * num_timesteps - _STAGE_TOL


def sample_heterogeneous(
    eps_model: EpsModel,
    x0: Tensor,
    levels: Tensor,
    *,
    t_s: float,
    t_l: float,
    ddim_steps: int,
    resample_steps: int = 3,
    eta: float = 0.0,
    noise: NoiseFn = torch.randn_like,
    use_checkpoint: bool = False,
    repaint_jumps: int = 1,
    trace: Trace | None = None,
) -> Tensor:
    """Heterogeneous-noise DDIM sampler (Pei et al. 2025, Alg. 1), on the diffusion scale.

    ``levels`` (B or 1, 1, H, W) is each pixel's start level as a fraction of T, in [t_s, t_l]: a binary
    mask m gives levels = t_s + (t_l − t_s)·m. With the DDIM timesteps t_0 = t_l·T > … > 0:

    1. x ← q(x_{t_0} | x_0) for the whole image;
    2. stage 1, each pair t → s with s ≥ t_s·T: pixels whose level is below t are reset to a fresh
       q(x_t | x_0) (the generated region m_t = [level·T ≥ t] keeps x), U forward steps, a DDIM step;
    3. stage 2, the remaining pairs: plain DDIM for the whole image.

    Returns the sampler's final x at timestep 0 (not clamped). ``trace`` (default: :func:`active_trace`) sees
    the state after every DDIM step t → s, at timestep s.

    Example:
        >>> import torch, hetpure
        >>> from hetpure.demo import load_demo_models
        >>> eps, _ = load_demo_models()  # the small MNIST models in the package
        >>> x0 = torch.rand(2, 1, 28, 28) * 2 - 1  # images on the diffusion scale [-1, 1]
        >>> mask = torch.zeros(2, 1, 28, 28)
        >>> mask[..., 8:20, 8:20] = 1  # 1 = attended: starts at t_l
        >>> levels = 0.2 + (0.4 - 0.2) * mask  # each pixel's start level
        >>> x = hetpure.sample_heterogeneous(eps, x0, levels, t_s=0.2, t_l=0.4, ddim_steps=10)
        >>> tuple(x.shape)
        (2, 1, 28, 28)
    """
    T = eps_model.num_timesteps
    ts = ddim_timesteps(T, ddim_steps, t_l)
    check_timesteps(ts[0] + (0 if repaint_jumps > 1 else resample_steps), T)
    n_extra = 1 if eta > 0 else 0
    trace = active_trace(trace)
    x = q_sample(eps_model.schedule, x0, ts[0], noise)  # Alg. 1, line 3
    level_steps = levels * T
    for t, s in zip(ts[:-1], ts[1:]):  # Alg. 1, line 4
        if in_stage_one(s, t_s, T):  # line 5: stage 1
            known = (level_steps < t - _LEVEL_TOL).to(x.dtype)  # the paper's 1 − m_t: pixels not yet generated
            if repaint_jumps > 1:
                step = functools.partial(_repaint_step, eps_model, x0, known, t, s, repaint_jumps, eta)
                n_noise = repaint_jumps * (1 + n_extra) + repaint_jumps - 1
            else:
                step = functools.partial(_mixing_step, eps_model, x0, known, t, s, resample_steps, eta)
                n_noise = 1 + resample_steps + n_extra
            x = _run_step(step, x, n_noise, noise, use_checkpoint)
        else:
            x = _run_step(functools.partial(_ddim_step, eps_model, t, s, eta), x, n_extra, noise,
                          use_checkpoint)  # line 9: stage 2, plain DDIM
        _report(trace, eps_model, s, x, x0)
    return x  # line 10 (the purifier maps it back to [0, 1])


def sample_uniform(
    eps_model: EpsModel,
    x0: Tensor,
    *,
    t_star: float,
    ddim_steps: int = 500,
    eta: float = 0.0,
    sampler: str = "ddim",
    noise: NoiseFn = torch.randn_like,
    use_checkpoint: bool = False,
    trace: Trace | None = None,
) -> Tensor:
    """Uniform (DiffPure-style) purification from t*, on the diffusion scale.

    ``ddim``: x ← q(x_{t_0} | x_0) at t_0 = the DDIM schedule's top entry ≤ t*·T, then DDIM steps down to
    timestep 0 (the heterogeneous sampler without stage 1). ``ddpm``: x ← q(x_{n−1} | x_0) with n = ⌊t*·T⌋,
    then n ancestral steps n−1 … 0 (DDPM eq. 6–7; DiffPure's discrete sampler), ending at the clean image.
    ``trace`` (default: :func:`active_trace`) sees the state after every step (at t − 1 for the step from t).

    Example:
        >>> import torch, hetpure
        >>> from hetpure.demo import load_demo_models
        >>> eps, _ = load_demo_models()  # the small MNIST models in the package
        >>> x0 = torch.rand(2, 1, 28, 28) * 2 - 1  # images on the diffusion scale [-1, 1]
        >>> x = hetpure.sample_uniform(eps, x0, t_star=0.2, ddim_steps=10)  # 2 DDIM steps from t = 200
        >>> tuple(x.shape)
        (2, 1, 28, 28)
    """
    schedule = eps_model.schedule
    trace = active_trace(trace)
    if sampler == "ddpm":
        n = int(t_star * eps_model.num_timesteps)
        check_timesteps(n - 1, eps_model.num_timesteps)
        x = q_sample(schedule, x0, n - 1, noise)
        for t in range(n - 1, -1, -1):
            x = _run_step(functools.partial(_ddpm_step, eps_model, t), x, int(t > 0), noise, use_checkpoint)
            _report(trace, eps_model, t - 1, x, x0)
        return x
    ts = ddim_timesteps(eps_model.num_timesteps, ddim_steps, t_star)
    check_timesteps(ts[0], eps_model.num_timesteps)
    x = q_sample(schedule, x0, ts[0], noise)
    n_extra = 1 if eta > 0 else 0
    for t, s in zip(ts[:-1], ts[1:]):
        x = _run_step(functools.partial(_ddim_step, eps_model, t, s, eta), x, n_extra, noise, use_checkpoint)
        _report(trace, eps_model, s, x, x0)
    return x


def eps_calls(config: PurifyConfig, num_timesteps: int = 1000, uniform: bool = False) -> int:
    """ε-model calls of one purification (the U forward steps cost none)."""
    if uniform and config.sampler == "ddpm":
        return int((config.t_star or 0) * num_timesteps)
    t_top = config.t_star if uniform else config.t_l
    ts = ddim_timesteps(num_timesteps, config.ddim_steps, t_top or 0.0)
    if uniform or config.repaint_jumps == 1:
        return len(ts) - 1
    stage1 = sum(1 for s in ts[1:] if in_stage_one(s, config.t_s, num_timesteps))
    return len(ts) - 1 + stage1 * (config.repaint_jumps - 1)

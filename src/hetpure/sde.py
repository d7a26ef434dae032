"""DiffPure (Nie et al., ICML 2022): diffuse to t*, then solve the reverse VP-SDE from t* to 0.

Continuous time t ∈ [0, 1]. Citations: Song et al. 2021 (ICLR, "Score-based generative modeling through SDEs"),
by equation number; DiffPure (arXiv:2205.07460), its section "Diffusion purification", by formula; Kloeden &
Platen 1992, §9.1 (the Euler approximation).

* VP-SDE (Song et al. 2021, eq. 11):  dx = −½β(t) x dt + √β(t) dw, with β(t) = β_min + t(β_max − β_min).
  ᾱ(t) = exp(−∫₀ᵗ β(s) ds) = exp(−½(β_max − β_min)t² − β_min t) and σ(t) = √(1 − ᾱ(t)), so that
  q(x_t | x_0) = N(√ᾱ(t) x_0, σ(t)² I) (Song et al. 2021, appendix B; DiffPure's diffusion step
  x(t*) = √ᾱ(t*) x_a + √(1 − ᾱ(t*)) ε).
* The linear DDPM schedule β_i = β_min/T + i(β_max − β_min)/(T(T − 1)), i = 0 … T−1, is its
  discretisation: β_min = T·β_0 and β_max = T·β_{T−1} (0.1 and 20 for DDPM's 1e-4 … 2e-2 at T = 1000).
* Reverse-time SDE (Song et al. 2021, eq. 6; DiffPure's x̂(0) = sdeint(x(t*), f_rev, g_rev, w̄, t*, 0)):
  dx = f_rev(x, t) dt + g_rev(t) dw̄ from t* down to 0 (t_end, below), with f_rev(x, t) = −½β(t)[x + 2 s_θ(x, t)],
  g_rev(t) = √β(t), and the score s_θ(x, t) = −ε_θ(x, t)/σ(t).
* The discrete ε-model is called at timestep t·(T − 1) (continuous, not rounded): score_sde's convention for
  its continuous-time VP models, which DiffPure uses for its CIFAR-10 model.
* Euler–Maruyama with N steps of h = (t* − t_end)/N, t_k = t* − k·h, k = 0 … N−1 (Kloeden & Platen 1992,
  §9.1): x_{t_k − h} = x_{t_k} − f_rev(x_{t_k}, t_k)·h + √(β(t_k)·h)·z_k. The solver stops at t_end = 1e-5,
  as DiffPure does (its ``epsilon_dt1``): σ(0) = 0, and the adjoint pass evaluates the drift at the end time.

The start x_{t*} ← q(x_{n−1} | x_0) uses the model's discrete ᾱ_{n−1}, n = ⌊t*·T⌋ (DiffPure's
``a[t − 1]``), and the solver starts at continuous time n/T (DiffPure's ``1 − t/1000``).

Gradients: :func:`sample_diffpure` is differentiable; with ``use_checkpoint`` each step is recomputed in the
backward pass with the noise drawn before it (:func:`hetpure.purify._run_step`). :func:`sample_diffpure_adjoint`
gives DiffPure's own gradient, torchsde's stochastic adjoint (Li et al. 2020), which re-solves the SDE
backwards instead of storing it: the same forward pass, an approximate gradient.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .config import PurifyConfig
from .devices import check_timesteps
from .errors import ConfigError, HetpureError
from .models.base import EpsModel
from .purify import PurifiedClassifier, Purifier
from .sampling import ReverseState, Trace, _run_step, active_trace
from .schedule import NoiseFn, NoiseSchedule, q_sample

INSTALL_SDE = "pip install 'hetpure[sde]'"
#: where the reverse solver stops (DiffPure's ``epsilon_dt1``): the score −ε/σ(t) is singular at t = 0
T_END = 1e-5


@dataclass(frozen=True)
class VPSDE:
    """The continuous VP-SDE of a linear β schedule: β(t) = β_min + t(β_max − β_min), t ∈ [0, 1]."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    num_timesteps: int = 1000

    @classmethod
    def from_schedule(cls, schedule: NoiseSchedule) -> VPSDE:
        """β_min = T·β_0, β_max = T·β_{T−1}; refuses a schedule that is not linear (the VP-SDE would not be
        its continuous form)."""
        T = schedule.num_timesteps
        betas = schedule.betas
        lo, hi = betas[0], betas[-1]
        linear = all(abs(b - (lo + i * (hi - lo) / (T - 1))) <= 1e-6 * hi for i, b in enumerate(betas))
        if not linear:
            raise ConfigError(
                "defense.method diffpure solves the VP-SDE, the continuous form of a linear β schedule; this "
                f"ε-model's schedule is not linear (β_0 = {lo:.3g}, β_T-1 = {hi:.3g}); use a linear-schedule model "
                "or defense.method uniform (sampler: ddpm)"
            )
        return cls(beta_min=T * lo, beta_max=T * hi, num_timesteps=T)

    def beta(self, t: float) -> float:
        """β(t) = β_min + t(β_max − β_min), the β of the VP-SDE (Song et al. 2021, eq. 11; appendix B)."""
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def alpha_bar(self, t: float) -> float:
        """ᾱ(t) = exp(−∫₀ᵗ β) = exp(−½(β_max − β_min)t² − β_min t): the VP perturbation kernel's mean factor squared
        (Song et al. 2021, appendix B)."""
        return math.exp(-0.5 * (self.beta_max - self.beta_min) * t * t - self.beta_min * t)

    def sigma(self, t: float) -> float:
        """σ(t) = √(1 − ᾱ(t)), the standard deviation of q(x_t | x_0)."""
        return math.sqrt(1.0 - self.alpha_bar(t))

    def model_timestep(self, t: float) -> float:
        """The discrete model's timestep for continuous t: t·(T − 1) (score_sde's VP convention, DiffPure's
        CIFAR-10 setting)."""
        return t * (self.num_timesteps - 1)


def reverse_drift(sde: VPSDE, x: Tensor, eps: Tensor, t: float) -> Tensor:
    """f_rev(x, t) = −½β(t)[x + 2 s_θ(x, t)] with s_θ = −ε_θ/σ(t), i.e. −½β(t)x + β(t)ε_θ/σ(t)
    (DiffPure's f_rev; the drift of the reverse-time SDE, Song et al. 2021 eq. 6, for the VP-SDE of eq. 11)."""
    beta = sde.beta(t)
    return -0.5 * beta * x + (beta / sde.sigma(t)) * eps


def euler_maruyama_step(sde: VPSDE, x: Tensor, eps: Tensor, t: float, h: float, z: Tensor | None) -> Tensor:
    """One Euler–Maruyama step of the reverse SDE from t to t − h (Kloeden & Platen 1992, §9.1):
    x ← x − f_rev(x, t)·h + √(β(t)·h)·z; ``z = None`` is the zero-noise step.

    >>> import torch
    >>> x = euler_maruyama_step(VPSDE(), torch.tensor([0.5]), torch.tensor([0.2]), t=0.1, h=1e-3, z=None)
    >>> round(float(x), 7)  # 0.5 + ½·2.09·0.5·1e-3 − 2.09·0.2·1e-3/σ(0.1), σ(0.1) = 0.3220525
    0.4992246
    """
    out = x - reverse_drift(sde, x, eps, t) * h
    if z is not None:
        out = out + math.sqrt(sde.beta(t) * h) * z
    return out


def step_size(t_start: float, steps: int) -> float:
    """h = (t* − t_end)/N."""
    return (t_start - T_END) / steps


def solver_times(t_start: float, steps: int) -> list[float]:
    """The N times t_k = t* − k·h, k = 0 … N−1, at which the drift is evaluated (the last step ends at t_end)."""
    h = step_size(t_start, steps)
    return [t_start - k * h for k in range(steps)]


def check_t_star(t_star: float | None, num_timesteps: int, method: str, setting: str) -> None:
    """A method that starts from t* needs one in (0, 1] that is at least one timestep; ``setting`` is the
    authors' value, named in the error."""
    if t_star is None:
        raise ConfigError(f"a {method} purifier needs t_star ({setting})")
    if not 0 < t_star <= 1:
        raise ConfigError(f"t_star must lie in (0, 1], got {t_star}")
    start_index(t_star, num_timesteps)


def start_index(t_star: float, num_timesteps: int) -> int:
    """n = ⌊t*·T⌋ (the discrete level DiffPure diffuses to, as ``args.t``); at least 1."""
    n = int(t_star * num_timesteps + 1e-9)
    if n < 1:
        raise ConfigError(f"t_star={t_star} is below one timestep of {num_timesteps}; raise it")
    return n


def _em_step(eps_model: EpsModel, sde: VPSDE, t: float, h: float, x: Tensor, z: Tensor) -> Tensor:
    eps = eps_model(x, torch.full((x.shape[0],), sde.model_timestep(t), device=x.device, dtype=torch.float32))
    return euler_maruyama_step(sde, x, eps, t, h, z)


def sample_diffpure(
    eps_model: EpsModel, x0: Tensor, *, t_star: float, sde_steps: int = 100, noise: NoiseFn = torch.randn_like,
    use_checkpoint: bool = False, trace: Trace | None = None,
) -> Tensor:
    """DiffPure's purification on the diffusion scale: x ← q(x_{n−1} | x_0) (DDPM eq. 4 with the model's discrete
    ᾱ, as DiffPure's code does), then ``sde_steps`` Euler–Maruyama steps of DiffPure's reverse VP-SDE
    from n/T to t_end = 1e-5.

    One ε-model call per step; each step's z is drawn before the step (checkpointing replays it). ``trace``
    (default: :func:`hetpure.sampling.active_trace`) sees the state after every step, at continuous time t − h
    with the VP-SDE's ᾱ(t − h).
    """
    T = eps_model.num_timesteps
    sde = VPSDE.from_schedule(eps_model.schedule)
    n = start_index(t_star, T)
    check_timesteps(n - 1, T)
    x = q_sample(eps_model.schedule, x0, n - 1, noise)
    t_start = n / T
    h = step_size(t_start, sde_steps)
    trace = active_trace(trace)
    for t in solver_times(t_start, sde_steps):
        x = _run_step(functools.partial(_em_step, eps_model, sde, t, h), x, 1, noise, use_checkpoint)
        if trace is not None:
            trace(ReverseState(t - h, sde.alpha_bar(t - h), x, x0))
    return x


# --------------------------------------------------------------------------------------------------
# torchsde's adjoint (DiffPure's gradient)
# --------------------------------------------------------------------------------------------------


def _torchsde() -> Any:
    try:
        import torchsde
    except ImportError as exc:
        raise HetpureError(f"attack.gradient adjoint solves DiffPure's adjoint SDE with torchsde, which is not "
                           f"installed; fix: {INSTALL_SDE}") from exc
    return torchsde


class _StepTimeSDE(nn.Module):
    """The reverse VP-SDE in step units s ∈ [0, N] (t = t* − s·h, t_end at s = N), as torchsde integrates it
    forward in s: dy = −h·f_rev(y, t) ds + √(h·β(t)) dW_s with unit Brownian increments per step, so torchsde's
    Euler step with ds = 1 is the Euler–Maruyama step above and its time grid is exact in floating point."""

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, eps_model: EpsModel, sde: VPSDE, t_start: float, h: float, shape: torch.Size) -> None:
        super().__init__()
        self.eps_model = eps_model
        self.sde, self.t_start, self.h, self.shape = sde, t_start, h, shape

    def _t(self, s: Tensor) -> Tensor:
        return self.t_start - s * self.h

    def f(self, s: Tensor, y: Tensor) -> Tensor:
        t = self._t(s)
        x = y.view(-1, *self.shape)
        sde = self.sde
        beta = sde.beta_min + t * (sde.beta_max - sde.beta_min)
        sigma = torch.sqrt(1.0 - torch.exp(-0.5 * (sde.beta_max - sde.beta_min) * t * t - sde.beta_min * t))
        labels = (t * (sde.num_timesteps - 1)).to(torch.float32).expand(x.shape[0])
        eps = self.eps_model(x, labels)
        drift = -0.5 * beta * x + (beta / sigma) * eps
        return (-self.h * drift).reshape(y.shape)

    def g(self, s: Tensor, y: Tensor) -> Tensor:
        t = self._t(s)
        beta = self.sde.beta_min + t * (self.sde.beta_max - self.sde.beta_min)
        return torch.sqrt(self.h * beta).to(y.dtype).expand_as(y)


def _grid_brownian(increments: Tensor) -> Any:
    """A Brownian path on the integer grid 0 … N whose increment over [k, k + 1] is ``increments[k]`` (the
    noise drawn for step k), so torchsde's forward and adjoint passes use the purifier's own noise."""
    torchsde = _torchsde()

    class GridBrownian(torchsde.BaseBrownian):
        def __init__(self, z: Tensor) -> None:
            self.z = z

        def __call__(self, ta: Any, tb: Any = None, return_U: bool = False, return_A: bool = False) -> Tensor:
            if tb is None or return_U or return_A:
                raise HetpureError("the grid Brownian path supports increments W(tb) − W(ta) only")
            i, j = round(float(ta)), round(float(tb))
            if abs(float(ta) - i) > 1e-4 or abs(float(tb) - j) > 1e-4:
                raise HetpureError(f"torchsde asked for a Brownian increment off the step grid ({ta}, {tb})")
            if i <= j:
                return self.z[i:j].sum(0) if j - i != 1 else self.z[i]
            return -self.z[j:i].sum(0)

        def __repr__(self) -> str:
            return f"GridBrownian(steps={self.z.shape[0]})"

        @property
        def dtype(self) -> torch.dtype:
            return self.z.dtype

        @property
        def device(self) -> torch.device:
            return self.z.device

        @property
        def shape(self) -> torch.Size:
            return self.z.shape[1:]

        @property
        def levy_area_approximation(self) -> str:
            return "none"

    return GridBrownian(increments)


def sample_diffpure_adjoint(
    eps_model: EpsModel, x0: Tensor, *, t_star: float, sde_steps: int = 100, noise: NoiseFn = torch.randn_like,
) -> Tensor:
    """:func:`sample_diffpure` solved by ``torchsde.sdeint_adjoint`` (method ``euler``, torchsde's default
    adjoint method, Milstein, as DiffPure calls it): the same draws in the same order, hence the same forward
    pass; the backward pass solves the adjoint SDE (Li et al. 2020) backwards in time, reconstructing
    x_t by re-solving the reverse SDE rather than storing it, so its gradient is approximate. It keeps no
    intermediate states to show, so it refuses an active :func:`hetpure.sampling.tracing` observer."""
    if active_trace() is not None:
        raise ConfigError("the adjoint SDE solve keeps no intermediate reverse states, which this attack reads "
                          "(DiffAttack's deviated-reconstruction loss); fix: --set attack.gradient=exact")
    torchsde = _torchsde()
    T = eps_model.num_timesteps
    sde = VPSDE.from_schedule(eps_model.schedule)
    n = start_index(t_star, T)
    check_timesteps(n - 1, T)
    x = q_sample(eps_model.schedule, x0, n - 1, noise)
    zs = torch.stack([noise(x) for _ in range(sde_steps)]).flatten(2)  # (N, B, C·H·W), in the exact path's order
    t_start = n / T
    system = _StepTimeSDE(eps_model, sde, t_start, step_size(t_start, sde_steps), x.shape[1:])
    ts = torch.tensor([0.0, float(sde_steps)], device=x.device)
    ys = torchsde.sdeint_adjoint(system, x.flatten(1), ts, method="euler", dt=1.0, bm=_grid_brownian(zs),
                                 adjoint_params=())
    return ys[-1].view_as(x)


# --------------------------------------------------------------------------------------------------
# The purifier
# --------------------------------------------------------------------------------------------------


def check_config(config: PurifyConfig, num_timesteps: int) -> PurifyConfig:
    """Raise :class:`ConfigError` for settings DiffPure cannot run; return ``config``."""
    check_t_star(config.t_star, num_timesteps, "diffpure", "DiffPure's CIFAR-10 setting: t_star=0.1")
    if config.sde_steps < 1:
        raise ConfigError(f"sde_steps must be >= 1, got {config.sde_steps}")
    if config.runs < 1 or config.max_batch < 1:
        raise ConfigError(f"runs and max_batch must be >= 1, got runs={config.runs}, max_batch={config.max_batch}")
    return config


def diffpure_eps_calls(config: PurifyConfig, steps: int | None = None) -> int:
    """ε-model calls of one purification: one per Euler–Maruyama step (``steps`` overrides ``sde_steps``)."""
    return steps or config.sde_steps


class DiffPurePurifier(Purifier):
    """DiffPure's purification (Nie et al. 2022) from ``t_star`` with ``sde_steps`` Euler–Maruyama steps.

    ``gradient = "adjoint"`` (set by :meth:`adjoint_module`) makes differentiated passes use torchsde's adjoint;
    passes without gradient always use the Euler–Maruyama loop (the same numbers).

    >>> import torch
    >>> from hetpure import DiffPurePurifier, PurifyConfig
    >>> from hetpure.demo import load_demo_models
    >>> eps_model, classifier = load_demo_models()  # the embedded MNIST DDPM and CNN
    >>> purifier = DiffPurePurifier(eps_model, classifier, PurifyConfig(t_star=0.1, sde_steps=10, runs=2))
    >>> purifier.eps_calls(), purifier.eps_calls(4)  # one ε-call per step; 4 steps: an attack's surrogate
    (10, 4)
    >>> x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    >>> purifier.purify(x, generator=torch.Generator().manual_seed(1)).shape
    torch.Size([2, 1, 28, 28])
    """

    uniform = True
    gradient = "exact"

    def __init__(self, eps_model: EpsModel, classifier: nn.Module, config: PurifyConfig | None = None) -> None:
        super().__init__(eps_model, classifier, config)
        VPSDE.from_schedule(eps_model.schedule)  # a non-linear schedule is refused here, before any work

    def _validated(self, config: PurifyConfig) -> PurifyConfig:
        return check_config(config, self.eps_model.num_timesteps)

    def _steps(self, override: int | None) -> int:
        return override or self.config.sde_steps

    def eps_calls(self, ddim_steps: int | None = None) -> int:
        return diffpure_eps_calls(self.config, ddim_steps)

    def _sample(
        self, x0: Tensor, x: Tensor, noise: NoiseFn, ddim_steps: int, use_checkpoint: bool, levels: Tensor | None
    ) -> Tensor:
        t_star = float(self.config.t_star or 0.0)
        if self.gradient == "adjoint" and torch.is_grad_enabled():
            return sample_diffpure_adjoint(self.eps_model, x0, t_star=t_star, sde_steps=ddim_steps, noise=noise)
        return sample_diffpure(self.eps_model, x0, t_star=t_star, sde_steps=ddim_steps, noise=noise,
                               use_checkpoint=use_checkpoint)

    def adjoint_module(self, max_batch: int | None = None) -> PurifiedClassifier:
        """x ↦ classifier(purify(x)) differentiated by torchsde's adjoint SDE (DiffPure's attack gradient)."""
        _torchsde()
        twin = DiffPurePurifier(self.eps_model, self.classifier, self.config)
        twin.gradient = "adjoint"
        return twin.as_module(max_batch=max_batch)

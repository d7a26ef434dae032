"""Heterogeneous-noise purification (Pei et al., CVPR 2025) and the uniform DiffPure-style baseline.

The samplers are short plain functions on the diffusion scale ([-1, 1]); the purifier objects wrap them
with the [0, 1] image API, the mask computation, majority voting and a differentiable module for attacks.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from .checks import check_images, check_mask
from .checks import check_logit_batch as _check_logits
from .devices import check_gradient_precision, check_timesteps, chunks, default_noise, device_generator
from .errors import ConfigError, HetpureError
from .mask import binarize, energy_map, gradcam_map, graded_weights, random_mask_like
from .models.base import EpsModel
from .schedule import NoiseFn, NoiseSchedule, ddim_step, ddim_timesteps, ddpm_step, forward_step, q_sample

MASK_SOURCES = ("energy", "gradcam", "random", "all", "none")
#: defense.method values: the bare classifier, ours, and the peers (hetpure.sde, hetpure.gdmp)
METHODS = ("none", "uniform", "heterogeneous", "diffpure", "gdmp")


@dataclass(frozen=True)
class PurifyConfig:
    """Settings of a purifier; every noise level is a fraction of the model's T timesteps.

    Heterogeneous: attended pixels start at ``t_l``, the rest at ``t_s``; ``tau`` (or ``top_p``, which
    takes precedence when given) selects the attended pixels; ``resample_steps`` is U, the single forward
    steps after each mixing; ``ddim_steps`` the nominal DDIM step count S (only its ``t_l`` fraction runs).
    Uniform: ``t_star`` and ``sampler`` ("ddim" or "ddpm"). ``runs`` is R, the votes of :meth:`predict`;
    ``max_batch`` bounds how many images one ε-model call sees when the R runs are batched (default 32:
    on the CPU the per-image cost of the shared UNet rises again above that; raise it on a GPU).
    ``repaint_jumps`` r > 1 replaces single-step resampling in stage 1 by RePaint's multi-step resampling
    (r denoise/re-noise round trips per step, r ε-model calls; for the resampling ablation).
    ``levels="graded"`` gives each pixel its own start level between t_s and t_l from the attention map
    (w = clip((E − tau_lo)/(tau_hi − tau_lo), 0, 1)); ``mask_source`` chooses where the mask comes from.
    The peers, from ``t_star``: ``sde_steps`` Euler–Maruyama steps of DiffPure (:mod:`hetpure.sde`);
    ``gdmp_guidance`` ("mse" / "ssim"), ``gdmp_scale`` and ``gdmp_iterations`` of GDMP (:mod:`hetpure.gdmp`).

    Example:
        >>> import hetpure
        >>> cfg = hetpure.PurifyConfig(t_s=0.1, t_l=0.2, tau=0.9, ddim_steps=100, runs=8)
        >>> cfg.validate().replace(runs=2).runs
        2
        >>> hetpure.PurifyConfig(t_star=0.1).validate(uniform=True).t_star  # a uniform purifier's settings
        0.1
    """

    t_s: float = 0.1
    t_l: float = 0.2
    tau: float | None = 0.9
    top_p: float | None = None
    resample_steps: int = 3
    repaint_jumps: int = 1
    ddim_steps: int = 500
    eta: float = 0.0
    runs: int = 20
    t_star: float | None = None
    sampler: str = "ddim"
    levels: str = "binary"
    tau_lo: float | None = None
    tau_hi: float | None = None
    mask_source: str = "energy"
    max_batch: int = 32
    resize: bool = False
    sde_steps: int = 100
    gdmp_guidance: str = "mse"
    gdmp_scale: float = 28687.5
    gdmp_iterations: int = 4

    def replace(self, **changes: Any) -> PurifyConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PurifyConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown PurifyConfig keys {unknown}; allowed: {sorted(names)}")
        return cls(**data)

    def validate(self, num_timesteps: int = 1000, uniform: bool = False) -> PurifyConfig:
        """Raise :class:`ConfigError` with the fix for any inconsistent setting; return self."""
        T = num_timesteps
        if self.ddim_steps < 1 or self.ddim_steps > T:
            raise ConfigError(f"ddim_steps must lie in [1, {T}], got {self.ddim_steps}")
        if self.runs < 1:
            raise ConfigError(f"runs must be >= 1, got {self.runs}")
        if self.max_batch < 1:
            raise ConfigError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.eta < 0:
            raise ConfigError(f"eta must be >= 0, got {self.eta}")
        if uniform:
            if self.t_star is None:
                raise ConfigError("a uniform purifier needs t_star (the noise level as a fraction of T)")
            if not 0 < self.t_star <= 1:
                raise ConfigError(f"t_star must lie in (0, 1], got {self.t_star}")
            if self.sampler not in ("ddim", "ddpm"):
                raise ConfigError(f"sampler must be 'ddim' or 'ddpm', got {self.sampler!r}")
            if self.sampler == "ddim" and len(ddim_timesteps(T, self.ddim_steps, self.t_star)) < 2:
                raise ConfigError(
                    f"ddim_steps={self.ddim_steps} gives no DDIM step below t_star={self.t_star}; "
                    "raise ddim_steps or t_star"
                )
            if self.sampler == "ddpm" and int(self.t_star * T) < 1:
                raise ConfigError(f"t_star={self.t_star} is below one timestep; raise it")
            return self
        if not 0 <= self.t_s <= self.t_l <= 1:
            raise ConfigError(f"need 0 <= t_s <= t_l <= 1, got t_s={self.t_s}, t_l={self.t_l}")
        if len(ddim_timesteps(T, self.ddim_steps, self.t_l)) < 2:
            raise ConfigError(
                f"ddim_steps={self.ddim_steps} gives an empty schedule below t_l={self.t_l} "
                f"(stride {T // self.ddim_steps}); raise ddim_steps or t_l"
            )
        if self.resample_steps < 0:
            raise ConfigError(f"resample_steps must be >= 0, got {self.resample_steps}")
        if self.repaint_jumps < 1:
            raise ConfigError(f"repaint_jumps must be >= 1 (1 = the paper's single-step resampling), got "
                              f"{self.repaint_jumps}")
        if int(self.t_l * T) + self.resample_steps >= T:
            raise ConfigError(
                f"t_l·T + resample_steps = {int(self.t_l * T) + self.resample_steps} must stay below T = {T}; "
                "lower t_l or resample_steps"
            )
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must lie in (0, 1], got {self.top_p}")
        if self.top_p is None and (self.tau is None or not 0 <= self.tau <= 1):
            raise ConfigError(f"tau must lie in [0, 1], got {self.tau}")
        if self.levels not in ("binary", "graded"):
            raise ConfigError(f"levels must be 'binary' or 'graded', got {self.levels!r}")
        if self.levels == "graded":
            lo, hi = self.graded_range()
            if not 0 <= lo <= hi <= 1:
                raise ConfigError(f"need 0 <= tau_lo <= tau_hi <= 1, got tau_lo={lo}, tau_hi={hi}")
        if self.mask_source not in MASK_SOURCES:
            raise ConfigError(f"mask_source must be one of {MASK_SOURCES}, got {self.mask_source!r}")
        return self

    def graded_range(self) -> tuple[float, float]:
        """(tau_lo, tau_hi) of graded levels; each defaults to tau."""
        tau = 0.9 if self.tau is None else self.tau
        lo = tau if self.tau_lo is None else self.tau_lo
        hi = tau if self.tau_hi is None else self.tau_hi
        return lo, hi


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


def _mixing_step(
    eps_model: EpsModel, x0: Tensor, known: Tensor, t: int, s: int, resample_steps: int, eta: float,
    x: Tensor, *zs: Tensor,
) -> Tensor:
    """Stage-1 step t → s (Pei et al. Alg. 1, lines 5–9).

    x ← m_t·x + (1 − m_t)·q(x_t | x_0) with fresh noise (``known`` = 1 − m_t marks the pixels reset to the
    original); then U single forward steps x ← √α_{t+1} x + √(1 − α_{t+1}) z, t ← t + 1; then one DDIM step
    from t + U to s with ε_θ(x, t + U).
    """
    schedule = eps_model.schedule
    noise = _queue(zs)
    x = x + known * (q_sample(schedule, x0, t, noise) - x)
    for u in range(resample_steps):
        x = forward_step(schedule, x, t + u, noise)
    t_up = t + resample_steps
    return ddim_step(schedule, x, eps_model(x, _timestep_tensor(x, t_up)), t_up, s, eta, noise)


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
) -> Tensor:
    """Heterogeneous-noise DDIM sampler (Pei et al. 2025, Alg. 1), on the diffusion scale.

    ``levels`` (B or 1, 1, H, W) is each pixel's start level as a fraction of T, in [t_s, t_l]: a binary
    mask m gives levels = t_s + (t_l − t_s)·m. With the DDIM timesteps t_0 = t_l·T > … > 0:

    1. x ← q(x_{t_0} | x_0) for the whole image;
    2. stage 1, each pair t → s with s ≥ t_s·T: pixels whose level is below t are reset to a fresh
       q(x_t | x_0) (the generated region m_t = [level·T ≥ t] keeps x), U forward steps, a DDIM step;
    3. stage 2, the remaining pairs: plain DDIM for the whole image.

    Returns the sampler's final x at timestep 0 (not clamped).

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
    x = q_sample(eps_model.schedule, x0, ts[0], noise)
    level_steps = levels * T
    for t, s in zip(ts[:-1], ts[1:]):
        if in_stage_one(s, t_s, T):
            known = (level_steps < t - _LEVEL_TOL).to(x.dtype)  # the paper's 1 − m_t: pixels not yet generated
            if repaint_jumps > 1:
                step = functools.partial(_repaint_step, eps_model, x0, known, t, s, repaint_jumps, eta)
                n_noise = repaint_jumps * (1 + n_extra) + repaint_jumps - 1
            else:
                step = functools.partial(_mixing_step, eps_model, x0, known, t, s, resample_steps, eta)
                n_noise = 1 + resample_steps + n_extra
            x = _run_step(step, x, n_noise, noise, use_checkpoint)
        else:
            x = _run_step(functools.partial(_ddim_step, eps_model, t, s, eta), x, n_extra, noise, use_checkpoint)
    return x


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
) -> Tensor:
    """Uniform (DiffPure-style) purification from t*, on the diffusion scale.

    ``ddim``: x ← q(x_{t_0} | x_0) at t_0 = the DDIM schedule's top entry ≤ t*·T, then DDIM steps down to
    timestep 0 (the heterogeneous sampler without stage 1). ``ddpm``: x ← q(x_{n−1} | x_0) with n = ⌊t*·T⌋,
    then n ancestral steps n−1 … 0 (DDPM eq. 6–7; DiffPure's discrete sampler), ending at the clean image.

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
    if sampler == "ddpm":
        n = int(t_star * eps_model.num_timesteps)
        check_timesteps(n - 1, eps_model.num_timesteps)
        x = q_sample(schedule, x0, n - 1, noise)
        for t in range(n - 1, -1, -1):
            x = _run_step(functools.partial(_ddpm_step, eps_model, t), x, int(t > 0), noise, use_checkpoint)
        return x
    ts = ddim_timesteps(eps_model.num_timesteps, ddim_steps, t_star)
    check_timesteps(ts[0], eps_model.num_timesteps)
    x = q_sample(schedule, x0, ts[0], noise)
    n_extra = 1 if eta > 0 else 0
    for t, s in zip(ts[:-1], ts[1:]):
        x = _run_step(functools.partial(_ddim_step, eps_model, t, s, eta), x, n_extra, noise, use_checkpoint)
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


# --------------------------------------------------------------------------------------------------
# Purifier objects: the public API on [0, 1] images.
# --------------------------------------------------------------------------------------------------


def majority_vote(labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Majority vote over runs: ``labels`` (R, B) → (winner (B,), counts (B, num_classes)).

    Ties go to the lowest label (``argmax`` returns the first maximum).

    Example:
        >>> import torch, hetpure
        >>> labels = torch.tensor([[3, 1], [3, 2], [5, 2]])  # R = 3 runs of B = 2 images
        >>> winner, counts = hetpure.majority_vote(labels, num_classes=6)
        >>> winner.tolist(), counts[0].tolist()
        ([3, 2], [0, 0, 0, 2, 0, 1])
    """
    counts = F.one_hot(labels.long(), num_classes).sum(0)
    return counts.argmax(1), counts


class Purifier(nn.Module):
    """Common machinery: image checks, [0, 1] ↔ diffusion scale, resizing, batched voting.

    Example:
        >>> import torch, hetpure
        >>> from hetpure.demo import load_demo_models
        >>> eps, clf = load_demo_models()  # the small MNIST models in the package
        >>> pur = hetpure.UniformPurifier(eps, clf, hetpure.PurifyConfig(t_star=0.2, ddim_steps=10, runs=2))
        >>> isinstance(pur, hetpure.Purifier), pur.eps_calls()
        (True, 2)
        >>> x = torch.rand(3, 1, 28, 28)  # images in [0, 1]
        >>> tuple(pur.purify(x).shape), tuple(pur.vote_counts(x).shape), tuple(pur.predict(x).shape)
        ((3, 1, 28, 28), (3, 10), (3,))
    """

    uniform: bool = False

    def __init__(self, eps_model: EpsModel, classifier: nn.Module, config: PurifyConfig | None = None) -> None:
        super().__init__()
        if not isinstance(eps_model, EpsModel):
            raise HetpureError(
                "eps_model must be a hetpure EpsModel (e.g. hetpure.DiffusersEps(unet) or "
                f"hetpure.load_eps_model(...)), got {type(eps_model).__name__}"
            )
        if not isinstance(classifier, nn.Module):
            raise HetpureError(f"classifier must be a torch nn.Module, got {type(classifier).__name__}")
        self.eps_model = eps_model
        self.classifier = classifier
        self.config = self._validated(config or PurifyConfig())
        eps_model.prefer_batch(self.config.max_batch)  # compile / CUDA graphs: one padded shape

    def _validated(self, config: PurifyConfig) -> PurifyConfig:
        """The checked config (a purifier with other settings, e.g. :mod:`hetpure.sde`, overrides this)."""
        return config.validate(self.eps_model.num_timesteps, uniform=self.uniform)

    def _steps(self, override: int | None) -> int:
        """The sampler's step count: ``override`` (e.g. the attack's surrogate) or the configured S."""
        return override or self.config.ddim_steps

    @property
    def schedule(self) -> NoiseSchedule:
        return self.eps_model.schedule

    def eps_calls(self, ddim_steps: int | None = None) -> int:
        """ε-model calls of one purification (with an optional override of S)."""
        cfg = self.config if ddim_steps is None else self.config.replace(ddim_steps=ddim_steps)
        return eps_calls(cfg, self.eps_model.num_timesteps, self.uniform)

    def _model_dtype(self, x: Tensor) -> Tensor:
        """Images in float64 / float16 are cast to the ε-model's float32 (purify returns the caller's dtype)."""
        if x.dtype in (torch.float64, torch.float16):
            return x.float()
        return x

    # -- scale and size ------------------------------------------------------------------------------
    def _to_diffusion(self, x: Tensor) -> Tensor:
        size = self.eps_model.image_size
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            if not self.config.resize:
                raise HetpureError(
                    f"images are {tuple(x.shape[-2:])} but the diffusion model works at {size}x{size}; "
                    "resize them, or pass PurifyConfig(resize=True) to resize for diffusion and back"
                )
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return x * 2 - 1

    def _from_diffusion(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        x = ((x + 1) / 2).clamp(0, 1)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
        return x

    def _resize_map(self, m: Tensor, like: Tensor) -> Tensor:
        if m.shape[-2:] == like.shape[-2:]:
            return m
        return F.interpolate(m, size=like.shape[-2:], mode="nearest")

    # -- the sampler ---------------------------------------------------------------------------------
    def _sample(
        self, x0: Tensor, x: Tensor, noise: NoiseFn, ddim_steps: int, use_checkpoint: bool, levels: Tensor | None
    ) -> Tensor:
        raise NotImplementedError

    def _levels(self, x: Tensor, mask: Tensor | None, generator: torch.Generator | None) -> Tensor | None:
        return None

    def purify(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        noise: NoiseFn | None = None,
        generator: torch.Generator | None = None,
        *,
        ddim_steps: int | None = None,
        use_checkpoint: bool = False,
    ) -> Tensor:
        """Purify images in [0, 1] of shape (B, C, H, W); returns the same shape in [0, 1].

        ``noise`` replaces every Gaussian draw (``torch.zeros_like`` makes the run deterministic);
        ``generator`` seeds the default draws. ``ddim_steps`` overrides S (e.g. the attack's surrogate);
        ``use_checkpoint`` recomputes each sampler step in the backward pass (memory independent of S).
        """
        given = check_images(x, self.eps_model.in_channels).dtype
        x = self._model_dtype(x)
        generator = device_generator(generator, x.device)  # CPU generator, CUDA data: one device generator
        self.eps_model.begin_purification()
        levels = self._levels(x, mask, generator)
        x0 = self._to_diffusion(x)
        if levels is not None:
            levels = self._resize_map(levels, x0)
        out = self._sample(
            x0, x, default_noise(noise, generator), self._steps(ddim_steps), use_checkpoint, levels
        )
        return self._from_diffusion(out, tuple(x.shape[-2:])).to(given)

    # -- prediction ----------------------------------------------------------------------------------
    def run_labels(
        self, x: Tensor, runs: int | None = None, generator: torch.Generator | None = None, noise: NoiseFn | None = None
    ) -> tuple[Tensor, int]:
        """Labels (R, B) of ``runs`` independent purifications of each image, and the number of classes.

        The R purifications run as batches of up to ``max_batch`` images (x repeated R times), with the
        mask computed once per image.
        """
        runs = self.config.runs if runs is None else runs
        if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
            raise ConfigError(f"runs must be a positive integer (the purifications per vote), got {runs!r}")
        x = self._model_dtype(check_images(x, self.eps_model.in_channels))
        size = tuple(x.shape[-2:])
        generator = device_generator(generator, x.device)
        noise_fn = default_noise(noise, generator)
        labels, num_classes = [], 0
        with torch.no_grad():
            levels = self._levels(x, None, generator)
            step = self.config.max_batch
            for i in range(0, x.shape[0] * runs, step):
                rows = torch.arange(i, min(i + step, x.shape[0] * runs), device=x.device) % x.shape[0]
                x0 = self._to_diffusion(x[rows])
                lev = None if levels is None else self._resize_map(levels[rows], x0)
                self.eps_model.begin_purification()
                out = self._sample(x0, x[rows], noise_fn, self._steps(None), False, lev)
                logits = _check_logits(self.classifier(self._from_diffusion(out, size)), x[rows])
                labels.append(logits.argmax(1))
                num_classes = logits.shape[1]
        return torch.cat(labels).view(runs, x.shape[0]), num_classes

    def vote_counts(
        self, x: Tensor, runs: int | None = None, generator: torch.Generator | None = None, noise: NoiseFn | None = None
    ) -> Tensor:
        """Class vote counts (B, num_classes) of ``runs`` independent purifications of each image."""
        labels, num_classes = self.run_labels(x, runs, generator, noise)
        return majority_vote(labels, num_classes)[1]

    def predict(
        self, x: Tensor, runs: int | None = None, generator: torch.Generator | None = None, noise: NoiseFn | None = None
    ) -> Tensor:
        """Majority-vote labels (B,) int64 over ``runs`` purifications (ties: lowest label)."""
        return self.vote_counts(x, runs, generator, noise).argmax(1)

    def as_module(self, ddim_steps: int | None = None, use_checkpoint: bool = False,
                  max_batch: int | None = None) -> PurifiedClassifier:
        """An ``nn.Module``: x ↦ classifier(purify(x)), differentiable end to end (one stochastic run);
        ``max_batch`` purifies larger inputs in chunks (pair it with ``use_checkpoint`` to bound memory)."""
        return PurifiedClassifier(self, ddim_steps=ddim_steps, use_checkpoint=use_checkpoint, max_batch=max_batch)


class HeterogeneousPurifier(Purifier):
    """Purification with heterogeneous noise (Pei et al., CVPR 2025).

    Args:
        eps_model: the diffusion model (:class:`~hetpure.models.EpsModel`).
        classifier: an ``nn.Module`` on [0, 1] images (normalisation inside); hooked for the mask.
        config: :class:`PurifyConfig`.
        mask_layers: names of the classifier layers whose activation energy makes the mask; defaults to
            ``classifier.mask_layers``.

    Example:
        >>> import torch, hetpure
        >>> from hetpure.demo import load_demo_models
        >>> eps, clf = load_demo_models()  # the small MNIST models in the package
        >>> cfg = hetpure.PurifyConfig(t_s=0.2, t_l=0.4, tau=0.5, ddim_steps=10, runs=2)
        >>> pur = hetpure.HeterogeneousPurifier(eps, clf, cfg)
        >>> x = torch.rand(2, 1, 28, 28)  # images in [0, 1]
        >>> m = pur.mask(x)  # 1 = attended pixel, noised to t_l
        >>> tuple(m.shape), tuple(pur.purify(x, mask=m).shape), tuple(pur.predict(x).shape)
        ((2, 1, 28, 28), (2, 1, 28, 28), (2,))
    """

    def __init__(
        self,
        eps_model: EpsModel,
        classifier: nn.Module,
        config: PurifyConfig | None = None,
        mask_layers: Sequence[str] | None = None,
    ) -> None:
        super().__init__(eps_model, classifier, config)
        layers = mask_layers if mask_layers is not None else getattr(classifier, "mask_layers", None)
        if layers is None and self.config.mask_source in ("energy", "gradcam", "random"):
            raise HetpureError(
                "name the classifier layers for the mask: mask_layers=[...] (e.g. the last block of each stage), "
                "or give the classifier a mask_layers attribute"
            )
        self.mask_layers = list(layers or [])

    def attention(self, x: Tensor) -> Tensor:
        """The normalised attention map E (B, 1, H, W) in [0, 1] (``mask_source`` 'energy' or 'gradcam')."""
        check_images(x)
        if self.config.mask_source == "gradcam":
            return gradcam_map(self.classifier, x, self.mask_layers)
        return energy_map(self.classifier, x, self.mask_layers)

    def mask(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Binary mask (B, 1, H, W) in {0, 1}; 1 = attended pixel (high noise t_l)."""
        source = self.config.mask_source
        if source == "all":
            return torch.ones_like(x[:, :1])
        if source == "none":
            return torch.zeros_like(x[:, :1])
        m = binarize(self.attention(x), self.config.tau, self.config.top_p)
        return random_mask_like(m, generator) if source == "random" else m

    def level_weights(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Per-pixel weight w ∈ [0, 1] (B, 1, H, W): start level t_s + (t_l − t_s)·w."""
        if self.config.levels == "graded" and self.config.mask_source in ("energy", "gradcam"):
            return graded_weights(self.attention(x), *self.config.graded_range())
        return self.mask(x, generator)

    def _levels(self, x: Tensor, mask: Tensor | None, generator: torch.Generator | None) -> Tensor:
        w = self.level_weights(x.detach(), generator) if mask is None else check_mask(mask, x)
        return self.config.t_s + (self.config.t_l - self.config.t_s) * w

    def _sample(
        self, x0: Tensor, x: Tensor, noise: NoiseFn, ddim_steps: int, use_checkpoint: bool, levels: Tensor | None
    ) -> Tensor:
        cfg = self.config
        return sample_heterogeneous(
            self.eps_model, x0, levels, t_s=cfg.t_s, t_l=cfg.t_l, ddim_steps=ddim_steps,
            resample_steps=cfg.resample_steps, eta=cfg.eta, noise=noise, use_checkpoint=use_checkpoint,
            repaint_jumps=cfg.repaint_jumps,
        )


class UniformPurifier(Purifier):
    """Uniform-noise purification from t* (DiffPure-style), with DDIM or ancestral DDPM steps.

    Example:
        >>> import torch, hetpure
        >>> from hetpure.demo import load_demo_models
        >>> eps, clf = load_demo_models()  # the small MNIST models in the package
        >>> pur = hetpure.UniformPurifier(eps, clf, hetpure.PurifyConfig(t_star=0.2, ddim_steps=10, runs=2))
        >>> x = torch.rand(2, 1, 28, 28)  # images in [0, 1]
        >>> x_pure = pur.purify(x, noise=torch.zeros_like)  # no noise drawn: a deterministic run
        >>> bool((x_pure == pur.purify(x, noise=torch.zeros_like)).all())
        True
    """

    uniform = True

    def _sample(
        self, x0: Tensor, x: Tensor, noise: NoiseFn, ddim_steps: int, use_checkpoint: bool, levels: Tensor | None
    ) -> Tensor:
        cfg = self.config
        return sample_uniform(
            self.eps_model, x0, t_star=cfg.t_star, ddim_steps=ddim_steps, eta=cfg.eta, sampler=cfg.sampler,
            noise=noise, use_checkpoint=use_checkpoint,
        )


class PurifiedClassifier(nn.Module):
    """x ↦ classifier(purify(x)): the defended model as one differentiable, stochastic ``nn.Module``.
    ``max_batch`` (None: no chunking) purifies larger inputs in chunks, in order; float16 is refused under grad.

    Example:
        >>> import torch, hetpure
        >>> from hetpure.demo import load_demo_models
        >>> eps, clf = load_demo_models()  # the small MNIST models in the package
        >>> pur = hetpure.UniformPurifier(eps, clf, hetpure.PurifyConfig(t_star=0.2, ddim_steps=10))
        >>> model = pur.as_module()  # a PurifiedClassifier
        >>> x = torch.rand(2, 1, 28, 28, requires_grad=True)
        >>> model(x).logsumexp(1).sum().backward()  # gradients flow through the purification
        >>> tuple(x.grad.shape)
        (2, 1, 28, 28)
    """

    def __init__(self, purifier: Purifier, ddim_steps: int | None = None, use_checkpoint: bool = False,
                 max_batch: int | None = None) -> None:
        super().__init__()
        self.purifier = purifier
        self.ddim_steps = ddim_steps
        self.use_checkpoint = use_checkpoint
        self.max_batch = max_batch
        self.generator: torch.Generator | None = None

    def eps_calls(self) -> int:
        return self.purifier.eps_calls(self.ddim_steps)

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            check_gradient_precision((self.purifier.eps_model, self.purifier.classifier), "the defended model")
        generator = device_generator(self.generator, x.device)
        pure = [self.purifier.purify(part, generator=generator, ddim_steps=self.ddim_steps,
                                     use_checkpoint=self.use_checkpoint) for part in chunks(x, self.max_batch)]
        return _check_logits(self.purifier.classifier(pure[0] if len(pure) == 1 else torch.cat(pure)), x)


def purifier_from_config(
    eps_model: EpsModel, classifier: nn.Module, method: str, config: PurifyConfig,
    mask_layers: Sequence[str] | None = None,
) -> Purifier | None:
    """Build the purifier for ``method`` in :data:`METHODS` (None for 'none')."""
    if method == "none":
        return None
    if method == "uniform":
        return UniformPurifier(eps_model, classifier, config)
    if method == "heterogeneous":
        return HeterogeneousPurifier(eps_model, classifier, config, mask_layers=mask_layers)
    if method == "diffpure":
        from .sde import DiffPurePurifier

        return DiffPurePurifier(eps_model, classifier, config)
    if method == "gdmp":
        from .gdmp import GDMPPurifier

        return GDMPPurifier(eps_model, classifier, config)
    raise ConfigError(f"unknown defense method {method!r}; use one of {', '.join(METHODS)}")

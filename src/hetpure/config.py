"""The purifier's settings: :class:`PurifyConfig` (one frozen dataclass; every method reads its own fields) and
the names of the methods and mask sources."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .errors import ConfigError
from .schedule import ddim_timesteps

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

"""Attacks aimed at heterogeneous purification: mask-aware PGD and low-frequency PGD.

Heterogeneous purification noises the attended pixels (mask 1) to t_l and the rest only to t_s. An adaptive
attacker therefore puts its perturbation where the noise is low (:class:`MaskAwarePGD`), and may also move the
attention map away from it. A second, defence-agnostic threat: perturbations made of low frequencies survive
Gaussian noising far better than pixel-level ones (DiffBreak, NeurIPS 2025); :class:`LowFrequencyPGD`
searches only in a coarse grid upsampled to the image, inside the same L∞/L2 ball as PGD.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..mask import energy_map
from .base import cross_entropy, lp_norm, project, steepest_step
from .pgd import PGD

MASK_MODES = ("restrict", "weight")


def _heterogeneous_purifier(model: nn.Module) -> nn.Module | None:
    """The heterogeneous purifier inside a defended model (``purifier.as_module`` etc.), or None."""
    purifier = getattr(model, "purifier", None)
    return purifier if purifier is not None and hasattr(purifier, "mask") else None


def attention_overlap(classifier: nn.Module, layers: list[str], x_adv: Tensor, x: Tensor) -> Tensor:
    """Differentiable overlap of attention and perturbation, per image in [0, 1]:
    Σ_p E(x_adv)_p · a_p / Σ_p a_p with a_p = Σ_c |x_adv − x|_{c,p} and E the soft energy map (eq. 5–6,
    before thresholding). 1 means all of the perturbation sits on fully attended pixels."""
    energy = energy_map(classifier, x_adv, layers, differentiable=True)
    amplitude = (x_adv - x).abs().sum(1, keepdim=True)
    return (energy * amplitude).flatten(1).sum(1) / amplitude.flatten(1).sum(1).clamp_min(1e-12)


class MaskAwarePGD(PGD):
    """PGD-EOT that perturbs where heterogeneous purification adds little noise.

    At every iteration the defence's own mask is recomputed on the current adversarial image, and the update is
    restricted to unmasked (low-noise, t_s) pixels (``mode="restrict"``) or weighted by 1 − E, the soft
    attention map (``mode="weight"``; with graded levels, by 1 − the defence's level weights). With
    ``attention_weight`` λ > 0 the ascent direction also lowers λ · overlap(E(x_adv), |δ|)
    (:func:`attention_overlap`), pushing the attention map away from the perturbation through the classifier's
    differentiable energy map (also when the defence's mask comes from Grad-CAM). Against a model without a
    heterogeneous purifier, or one whose mask does not depend on the image (``mask_source`` "all" or "none"), it
    is plain PGD. Same EOT, gradient and projection as :class:`PGD`.
    """

    name = "mask-pgd"

    def __init__(self, eps: float | None = None, norm: str = "linf", steps: int = 40, step_size: float | None = None,
                 eot: int = 1, random_start: bool = False, mode: str = "restrict", attention_weight: float = 0.0,
                 eot_batch: int | None = None, generator: torch.Generator | None = None) -> None:
        super().__init__(eps, norm, steps, step_size, eot, random_start, eot_batch, generator)
        if mode not in MASK_MODES:
            raise ConfigError(f"mask-aware PGD mode must be one of {MASK_MODES}, got {mode!r}")
        if not attention_weight >= 0:
            raise ConfigError(f"attention_weight must be >= 0, got {attention_weight}")
        self.mode, self.attention_weight = mode, float(attention_weight)
        self.low_noise_fraction: float | None = None  # share of the final perturbation's L1 mass off the mask

    def _update_weight(self, purifier: nn.Module, x_adv: Tensor) -> Tensor:
        """Where (and how much) to step: 1 on pixels that start at t_s, 0 where the defence noises to t_l."""
        with torch.no_grad():
            levels = purifier.level_weights(x_adv)  # the defence's own map: binary mask or graded weights
            if self.mode == "restrict":
                return (levels == 0).to(x_adv.dtype)
            if purifier.config.levels == "graded":
                return 1 - levels
            return 1 - purifier.attention(x_adv)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        purifier = _heterogeneous_purifier(model)
        if purifier is None or purifier.config.mask_source in ("all", "none"):
            return super().perturb(model, x, y)  # no attention-dependent noise levels to exploit
        x_adv = self.start(x)
        for _ in range(self.steps):
            grad, _, _ = self.gradient(model, x_adv, y, cross_entropy)
            if self.attention_weight > 0:
                xr = x_adv.detach().requires_grad_(True)
                overlap = attention_overlap(purifier.classifier, purifier.mask_layers, xr, x)
                (g_overlap,) = torch.autograd.grad(overlap.sum(), xr)
                grad = grad - self.attention_weight * g_overlap
            w = self._update_weight(purifier, x_adv)
            direction = steepest_step(grad * w, self.norm)
            if self.norm == "linf":
                direction = direction * w  # sign() would erase soft weights
            x_adv = project(x_adv + self.step_size * direction, x, self.eps, self.norm)
        with torch.no_grad():
            off_mask = (purifier.level_weights(x_adv) == 0) * (x_adv - x).abs()
            total = (x_adv - x).abs().sum().clamp_min(1e-12)
            self.low_noise_fraction = float(off_mask.sum() / total)
        return x_adv.detach()


class LowFrequencyPGD(PGD):
    """PGD-EOT in a low-frequency basis: δ = upsample(θ) with θ on a ``grid``×``grid`` coarse grid.

    θ is upsampled bilinearly (or by nearest neighbour) to the image size. Bilinear weights are a convex
    combination, so |θ| ≤ ε gives ‖δ‖∞ ≤ ε; for L2, θ is rescaled so that ‖δ‖₂ ≤ ε. The iterate
    x_adv = clip(x + δ, 0, 1) therefore lies in the same threat model as :class:`PGD`, and is comparable
    with it. The gradient with respect to θ is the adjoint of the upsampling applied to ∇ₓ (one EOT
    gradient per iteration, exactly as PGD). ``grid`` = image size recovers pixel-space PGD.
    """

    name = "lowfreq-pgd"

    def __init__(self, eps: float | None = None, norm: str = "linf", steps: int = 40, step_size: float | None = None,
                 eot: int = 1, random_start: bool = False, grid: int = 8, upsample: str = "bilinear",
                 eot_batch: int | None = None, generator: torch.Generator | None = None) -> None:
        super().__init__(eps, norm, steps, step_size, eot, random_start, eot_batch, generator)
        if grid < 1:
            raise ConfigError(f"the low-frequency grid must be >= 1 cells per side, got {grid}")
        if upsample not in ("bilinear", "nearest"):
            raise ConfigError(f"upsample must be 'bilinear' or 'nearest', got {upsample!r}")
        self.grid, self.upsample = int(grid), upsample

    def expand(self, theta: Tensor, size: tuple[int, int]) -> Tensor:
        """The image-size perturbation δ = upsample(θ)."""
        if self.upsample == "nearest":
            return F.interpolate(theta, size=size, mode="nearest")
        return F.interpolate(theta, size=size, mode="bilinear", align_corners=False)

    def _direction(self, grad_theta: Tensor, size: tuple[int, int]) -> Tensor:
        """Steepest ascent measured in image space: sign(g) for L∞ (convex upsampling keeps the image step
        within α), g / ‖upsample(g)‖₂ for L2 (so the image-space step has L2 norm α, as in PGD)."""
        if self.norm == "linf":
            return grad_theta.sign()
        return grad_theta / lp_norm(self.expand(grad_theta, size), "l2").clamp_min(1e-12).view(-1, 1, 1, 1)

    def _bound(self, theta: Tensor, size: tuple[int, int]) -> Tensor:
        if self.norm == "linf":
            return theta.clamp(-self.eps, self.eps)
        norms = lp_norm(self.expand(theta, size), "l2").clamp_min(1e-12)
        return theta * (self.eps / norms).clamp(max=1.0).view(-1, 1, 1, 1)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        size = (x.shape[-2], x.shape[-1])
        if self.grid > min(size):
            raise ConfigError(f"grid {self.grid} is finer than the {size[0]}×{size[1]} images; use grid <= {min(size)}")
        shape = (x.shape[0], x.shape[1], self.grid, self.grid)
        theta = torch.zeros(shape, device=x.device, dtype=x.dtype)
        if self.random_start:
            g = self.generator
            device = g.device if g else "cpu"
            if self.norm == "linf":
                theta = (2 * torch.rand(shape, generator=g, device=device).to(x) - 1) * self.eps
            else:  # a Gaussian direction, then a uniform radius in [0, ε] (as base.random_start)
                theta = torch.randn(shape, generator=g, device=device).to(x)
                r = torch.rand(shape[0], generator=g, device=device).to(x)
                norms = lp_norm(self.expand(theta, size), "l2").clamp_min(1e-12)
                theta = theta * (self.eps * r / norms).view(-1, 1, 1, 1)
        for _ in range(self.steps):
            x_adv = (x + self.expand(theta, size)).clamp(0, 1)
            grad_x, _, _ = self.gradient(model, x_adv, y, cross_entropy)
            th = theta.detach().requires_grad_(True)
            (grad_theta,) = torch.autograd.grad(self.expand(th, size), th, grad_outputs=grad_x)
            theta = self._bound(theta + self.step_size * self._direction(grad_theta, size), size)
        return project((x + self.expand(theta, size)).clamp(0, 1), x, self.eps, self.norm).detach()

"""FGSM and PGD with EOT (Goodfellow et al. 2015; Madry et al. 2018; Athalye et al. 2018)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .base import Attack, cross_entropy, project, random_start, steepest_step
from .keep import Keeper


class PGD(Attack):
    """Projected gradient ascent on the cross-entropy, EOT-averaged gradients; returns the final iterate.

    x_{k+1} = Π_{B_ε(x) ∩ [0,1]}(x_k + α · s(∇)), s = sign for L∞, ∇/‖∇‖₂ for L2 (a real L2 steepest-ascent
    step, not the official code's sign step). Defaults: L∞ ε = 8/255, α = 0.007; L2 ε = 0.5, α = 2.5·ε/steps.
    ``keep`` (:mod:`hetpure.attacks.keep`): ``best`` also evaluates the loss of the final iterate (``eot`` more
    forward passes); ``first_broken`` judges x_k after iteration k.
    """

    name = "pgd"

    def __init__(self, eps: float | None = None, norm: str = "linf", steps: int = 40, step_size: float | None = None,
                 eot: int = 1, random_start: bool = False, eot_batch: int | None = None,
                 generator: torch.Generator | None = None, keep: str = "last", keep_every: int = 1) -> None:
        eps = (8 / 255 if norm == "linf" else 0.5) if eps is None else eps
        super().__init__(eps, norm, eot, eot_batch, generator, keep, keep_every)
        if steps < 1:
            raise ConfigError(f"steps must be >= 1, got {steps}")
        self.steps = int(steps)
        if step_size is None:
            step_size = 0.007 if norm == "linf" else 2.5 * eps / steps
        self.step_size = float(step_size)
        self.random_start = bool(random_start)

    def start(self, x: Tensor) -> Tensor:
        """The first iterate: a random point of the ball (``random_start``) or x itself."""
        return random_start(x, self.eps, self.norm, self.generator) if self.random_start else x.clone()

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        keeper = Keeper(self, x, y)
        x_adv = self.start(x)
        for k in range(self.steps):
            grad, loss, _ = self.gradient(model, x_adv, y, cross_entropy)
            keeper.observe(x_adv, loss)
            x_adv = project(x_adv + self.step_size * steepest_step(grad, self.norm), x, self.eps, self.norm)
            keeper.judge(k + 1, x_adv, final=k + 1 == self.steps)
            if keeper.done:
                break
        if self.keep == "best":
            keeper.observe(x_adv, self.evaluate_loss(model, x_adv, y, cross_entropy))
        return keeper.result(x_adv)


class FGSM(PGD):
    """One step of size ε (the fast gradient sign method; an L2 step for ``norm='l2'``)."""

    name = "fgsm"

    def __init__(self, eps: float | None = None, norm: str = "linf", eot: int = 1, eot_batch: int | None = None,
                 generator: torch.Generator | None = None) -> None:
        eps = (8 / 255 if norm == "linf" else 0.5) if eps is None else eps
        super().__init__(eps, norm, steps=1, step_size=eps, eot=eot, eot_batch=eot_batch, generator=generator)

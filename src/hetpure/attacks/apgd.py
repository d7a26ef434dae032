"""APGD-CE and APGD-DLR (Croce & Hein, ICML 2020), with EOT for randomised defences ("rand" version)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .base import LOSSES, Attack, project, random_start, steepest_step
from .keep import Keeper


def apgd_checkpoints(steps: int) -> list[int]:
    """Iterations w_j = ⌈p_j N⌉ with p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({math.ceil(round(q * steps, 6)) for q in p if q <= 1})


class APGD(Attack):
    """Auto-PGD (Croce & Hein 2020, Alg. 1): momentum 0.75, step size 2ε halved at checkpoints when the
    loss stalls (condition 1: fewer than ρ = 0.75 of the steps since the last checkpoint increased it;
    condition 2: neither the step size nor the best loss changed since), restarting from the best point.

    ``loss`` is ``"ce"`` or ``"dlr"``; every loss value and gradient is an EOT average over ``eot`` passes.
    Returns, per image, the last point the EOT-averaged prediction got wrong, else the highest-loss point
    (``keep="last"``); ``keep="best"`` returns the highest-loss point, ``keep="first_broken"`` the first iterate
    the judge finds wrong (:mod:`hetpure.attacks.keep`).
    """

    name = "apgd"
    losses: tuple[str, ...] = ("ce", "dlr")  # the ``loss`` values this class takes (:data:`~.base.LOSSES`)

    def __init__(self, eps: float | None = None, norm: str = "linf", steps: int = 100, loss: str = "ce",
                 eot: int = 20, rho: float = 0.75, random_start: bool = True, eot_batch: int | None = None,
                 generator: torch.Generator | None = None, keep: str = "last", keep_every: int = 1) -> None:
        eps = (8 / 255 if norm == "linf" else 0.5) if eps is None else eps
        super().__init__(eps, norm, eot, eot_batch, generator, keep, keep_every)
        if loss not in self.losses:
            raise ConfigError(f"{type(self).__name__} loss must be one of {', '.join(self.losses)}, got {loss!r}")
        if steps < 1:
            raise ConfigError(f"steps must be >= 1, got {steps}")
        self.steps, self.loss, self.rho, self.random_start = int(steps), loss, float(rho), bool(random_start)
        self.name = f"apgd-{loss}"

    def fooled(self, logits: Tensor, y: Tensor) -> Tensor:
        """Whether the iterate just evaluated counts as adversarial (the ``last`` rule): its EOT-averaged logits'
        argmax is wrong."""
        return logits.argmax(1) != y

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        loss_fn = LOSSES[self.loss]
        b = x.shape[0]
        view = (-1, 1, 1, 1)
        keeper = Keeper(self, x, y)
        x_adv = random_start(x, self.eps, self.norm, self.generator) if self.random_start else x.clone()
        grad, loss, logits = self.gradient(model, x_adv, y, loss_fn)
        keeper.observe(x_adv, loss)
        x_best, loss_best, grad_best = x_adv.clone(), loss.clone(), grad.clone()
        # per-image selections are torch.where, not boolean indexing (which syncs the device for nonzero())
        x_best_adv = torch.where(self.fooled(logits, y).view(view), x_adv, x)
        step = torch.full((b,), 2 * self.eps, device=x.device)
        x_prev = x_adv.clone()
        checkpoints = apgd_checkpoints(self.steps)
        last_ck, step_at_ck, best_at_ck = 0, step.clone(), loss_best.clone()
        increases = torch.zeros(b, device=x.device)
        loss_prev = loss.clone()
        for k in range(self.steps):
            z = project(x_adv + step.view(view) * steepest_step(grad, self.norm), x, self.eps, self.norm)
            if k > 0:
                z = project(x_adv + 0.75 * (z - x_adv) + 0.25 * (x_adv - x_prev), x, self.eps, self.norm)
            x_prev, x_adv = x_adv, z
            grad, loss, logits = self.gradient(model, x_adv, y, loss_fn)
            keeper.observe(x_adv, loss)
            keeper.judge(k + 1, x_adv, final=k + 1 == self.steps)
            x_best_adv = torch.where(self.fooled(logits, y).view(view), x_adv, x_best_adv)
            increases += (loss > loss_prev).float()
            loss_prev = loss.clone()
            better = loss > loss_best
            x_best = torch.where(better.view(view), x_adv, x_best)
            loss_best = torch.where(better, loss, loss_best)
            grad_best = torch.where(better.view(view), grad, grad_best)
            if k + 1 in checkpoints and k + 1 > last_ck:
                cond1 = increases < self.rho * (k + 1 - last_ck)
                cond2 = (step == step_at_ck) & (loss_best == best_at_ck)
                reduce = cond1 | cond2
                step_at_ck, best_at_ck = step.clone(), loss_best.clone()
                step = torch.where(reduce, step / 2, step)
                x_adv = torch.where(reduce.view(view), x_best, x_adv)
                grad = torch.where(reduce.view(view), grad_best, grad)
                increases.zero_()
                last_ck = k + 1
            if keeper.done:
                break
        ever_fooled = (x_best_adv != x).flatten(1).any(1)
        return keeper.result(torch.where(ever_fooled.view(view), x_best_adv, x_best))


class APGDCE(APGD):
    """APGD on the cross-entropy loss (AutoAttack's APGD-CE); see :class:`APGD`."""

    def __init__(self, eps: float | None = None, norm: str = "linf", steps: int = 100, eot: int = 20,
                 rho: float = 0.75, random_start: bool = True, eot_batch: int | None = None,
                 generator: torch.Generator | None = None, keep: str = "last", keep_every: int = 1) -> None:
        super().__init__(eps, norm, steps, "ce", eot, rho, random_start, eot_batch, generator, keep, keep_every)


class APGDDLR(APGD):
    """APGD on the difference-of-logits-ratio loss (AutoAttack's APGD-DLR); see :class:`APGD`."""

    def __init__(self, eps: float | None = None, norm: str = "linf", steps: int = 100, eot: int = 20,
                 rho: float = 0.75, random_start: bool = True, eot_batch: int | None = None,
                 generator: torch.Generator | None = None, keep: str = "last", keep_every: int = 1) -> None:
        super().__init__(eps, norm, steps, "dlr", eot, rho, random_start, eot_batch, generator, keep, keep_every)

"""What an attack returns per image (``attack.keep``), and first-broken tracking (MEFA, Du et al. 2026).

* ``last`` — the attack's own rule, unchanged (PGD: the final iterate; APGD: the last iterate its EOT-averaged
  prediction got wrong, else its highest-loss iterate).
* ``best`` — the iterate of highest loss (the attack's own objective, EOT-averaged), per image.
* ``first_broken`` — the first iterate that a *fresh* defended evaluation gets wrong: the caller sets
  ``attack.judge`` (:data:`hetpure.attacks.base.Judge`, e.g. one R-vote of the defence with its own noise), which
  is asked every ``keep_every`` iterations and after the last one; an image keeps the first iterate judged wrong,
  and an image never judged wrong falls back to ``last``. Once every image of the batch is broken the attack
  stops. Every judge call is counted (``attack.judge_calls``, one defended evaluation of each image).

A judge's verdict is itself a random draw: a kept example may be classified correctly when it is re-scored with
fresh noise. :func:`rescore_summary` reports how often the kept examples still fail.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..errors import ConfigError

if TYPE_CHECKING:
    from .base import Attack


class Keeper:
    """The per-image bookkeeping of ``attack.keep`` for one ``perturb`` call.

    The attack calls :meth:`observe` with every iterate whose loss it evaluated (the start included), and
    :meth:`judge` with its iterate after iteration ``k`` (1-based); :meth:`result` gives what to return.

    Example:
        >>> import torch
        >>> from hetpure.attacks import PGD
        >>> from hetpure.attacks.keep import Keeper
        >>> attack = PGD(keep="best")
        >>> x, y = torch.zeros(2, 1, 1, 1), torch.zeros(2).long()
        >>> keeper = Keeper(attack, x, y)
        >>> keeper.observe(x + 0.1, torch.tensor([1.0, 2.0]))
        >>> keeper.observe(x + 0.2, torch.tensor([3.0, 0.5]))
        >>> keeper.result(last=x).flatten().tolist()  # the highest-loss iterate of each image
        [0.20000000298023224, 0.10000000149011612]
    """

    def __init__(self, attack: Attack, x: Tensor, y: Tensor) -> None:
        self.attack, self.mode, self.every, self.y = attack, attack.keep, attack.keep_every, y
        if self.mode == "first_broken" and attack.judge is None:
            raise ConfigError(
                f"attack.keep first_broken needs a judge (a fresh defended evaluation of each iterate), and "
                f"{type(attack).__name__}.judge is not set; the evaluation runner sets it. Fix: set attack.judge "
                "to a callable (x_adv, y) -> bool tensor of correct predictions, or --set attack.keep=last")
        self.best_x: Tensor | None = None
        self.best_loss: Tensor | None = None
        self.kept = x.clone()
        self.broken_at = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
        self.last_judged = 0
        attack.broken_at = self.broken_at if self.mode == "first_broken" else None

    def observe(self, x_adv: Tensor, loss: Tensor) -> None:
        """An iterate and its loss per image (used by ``best``: strictly higher losses replace the kept one)."""
        if self.mode != "best":
            return
        if self.best_x is None or self.best_loss is None:
            self.best_x, self.best_loss = x_adv.detach().clone(), loss.detach().clone()
            return
        better = loss > self.best_loss
        self.best_x = torch.where(better.view(-1, *[1] * (x_adv.dim() - 1)), x_adv.detach(), self.best_x)
        self.best_loss = torch.where(better, loss.detach(), self.best_loss)

    def judge(self, iteration: int, x_adv: Tensor, final: bool = False) -> None:
        """``first_broken``: ask the judge about the iterate after ``iteration`` when ``iteration`` is a multiple of
        ``keep_every`` (or ``final``, once); images judged wrong for the first time keep this iterate."""
        if self.mode != "first_broken" or self.done or iteration <= self.last_judged:
            return
        if iteration % self.every and not final:
            return
        assert self.attack.judge is not None
        correct = self.attack.judge(x_adv.detach(), self.y)
        self.attack.judge_calls += 1
        self.last_judged = iteration
        if not torch.is_tensor(correct) or correct.shape != self.y.shape:
            raise ConfigError(f"attack.judge must return a bool tensor of shape {tuple(self.y.shape)}, got "
                              f"{getattr(correct, 'shape', type(correct).__name__)}")
        new = ~correct.to(device=self.y.device, dtype=torch.bool) & (self.broken_at < 0)
        self.kept = torch.where(new.view(-1, *[1] * (x_adv.dim() - 1)), x_adv.detach(), self.kept)
        self.broken_at.copy_(torch.where(new, torch.full_like(self.broken_at, iteration), self.broken_at))

    @property
    def done(self) -> bool:
        """``first_broken``: every image of the batch is broken, so further iterations cannot change the result."""
        return self.mode == "first_broken" and bool((self.broken_at >= 0).all())

    def result(self, last: Tensor) -> Tensor:
        """What the attack returns: ``last`` (its own rule) unless ``keep`` selects another iterate."""
        if self.mode == "best" and self.best_x is not None:
            return self.best_x
        if self.mode == "first_broken":
            broken = (self.broken_at >= 0).view(-1, *[1] * (last.dim() - 1))
            return torch.where(broken, self.kept, last.detach())
        return last.detach()


def rescore_summary(broken_at: Tensor, rescored_correct: Tensor) -> dict[str, Any]:
    """How often the examples kept as first broken still fail when re-scored with fresh noise.

    ``broken_at`` (B,) is ``attack.broken_at`` (−1: never broken); ``rescored_correct`` (B,) or (K, B) says whether
    each fresh defended evaluation of the returned examples was correct. An example *still fails* when every
    re-scoring is wrong. Returns ``broken`` (images the judge broke), ``still_broken`` (of those, failing every
    re-scoring) and ``still_broken_rate`` (their ratio; None when nothing broke).

    >>> import torch
    >>> rescore_summary(torch.tensor([3, -1, 0, 7]), torch.tensor([False, True, True, False]))
    {'broken': 3, 'still_broken': 2, 'still_broken_rate': 0.6666666666666666}
    """
    correct = rescored_correct.bool()
    fails = ~(correct.any(0) if correct.dim() == 2 else correct)
    broken = broken_at >= 0
    n = int(broken.sum())
    still = int((broken & fails.to(broken.device)).sum())
    return {"broken": n, "still_broken": still, "still_broken_rate": still / n if n else None}

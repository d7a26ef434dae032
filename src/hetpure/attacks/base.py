"""Shared machinery of the attacks: threat-model projection and EOT gradients."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_images
from ..errors import ConfigError, HetpureError

LossFn = Callable[[Tensor, Tensor], Tensor]  # (logits, labels) -> per-sample loss (B,)
#: (x_adv, y) -> bool (B,): whether a fresh defended evaluation (an R-vote) still classifies each image correctly
Judge = Callable[[Tensor, Tensor], Tensor]
#: what an attack returns per image (``attack.keep``): its own last-iterate rule, its highest-loss iterate, or the
#: first iterate a fresh defended evaluation gets wrong (:mod:`hetpure.attacks.keep`)
KEEP_MODES = ("last", "best", "first_broken")
DEFAULT_EOT_BATCH = 256  # images per differentiated pass when neither the attack nor the model sets one


def cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """Per-sample cross-entropy."""
    return F.cross_entropy(logits, y, reduction="none")


def dlr_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Difference-of-logits-ratio loss of Croce & Hein 2020 (eq. 6), per sample:
    −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3 + 1e-12), with z sorted descending as π."""
    if logits.shape[1] < 3:
        raise HetpureError("the DLR loss needs at least 3 classes")
    srt = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    top_is_y = srt[:, 0] == z_y
    z_other = torch.where(top_is_y, srt[:, 1], srt[:, 0])
    return -(z_y - z_other) / (srt[:, 0] - srt[:, 2] + 1e-12)


def cw_loss(logits: Tensor, y: Tensor) -> Tensor:
    """The margin loss of Carlini & Wagner 2017 (their f_6, untargeted, κ = ∞), per sample: max_{i≠y} z_i − z_y,
    positive exactly when the prediction is wrong."""
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return others.amax(1) - logits.gather(1, y[:, None]).squeeze(1)


#: the per-sample losses by config name
LOSSES: dict[str, LossFn] = {"ce": cross_entropy, "dlr": dlr_loss, "cw": cw_loss}


def lp_norm(v: Tensor, norm: str) -> Tensor:
    flat = v.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


def project(x_adv: Tensor, x: Tensor, eps: float, norm: str) -> Tensor:
    """Project x_adv onto the ε-ball around x (L∞ or L2) intersected with the image box [0, 1]."""
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        n = lp_norm(delta, "l2").clamp_min(1e-12)
        delta = delta * (eps / n).clamp(max=1.0).view(-1, 1, 1, 1)
    return (x + delta).clamp(0, 1)


def steepest_step(grad: Tensor, norm: str) -> Tensor:
    """The steepest-ascent direction of unit norm: sign(g) for L∞, g/‖g‖₂ for L2."""
    if norm == "linf":
        return grad.sign()
    return grad / lp_norm(grad, "l2").clamp_min(1e-12).view(-1, 1, 1, 1)


def random_start(x: Tensor, eps: float, norm: str, generator: torch.Generator | None) -> Tensor:
    """A uniform point of the L∞ ball, or a point of the L2 ball with a uniformly drawn direction/radius."""
    g = generator
    if norm == "linf":
        u = torch.rand(x.shape, generator=g, device=g.device if g else "cpu").to(x)
        return project(x + (2 * u - 1) * eps, x, eps, norm)
    d = torch.randn(x.shape, generator=g, device=g.device if g else "cpu").to(x)
    r = torch.rand(x.shape[0], generator=g, device=g.device if g else "cpu").to(x)
    return project(x + steepest_step(d, "l2") * (eps * r).view(-1, 1, 1, 1), x, eps, norm)


class Attack:
    """Base class: ``attack(model, x, y) -> x_adv`` for images in [0, 1].

    Args:
        eps: the budget (L∞ or L2 radius).
        norm: ``"linf"`` or ``"l2"``.
        eot: stochastic forward passes whose gradients are averaged (expectation over transformation).
        eot_batch: how many images (of the B·eot copies) go through the model at once (bounds memory); None
            derives it: the defended model's memory-sized ``max_batch`` when it has one (large ε-models, see
            :func:`hetpure.attacks.defended_model`), else 256. A model's ``max_batch`` also caps a given value.
        generator: seeds the random start (the model's own randomness is seeded on the model).
        keep: what is returned per image (the attacks that take it: PGD, APGD, DiffAttack, DiffHammer):
            ``"last"`` the attack's own rule, ``"best"`` the iterate of highest loss, ``"first_broken"`` the first
            iterate that :attr:`judge` finds wrong (checked every ``keep_every`` iterations and at the end).

    Cost counters, per image, accumulated over calls: :attr:`forward_passes` (stochastic passes through the
    model, each one EOT sample), :attr:`backward_passes` (backward passes through the model; the classifier-only
    backward passes of DiffHammer are not counted) and :attr:`judge_calls` (calls of :attr:`judge`, each one
    defended R-vote evaluation of every image of the batch). After a ``first_broken`` run, :attr:`broken_at` is
    the iteration each image was first found wrong at (−1: never).
    """

    name = "attack"

    def __init__(self, eps: float, norm: str = "linf", eot: int = 1, eot_batch: int | None = None,
                 generator: torch.Generator | None = None, keep: str = "last", keep_every: int = 1) -> None:
        if norm not in ("linf", "l2"):
            raise ConfigError(f"norm must be 'linf' or 'l2', got {norm!r}")
        if not eps >= 0:
            raise ConfigError(f"eps must be >= 0, got {eps}")
        if eot < 1 or (eot_batch is not None and eot_batch < 1):
            raise ConfigError(f"eot and eot_batch must be >= 1, got {eot} and {eot_batch}")
        if keep not in KEEP_MODES:
            raise ConfigError(f"attack.keep must be one of {', '.join(KEEP_MODES)}, got {keep!r}")
        if isinstance(keep_every, bool) or not isinstance(keep_every, int) or keep_every < 1:
            raise ConfigError(f"attack.keep_every must be a whole number >= 1, got {keep_every!r}")
        self.eps, self.norm, self.eot = float(eps), norm, int(eot)
        self.eot_batch = None if eot_batch is None else int(eot_batch)
        self.generator = generator
        self.keep, self.keep_every = keep, keep_every
        #: set by the caller (the evaluation runner) before a ``first_broken`` attack: see :data:`Judge`
        self.judge: Judge | None = None
        self.forward_passes = 0  # model forward passes per image (each one EOT sample), for cost reports
        self.backward_passes = 0  # backward passes through the model per image
        self.judge_calls = 0  # judge calls (defended R-vote evaluations) per image
        self.broken_at: Tensor | None = None  # first_broken: the iteration each image broke at (−1: never)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        check_images(x)
        if not torch.is_tensor(y) or y.shape != (x.shape[0],):
            raise HetpureError(f"labels y must be a tensor of shape ({x.shape[0]},)")
        return self.perturb(model, x.detach(), y.to(x.device).long())

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def chunk_size(self, model: nn.Module) -> int:
        """Images per differentiated pass: ``eot_batch`` capped by the model's ``max_batch`` (either may be
        None; 256 when both are)."""
        sizes = [s for s in (self.eot_batch, getattr(model, "max_batch", None)) if s is not None]
        return min(sizes) if sizes else DEFAULT_EOT_BATCH

    def forward_loss(self, model: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn) -> tuple[Tensor, Tensor]:
        """One stochastic pass: (logits, the attack's per-sample objective). The objective is ``loss_fn`` of the
        logits; an attack whose objective also reads the purification (DiffAttack) overrides this."""
        logits = model(x)
        return logits, loss_fn(logits, y)

    def gradient(self, model: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn) -> tuple[Tensor, Tensor, Tensor]:
        """EOT gradient: the mean over ``eot`` stochastic passes of ∇ₓ Σ_b loss(model(x)_b, y_b).

        The B·eot copies run as batches of up to :meth:`chunk_size` images (whole copies of the batch; a
        batch larger than the chunk is split by rows). Returns (gradient, loss per image averaged over the
        passes, logits averaged over the passes). Each pass is :meth:`forward_loss`.
        """
        b = x.shape[0]
        size = self.chunk_size(model)
        parts = [slice(i, min(i + size, b)) for i in range(0, b, size)]
        grad = torch.zeros_like(x)
        loss_sum = torch.zeros(b, device=x.device)
        logits_sums: list[Tensor | None] = [None] * len(parts)
        per_chunk = max(1, size // b)
        done = 0
        while done < self.eot:
            k = min(per_chunk, self.eot - done)
            for j, rows in enumerate(parts):
                xp = x[rows]
                n = xp.shape[0]
                xr = xp.detach().repeat(k, 1, 1, 1).requires_grad_(True)
                logits, losses = self.forward_loss(model, xr, y[rows].repeat(k), loss_fn)
                (g,) = torch.autograd.grad(losses.sum(), xr)
                grad[rows] += g.view(k, *xp.shape).sum(0)
                loss_sum[rows] += losses.detach().view(k, n).sum(0)
                lg = logits.detach().view(k, n, -1).sum(0)
                logits_sums[j] = lg if logits_sums[j] is None else logits_sums[j] + lg
            done += k
        self.forward_passes += self.eot
        self.backward_passes += self.eot
        logits_sum = logits_sums[0] if len(parts) == 1 else torch.cat(logits_sums)
        return grad / self.eot, loss_sum / self.eot, logits_sum / self.eot

    def evaluate_loss(self, model: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn) -> Tensor:
        """The loss per image averaged over ``eot`` stochastic passes, without gradients (the same chunks and the
        same draws as :meth:`gradient`); counted in :attr:`forward_passes`."""
        b = x.shape[0]
        size = self.chunk_size(model)
        per_chunk = max(1, size // b)
        total = torch.zeros(b, device=x.device)
        done = 0
        with torch.no_grad():
            while done < self.eot:
                k = min(per_chunk, self.eot - done)
                for i in range(0, b, size):
                    rows = slice(i, min(i + size, b))
                    n = x[rows].shape[0]
                    _, losses = self.forward_loss(model, x[rows].repeat(k, 1, 1, 1), y[rows].repeat(k), loss_fn)
                    total[rows] += losses.view(k, n).sum(0)
                done += k
        self.forward_passes += self.eot
        return total / self.eot

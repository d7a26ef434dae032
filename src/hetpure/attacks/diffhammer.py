"""DiffHammer (Wang, Fu, Han & Xiang, NeurIPS 2024): selective attack by EM, and gradient grafting.

Per iteration, at the iterate x (notation of the paper, per image):

1. N stochastic purifications x̂_i = P(x; ξ_i), i = 0 … N−1, their losses L_i = L(f(x̂_i), y) and the
   classifier-side gradients g_i = ∂L_i/∂x̂_i (a backward pass through the classifier only);
2. EM over the samples that share a vulnerability, from r⁽⁰⁾ = (1/N) Σ_i g_i, ``diffhammer_em_steps`` times:

       E:  w_i = σ(k · (L_i + ⟨r̂, g_i⟩)),   r̂ = ε·s(r), s(r) = sign(r) (L∞) or r/‖r‖₂ (L2)
       M:  r = Σ_i w_i g_i / Σ_i w_i

   (k = ``diffhammer_k``). L_i + ⟨r̂, g_i⟩ is sample i's loss to first order after the budget-sized step r̂ along r
   (the step the attack can make, as the reference code's seed selection scores it); without the factor ε the
   inner product, of the size of ‖g_i‖₁, saturates σ for every sample and the weights are all equal (tested). The
   normalised weights are computed as a softmax of log σ, which is exact and never divides by zero;
3. gradient grafting: r is the upstream gradient at the purified output of one chain, and one backward pass
   through it gives the step direction

       ∇ = (∂x̂_0/∂x)ᵀ r.

   The selective objective Σ_i w̄_i L_i (w̄ the normalised weights) has the gradient Σ_i w̄_i J_iᵀ g_i with
   J_i = ∂x̂_i/∂x, i.e. N backward passes through the chain; grafting replaces every J_i by J_0 (Σ_i w̄_i J_0ᵀ g_i
   = J_0ᵀ r), so it costs one. It is exact when the chain's Jacobian does not depend on the noise, and then, with
   equal weights (k = 0 or no EM step), it equals the full EOT gradient (1/N) Σ_i J_iᵀ g_i (tested);
4. the APGD step (Croce & Hein 2020, Alg. 1) on that direction, its step-size rule and best point on the mean
   loss (1/N) Σ_i L_i.

Sample 0 is purified with its graph (the chain grafted onto), samples 1 … N−1 without one, in this order, from the
defended model's random stream: per iteration N forward passes and 1 backward pass through the chain, counted in
``forward_passes`` and ``backward_passes`` (the N classifier-side backward passes are not counted). The purified
images are the input of the defended model's last classifier call (read with a forward pre-hook), so DiffHammer
runs through every purifier and gradient mode (BPDA grafts onto the identity).

The N-evaluation metric (an image is broken when any of N evaluations fails): :func:`n_evaluation_correct`; the
runner's worst case over K defended evaluations is the same metric with R votes per evaluation. DiffHammer's own
``keep="last"`` rule uses it: the last iterate at which any of its N samples was misclassified, else the
highest-loss iterate. Where this differs from the reference code: docs/evaluation.md, "DiffAttack and DiffHammer".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .apgd import APGD
from .base import LossFn

DIFFHAMMER_LOSSES = ("cw", "ce", "dlr")


def em_weights(losses: Tensor, grads: Tensor, k: float, steps: int, norm: str,
               radius: float = 1.0) -> tuple[Tensor, Tensor]:
    """DiffHammer's EM (module docstring, step 2): ``losses`` (N, B), ``grads`` (N, B, D) → (normalised weights
    w̄ (N, B), r (B, D)); ``radius`` is ε, the length of the step r̂. ``steps = 0`` gives equal weights and r = the
    mean gradient.

    >>> import torch
    >>> g = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # N = 2 samples of one image, D = 2
    >>> w, r = em_weights(torch.tensor([[0.0], [0.0]]), g, k=1.0, steps=1, norm="linf", radius=0.1)
    >>> w.flatten().tolist(), r.flatten().tolist()  # r̂ = 0.1·sign((½, ½)): both ⟨r̂, g_i⟩ = 0.1, equal weights
    ([0.5, 0.5], [0.5, 0.5])
    """
    if steps < 0:
        raise ConfigError(f"diffhammer_em_steps must be >= 0, got {steps}")
    n = losses.shape[0]
    weights = torch.full_like(losses, 1.0 / n)
    r = grads.mean(0)
    for _ in range(steps):
        direction = r.sign() if norm == "linf" else r / r.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        expected = losses + radius * (grads * direction[None]).sum(-1)  # L_i + ⟨r̂, g_i⟩: first order after r̂
        weights = torch.softmax(F.logsigmoid(k * expected), dim=0)  # w_i / Σ_j w_j with w_i = σ(k·…)
        r = (weights[..., None] * grads).sum(0)
    return weights, r


def n_evaluation_correct(model: nn.Module, x: Tensor, y: Tensor, n: int) -> Tensor:
    """DiffHammer's N-evaluation metric: per image, whether all ``n`` stochastic passes of ``model`` classify it
    correctly (an image is broken when any evaluation fails). A pass of a defended model is one purification;
    :class:`hetpure.evaluate` reports the same metric over K R-vote evaluations as its worst case.

    >>> import torch
    >>> from torch import nn
    >>> model = nn.Flatten()  # "logits" = the pixels: images (1, 1, 2) predict the class of their larger pixel
    >>> n_evaluation_correct(model, torch.tensor([[[[0.9, 0.1]]], [[[0.2, 0.8]]]]), torch.tensor([0, 0]), n=3)
    tensor([ True, False])
    """
    if n < 1:
        raise ConfigError(f"the N-evaluation metric needs n >= 1 evaluations, got {n}")
    correct = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    with torch.no_grad():
        for _ in range(n):
            correct &= model(x).argmax(1) == y
    return correct


def _classifier(model: nn.Module) -> nn.Module:
    """The classifier a defended model ends with (``model.purifier.classifier``), or the model itself."""
    return getattr(getattr(model, "purifier", None), "classifier", None) or model


class DiffHammer(APGD):
    """DiffHammer: N purifications per iteration, EM weights, one grafted backward pass, an APGD step (module
    docstring).

    Args (besides APGD's, without ``eot``): ``diffhammer_samples`` N ≥ 1, ``diffhammer_k`` k ≥ 0 (the E step's
    sharpness), ``diffhammer_em_steps`` ≥ 0, ``diffhammer_loss`` ``"cw"`` (default, the reference code's first
    loss), ``"ce"`` or ``"dlr"``. σ(k·L_i) reads a margin loss (CW, DLR) as "sample i is broken" (L_i > 0) or not; the
    cross-entropy is positive for every sample, so large k saturates its weights. After a call,
    :attr:`weights` holds the last iteration's normalised EM weights (N, B) and :attr:`any_of_n_broken` whether
    some iterate had at least one of its N samples misclassified, per image.

    Example:
        >>> import torch, hetpure
        >>> from hetpure.attacks import DiffHammer, defended_model
        >>> from hetpure.demo import load_demo_models
        >>> eps, clf = load_demo_models()  # the small MNIST models in the package
        >>> pur = hetpure.UniformPurifier(eps, clf, hetpure.PurifyConfig(t_star=0.1, ddim_steps=10))
        >>> attack = DiffHammer(eps=0.1, steps=2, diffhammer_samples=4)
        >>> x, y = torch.rand(2, 1, 28, 28), torch.tensor([3, 7])
        >>> x_adv = attack(defended_model(pur, clf, "exact"), x, y)
        >>> attack.forward_passes, attack.backward_passes  # (steps + 1) × N forward, steps + 1 backward
        (12, 3)
    """

    name = "diffhammer"
    losses = DIFFHAMMER_LOSSES

    def __init__(self, eps: float | None = None, norm: str = "linf", steps: int = 100, rho: float = 0.75,
                 random_start: bool = True, eot_batch: int | None = None, generator: torch.Generator | None = None,
                 keep: str = "last", keep_every: int = 1, diffhammer_samples: int = 10, diffhammer_k: float = 5.0,
                 diffhammer_em_steps: int = 5, diffhammer_loss: str = "cw") -> None:
        if diffhammer_loss not in DIFFHAMMER_LOSSES:
            raise ConfigError(f"diffhammer_loss must be one of {DIFFHAMMER_LOSSES}, got {diffhammer_loss!r}")
        super().__init__(eps, norm, steps, diffhammer_loss, 1, rho, random_start, eot_batch, generator, keep,
                         keep_every)
        for key, value, low in (("diffhammer_samples", diffhammer_samples, 1),
                                ("diffhammer_em_steps", diffhammer_em_steps, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{key} must be a whole number >= {low}, got {value!r}")
        if not diffhammer_k >= 0:
            raise ConfigError(f"diffhammer_k must be >= 0, got {diffhammer_k}")
        self.samples, self.k, self.em_steps = diffhammer_samples, float(diffhammer_k), diffhammer_em_steps
        self.name = "diffhammer"
        self.weights: Tensor | None = None
        self.any_of_n_broken: Tensor | None = None
        self._any_wrong: Tensor | None = None

    def fooled(self, logits: Tensor, y: Tensor) -> Tensor:
        """The N-evaluation rule: at least one of the iterate's N samples was misclassified."""
        assert self._any_wrong is not None
        return self._any_wrong

    def purified_samples(self, model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(x_in, x̂_0, x̂): the input that requires grad, sample 0's purified images with their graph to x_in,
        and all N samples' purified images (N, B, …) without a graph."""
        b, size = x.shape[0], self.chunk_size(model)
        parts = [slice(i, min(i + size, b)) for i in range(0, b, size)]
        seen: list[Tensor] = []
        hook = _classifier(model).register_forward_pre_hook(lambda module, args: seen.append(args[0]))
        try:
            x_in = x.detach().requires_grad_(True)
            first = []
            for rows in parts:
                seen.clear()
                model(x_in[rows])
                first.append(seen[-1])
            pure0 = first[0] if len(first) == 1 else torch.cat(first)
            pures = pure0.detach().unsqueeze(0).repeat(self.samples, *[1] * x.dim())
            per_chunk, done = max(1, size // b), 1
            with torch.no_grad():
                while done < self.samples:
                    k = min(per_chunk, self.samples - done)
                    for rows in parts:
                        seen.clear()
                        model(x[rows].detach().repeat(k, *[1] * (x.dim() - 1)))
                        pures[done:done + k, rows] = seen[-1].view(k, -1, *x.shape[1:])
                    done += k
        finally:
            hook.remove()
        return x_in, pure0, pures

    def gradient(self, model: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn) -> tuple[Tensor, Tensor, Tensor]:
        """The grafted gradient (module docstring, steps 1–3). Returns (∇ = J_0ᵀ r, the mean loss over the N
        samples, their mean logits); sets :attr:`weights` and the N-evaluation verdict of this iterate."""
        n, b = self.samples, x.shape[0]
        x_in, pure0, pures = self.purified_samples(model, x)
        classifier = _classifier(model)
        size = self.chunk_size(model)
        flat = pures.flatten(0, 1)
        losses, logits, grads = [], [], []
        for i in range(0, n * b, size):  # the classifier-side gradients g_i = ∂L_i/∂x̂_i, chunk by chunk
            xh = flat[i:i + size].detach().requires_grad_(True)
            lg = classifier(xh)
            loss = loss_fn(lg, y.repeat(n)[i:i + size])
            (g,) = torch.autograd.grad(loss.sum(), xh)
            losses.append(loss.detach())
            logits.append(lg.detach())
            grads.append(g)
        loss_nb = torch.cat(losses).view(n, b)
        logits_nb = torch.cat(logits).view(n, b, -1)
        grads_nbd = torch.cat(grads).view(n, b, -1)
        self.weights, r = em_weights(loss_nb, grads_nbd, self.k, self.em_steps, self.norm, self.eps)
        (grad,) = torch.autograd.grad(pure0, x_in, grad_outputs=r.view_as(pure0).to(pure0.dtype))
        self.forward_passes += n
        self.backward_passes += 1
        wrong = (logits_nb.argmax(-1) != y[None]).any(0)
        self._any_wrong = wrong
        self.any_of_n_broken = wrong if self.any_of_n_broken is None else self.any_of_n_broken | wrong
        return grad.detach(), loss_nb.mean(0), logits_nb.mean(0)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        self.any_of_n_broken = None
        return super().perturb(model, x, y)

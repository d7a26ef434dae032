"""DiffAttack (Kang, Song & Li, NeurIPS 2023): APGD on the classifier loss plus a deviated-reconstruction loss.

The paper maximises L_cls + λ·L_dev with APGD, where the deviated-reconstruction loss compares the reverse
(reconstructed) state x'_t of the purification with the forward-diffused input x_t at the same time t,

    L_dev = E_t [ α_t · E_{x_t ∼ q(x_t | x_0)} E_{x'_t} d(x_t, x'_t) ],

so that the density-gradient estimates along the chain go wrong (their eq. for L_dev, Sec. 3.2). Choices here
(docs/evaluation.md, "DiffAttack and DiffHammer"):

* d is the per-pixel mean squared distance, and E over x_t ∼ q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I) (DDPM eq. 4)
  is taken in closed form, E‖x'_t − x_t‖²/D = ‖x'_t − √ᾱ_t x_0‖²/D + (1 − ᾱ_t): no sampling noise, and no access
  to the sampler's own draws (the heterogeneous sampler redraws noise at every stage-1 step, GDMP re-diffuses at
  every iteration). x_0 is the attacked input on the diffusion scale; E over x'_t is the attack's EOT.
* the timesteps are every k-th reverse state of the purification (k = ``diffattack_every``, default 1: every
  state; the states are those :func:`hetpure.sampling.tracing` sees, at each step's end time, across all of
  GDMP's iterations), with α_t = 1 and E_t the mean over them;
* λ = ``diffattack_weight`` (default 1), with the sign +: the deviation is maximised, as the classifier loss is.

The gradient of the whole objective flows through the defence's own chain (``attack.gradient: exact``, per-step
checkpointing) or its surrogate; the term needs a differentiated chain, so BPDA and the adjoint SDE are refused.
Against a model without purification (e.g. the sanity check's bare classifier) there is no reverse state and
DiffAttack is APGD.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError, HetpureError
from ..sampling import ReverseState, tracing
from .apgd import APGD
from .base import LossFn

DIFFATTACK_LOSSES = ("ce", "dlr")


def deviated_reconstruction(states: Sequence[ReverseState], every: int = 1) -> Tensor | None:
    """L_dev per image (see the module docstring): over the chosen states s (every ``every``-th of each chain),
    the mean of mean_pixels((x'_s − √ᾱ_s x_0)²) + (1 − ᾱ_s); None when there are no states.

    ``states`` may hold several chains one after another (a defended model that purifies a batch in chunks): a
    new chain starts where the input ``x0`` changes; their rows are concatenated in order.

    >>> import torch
    >>> from hetpure.sampling import ReverseState
    >>> x0 = torch.zeros(1, 1, 1, 2)
    >>> s1 = ReverseState(10, 0.64, torch.tensor([[[[1.0, 0.0]]]]), x0)  # (1² + 0²)/2 + 0.36
    >>> s2 = ReverseState(5, 0.81, torch.tensor([[[[0.0, 2.0]]]]), x0)   # (0² + 2²)/2 + 0.19
    >>> round(float(deviated_reconstruction([s1, s2])), 4)  # the mean over both states: (0.86 + 2.19)/2
    1.525
    >>> round(float(deviated_reconstruction([s1, s2], every=2)), 4)  # every 2nd state: s2 alone
    2.19
    """
    if every < 1:
        raise ConfigError(f"diffattack_every must be >= 1, got {every}")
    chains: list[list[ReverseState]] = []
    for state in states:
        if chains and chains[-1][0].x0 is state.x0:
            chains[-1].append(state)
        else:
            chains.append([state])
    if not chains:
        return None
    rows = []
    for chain in chains:
        chosen = chain[every - 1::every]
        if not chosen:
            raise ConfigError(f"diffattack_every={every} chooses none of the {len(chain)} reverse states of this "
                              f"purification; fix: --set attack.diffattack_every={len(chain)} (or lower)")
        terms = [(s.x - math.sqrt(s.alpha_bar) * s.x0).square().flatten(1).mean(1) + (1.0 - s.alpha_bar)
                 for s in chosen]
        rows.append(torch.stack(terms).mean(0))
    return torch.cat(rows)


class DiffAttack(APGD):
    """DiffAttack: APGD (Croce & Hein 2020, Alg. 1, with EOT) on L_cls + λ·L_dev (module docstring).

    Args (besides APGD's): ``diffattack_weight`` λ ≥ 0, ``diffattack_every`` k ≥ 1 (every k-th reverse state),
    ``diffattack_loss`` the classifier loss, ``"ce"`` or ``"dlr"``. Every loss value APGD compares (step-size
    rule, best point) is the whole objective; its prediction checks read the classifier's logits.

    Example:
        >>> import torch, hetpure
        >>> from hetpure.attacks import DiffAttack, defended_model
        >>> from hetpure.demo import load_demo_models
        >>> eps, clf = load_demo_models()  # the small MNIST models in the package
        >>> pur = hetpure.UniformPurifier(eps, clf, hetpure.PurifyConfig(t_star=0.1, ddim_steps=10))
        >>> attack = DiffAttack(eps=0.1, steps=2, eot=1, diffattack_weight=1.0)
        >>> x, y = torch.rand(2, 1, 28, 28), torch.tensor([3, 7])
        >>> x_adv = attack(defended_model(pur, clf, "exact"), x, y)
        >>> bool((x_adv - x).abs().max() <= 0.1 + 1e-6), attack.forward_passes, attack.backward_passes
        (True, 3, 3)
    """

    name = "diffattack"

    def __init__(self, eps: float | None = None, norm: str = "linf", steps: int = 100, eot: int = 20,
                 rho: float = 0.75, random_start: bool = True, eot_batch: int | None = None,
                 generator: torch.Generator | None = None, keep: str = "last", keep_every: int = 1,
                 diffattack_weight: float = 1.0, diffattack_every: int = 1, diffattack_loss: str = "ce") -> None:
        if diffattack_loss not in DIFFATTACK_LOSSES:
            raise ConfigError(f"diffattack_loss must be one of {DIFFATTACK_LOSSES}, got {diffattack_loss!r}")
        super().__init__(eps, norm, steps, diffattack_loss, eot, rho, random_start, eot_batch, generator, keep,
                         keep_every)
        if not diffattack_weight >= 0:
            raise ConfigError(f"diffattack_weight (λ) must be >= 0, got {diffattack_weight}")
        if isinstance(diffattack_every, bool) or not isinstance(diffattack_every, int) or diffattack_every < 1:
            raise ConfigError(f"diffattack_every must be a whole number >= 1, got {diffattack_every!r}")
        self.weight, self.every = float(diffattack_weight), diffattack_every
        self.name = "diffattack"

    def forward_loss(self, model: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn) -> tuple[Tensor, Tensor]:
        """One stochastic pass: (logits, L_cls + λ·L_dev per image), the reverse states read by
        :func:`hetpure.sampling.tracing` during the pass."""
        if self.weight == 0:
            return super().forward_loss(model, x, y, loss_fn)
        states: list[ReverseState] = []
        with tracing(states.append):
            logits = model(x)
        objective = loss_fn(logits, y)
        deviation = deviated_reconstruction(states, self.every)
        if deviation is None:  # no purification in this model: APGD
            return logits, objective
        if deviation.shape != objective.shape:
            raise HetpureError(f"the traced reverse states cover {deviation.shape[0]} images, the pass {x.shape[0]}")
        if torch.is_grad_enabled() and x.requires_grad and not deviation.requires_grad:
            raise ConfigError("diffattack's deviated-reconstruction loss needs gradients through the reverse chain, "
                              "and this model's chain has none (BPDA); fix: --set attack.gradient=exact "
                              "(or surrogate)")
        return logits, objective + self.weight * deviation

"""APGD and EOT checked against hand computations and statistical bounds, on models with known gradients.

APGD (Croce & Hein 2020, Alg. 1): z = P(x_k + η·sign ∇), x_{k+1} = P(x_k + 0.75 (z − x_k) + 0.25 (x_k − x_{k−1})),
η = 2ε halved at checkpoints when the loss stalls. EOT (Athalye et al. 2018): the gradient is the mean of
the per-pass gradients, so its error shrinks like 1/√eot.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from hetpure.attacks import APGD, PGD


class Bowl(nn.Module):
    """Two logits (0, s) with s = −‖x − c‖²: the cross-entropy of class 0 is softplus(s), increasing in s,
    so its gradient has the sign of c − x (it changes sign at c) and its maximum over a ball holding c is c.
    The argmax stays class 0 (s ≤ 0), so the attack never fools it. Records every input it sees."""

    def __init__(self, centre: Tensor) -> None:
        super().__init__()
        self.centre = centre
        self.seen: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append(x.detach().clone())
        s = -((x - self.centre) ** 2).flatten(1).sum(1)
        return torch.stack([torch.zeros_like(s), s], 1)


def test_apgd_second_iterate_uses_momentum_075() -> None:
    """x_0 = 0.5, ε = 0.1, η = 2ε = 0.2, three pixels with centres 0.57, 0.43, 0.9 (one image, no random start).

    Step 1 (no momentum): x_1 = P(0.5 ± 0.2) = (0.6, 0.4, 0.6); the loss rises, so no halving at checkpoint 1.
    Step 2: the gradient sign flips on the first two pixels, z_2 = P(x_1 + 0.2·sign) = (0.4, 0.6, 0.6), and
    x_2 = P(x_1 + 0.75 (z_2 − x_1) + 0.25 (x_1 − x_0)) = (0.6 − 0.15 + 0.025, 0.4 + 0.15 − 0.025, P(0.625))
        = (0.475, 0.525, 0.6).  (Momentum 0.5 would give 0.55 and 0.45.)
    """
    centre = torch.tensor([0.57, 0.43, 0.9]).view(1, 3, 1, 1)
    model = Bowl(centre)
    x = torch.full((1, 3, 1, 1), 0.5)
    APGD(eps=0.1, steps=2, eot=1, random_start=False)(model, x, torch.zeros(1, dtype=torch.long))
    assert len(model.seen) == 3  # x_0, x_1, x_2: one gradient each
    assert torch.allclose(model.seen[0].flatten(), torch.tensor([0.5, 0.5, 0.5]), atol=1e-6)
    assert torch.allclose(model.seen[1].flatten(), torch.tensor([0.6, 0.4, 0.6]), atol=1e-6)
    assert torch.allclose(model.seen[2].flatten(), torch.tensor([0.475, 0.525, 0.6]), atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 3, 1, 1), (2, 3, 4, 4)])
def test_apgd_halves_its_step_to_reach_an_interior_maximum(shape: tuple[int, ...]) -> None:
    """The maximum of −‖x − c‖² lies inside the ε-ball (|c − x| ≤ 0.08 < ε = 0.1). Sign steps of fixed size
    η = 0.2 only jump between points 0.1 apart around c; APGD's halvings (η → 0.2/2^j) bring the best point
    to within 0.01 of c in every pixel."""
    g = torch.Generator().manual_seed(0)
    x = torch.full(shape, 0.5)
    centre = 0.5 + (torch.rand(shape, generator=g) * 2 - 1) * 0.08
    x_adv = APGD(eps=0.1, steps=50, eot=1, random_start=False)(Bowl(centre), x, torch.zeros(shape[0]).long())
    assert float((x_adv - x).abs().max()) <= 0.1 + 1e-6
    assert float((x_adv - centre).abs().max()) < 0.01


def test_apgd_first_step_is_two_eps() -> None:
    """η_0 = 2ε: from the centre of the ball the first step reaches its boundary in every pixel."""
    model = Bowl(torch.tensor([0.9, 0.1, 0.52]).view(1, 3, 1, 1))
    APGD(eps=0.05, steps=1, eot=1, random_start=False)(model, torch.full((1, 3, 1, 1), 0.5), torch.zeros(1).long())
    assert torch.allclose(model.seen[1].flatten(), torch.tensor([0.55, 0.45, 0.55]), atol=1e-6)


class RandomScale(nn.Module):
    """Logit 1 = u·⟨w, x⟩ with u ~ U(0, 1) drawn afresh for every image of every pass (seeded).

    The gradient of logit 1 is u·w: random, with mean 0.5·w and standard deviation w/√12 per pass.
    """

    def __init__(self, w: Tensor, seed: int) -> None:
        super().__init__()
        self.w = w
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, x: Tensor) -> Tensor:
        u = torch.rand(x.shape[0], generator=self.generator)
        z = u * (x.flatten(1) @ self.w.flatten())
        return torch.stack([torch.zeros_like(z), z], 1)


def logit_one(logits: Tensor, y: Tensor) -> Tensor:
    return logits[:, 1]


@pytest.mark.parametrize("eot", [16, 64, 256])
@pytest.mark.parametrize("eot_batch", [5, 4096])
def test_eot_gradient_approaches_the_mean_gradient(eot: int, eot_batch: int) -> None:
    """The EOT gradient is (1/eot) Σ_i u_i·w, so per image it is r·w with |r − 0.5| ≤ 4·(1/√12)/√eot
    (a 4σ bound, checked for 16 images; the seeds fix the draws). Keeping one pass's gradient would give
    r = u_1, uniform on (0, 1), which no bound that shrinks with eot contains for all 16 images."""
    b = 16
    w = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(1))
    x = torch.rand(b, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    attack = PGD(steps=1, eot=eot, eot_batch=eot_batch)
    grad, loss, _ = attack.gradient(RandomScale(w, seed=eot), x, torch.zeros(b).long(), logit_one)
    assert attack.forward_passes == eot
    flat = grad.flatten(1)
    ratio = flat @ w.flatten() / w.flatten().dot(w.flatten())
    assert torch.allclose(flat, ratio[:, None] * w.flatten()[None], atol=1e-5)  # every pass's gradient ∥ w
    bound = 4 / math.sqrt(12) / math.sqrt(eot)
    assert float((ratio - 0.5).abs().max()) <= bound
    # the returned loss is the same average: r·⟨w, x⟩
    assert torch.allclose(loss, ratio * (x.flatten(1) @ w.flatten()), atol=1e-4)


def test_eot_error_shrinks_with_more_samples() -> None:
    """The worst image's |r − 0.5| over 16 images falls when eot grows 16 → 1024 (same seeds)."""
    b = 16
    w = torch.ones(1, 2, 2)
    x = torch.full((b, 1, 2, 2), 0.5)

    def worst(eot: int) -> float:
        grad, _, _ = PGD(steps=1, eot=eot).gradient(RandomScale(w, seed=7), x, torch.zeros(b).long(), logit_one)
        return float((grad.flatten(1).mean(1) - 0.5).abs().max())

    assert worst(1024) < worst(16) / 2

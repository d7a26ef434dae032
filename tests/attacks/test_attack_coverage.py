"""The gaps an independent mutation test found: APGD's checkpoint schedule at N where p_j·N is not whole (N = 100
makes every w_j = ⌈p_j·N⌉ whole and hides rounding, floor-for-ceil and off-by-one iteration bugs), and the random
start, which must cover the whole ball [−ε, ε] uniformly (a one-sided or half-width start still stays inside
the ball, so bounds-only tests miss it).

Croce & Hein 2020, §3.2: p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06), so
p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99; checkpoints w_j = ⌈p_j·N⌉, the step halved at w_j when
the loss stalled.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import hetpure.attacks.apgd as apgd_module
from hetpure.attacks import APGD, PGD, apgd_checkpoints
from hetpure.attacks.base import random_start

# w_j = ⌈p_j·N⌉ by hand (e.g. N = 30: 6.6 → 7, 12.3 → 13, 17.1 → 18, 21, 24, 26.1 → 27, 27.9 → 28, 29.7 → 30);
# N = 10 and 30 have a p_j·N that is whole on paper but a hair above it in floating point (0.70·10, 0.70·30)
HAND = {
    7: [0, 2, 3, 4, 5, 6, 7],
    10: [0, 3, 5, 6, 7, 8, 9, 10],
    30: [0, 7, 13, 18, 21, 24, 27, 28, 30],
    50: [0, 11, 21, 29, 35, 40, 44, 47, 50],
    100: [0, 22, 41, 57, 70, 80, 87, 93, 99],
}


@pytest.mark.parametrize("steps", sorted(HAND))
def test_apgd_checkpoints_by_hand_where_p_n_is_not_whole(steps: int) -> None:
    assert apgd_checkpoints(steps) == HAND[steps]


class _Flat(APGD):
    """APGD on a flat loss (it never rises, so every checkpoint halves the step and restarts from the best
    point, the start); records every point it evaluates."""

    def gradient(self, model: nn.Module, x: Tensor, y: Tensor, loss_fn) -> tuple[Tensor, Tensor, Tensor]:
        self.seen.append(x.detach().clone())
        logits = torch.tensor([[1.0, 0.0]], dtype=x.dtype).expand(x.shape[0], 2)
        return torch.ones_like(x), torch.zeros(x.shape[0], dtype=x.dtype), logits


@pytest.mark.parametrize("steps", [30, 7])
def test_apgd_halves_its_step_exactly_at_the_checkpoints(monkeypatch: pytest.MonkeyPatch, steps: int) -> None:
    """With the projection switched off and the direction fixed at +1, each iterate's step size is read off the
    points APGD evaluates: x_1 = x_0 + η_0 and x_{k+1} = x_k + 0.75 η_k + 0.25 (x_k − x_{k−1}) (Alg. 1), where
    x_k is the start again right after a halving. η_k must be 2ε halved once per checkpoint w_j ≤ k, w_j > 0."""
    monkeypatch.setattr(apgd_module, "project", lambda z, x, eps, norm: z)
    monkeypatch.setattr(apgd_module, "steepest_step", lambda g, norm: torch.ones_like(g))
    eps = 0.125  # exact in float32 (the step tensor's dtype), so are its halvings
    x0 = torch.full((1, 1, 1, 1), 0.5, dtype=torch.float64)
    attack = _Flat(eps=eps, steps=steps, eot=1, random_start=False)
    attack.seen = []
    attack(nn.Identity(), x0, torch.zeros(1, dtype=torch.long))
    seen = attack.seen
    assert len(seen) == steps + 1
    halvings = [w for w in HAND[steps] if 0 < w < steps]  # iterations that start with a halved step
    bases = []
    found = []
    for k in range(steps):
        base = x0 if k == 0 or k in halvings else seen[k]
        bases.append(base)
        if k == 0:
            eta = seen[1] - base
        else:
            eta = (seen[k + 1] - base - 0.25 * (base - bases[k - 1])) / 0.75
        found.append(round(float(eta), 9))
    expected = [2 * eps / 2 ** sum(w <= k for w in halvings) for k in range(steps)]
    assert found == expected


def test_linf_random_start_is_uniform_on_the_whole_ball() -> None:
    """δ = x_start − x for pixels far from 0 and 1 (no clipping): every value in [−ε, ε], both ends reached,
    and ten equal bins each hold a tenth (30 000 draws: a bin's share has s.d. 0.0017)."""
    eps = 0.1
    x = torch.full((4, 3, 50, 50), 0.5)
    delta = (random_start(x, eps, "linf", torch.Generator().manual_seed(0)) - x).flatten() / eps
    assert float(delta.min()) >= -1 - 1e-6 and float(delta.max()) <= 1 + 1e-6
    assert float(delta.min()) < -0.99 and float(delta.max()) > 0.99
    share = torch.histc(delta, bins=10, min=-1, max=1) / delta.numel()
    assert float((share - 0.1).abs().max()) < 0.01, share.tolist()
    assert abs(float(delta.mean())) < 0.01


def test_l2_random_start_draws_radius_and_direction() -> None:
    """L2: ‖δ‖ = ε·r with r uniform on [0, 1] (a tenth of the images in each tenth of the radius) and the
    direction symmetric (the mean δ is about 0)."""
    eps = 0.5
    x = torch.full((4000, 1, 4, 4), 0.5)
    delta = random_start(x, eps, "l2", torch.Generator().manual_seed(1)) - x
    radius = delta.flatten(1).norm(dim=1) / eps
    assert float(radius.max()) <= 1 + 1e-5 and float(radius.max()) > 0.99 and float(radius.min()) < 0.01
    share = torch.histc(radius, bins=10, min=0, max=1) / radius.numel()
    assert float((share - 0.1).abs().max()) < 0.03, share.tolist()
    assert float(delta.mean(0).abs().max()) < 0.02


class _Recorder(nn.Module):
    """A linear classifier that records its inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append(x.detach().clone())
        s = x.flatten(1).sum(1, keepdim=True)
        return torch.cat([s, -s], 1)


@pytest.mark.parametrize("attack", [
    PGD(eps=0.1, steps=1, random_start=True, generator=torch.Generator().manual_seed(2)),
    APGD(eps=0.1, steps=1, eot=1, generator=torch.Generator().manual_seed(2)),
], ids=["pgd", "apgd"])
def test_attacks_start_from_a_point_that_covers_the_ball(attack) -> None:
    """The first point PGD (random_start=True) and APGD (its default) evaluate is x + δ with δ spread over the
    whole [−ε, ε], not x and not half the ball."""
    x = torch.full((2, 3, 40, 40), 0.5)
    model = _Recorder()
    attack(model, x, torch.zeros(2, dtype=torch.long))
    delta = (model.seen[0] - x).flatten() / 0.1
    assert float(delta.min()) < -0.99 and float(delta.max()) > 0.99
    assert float((delta < 0).float().mean()) == pytest.approx(0.5, abs=0.03)

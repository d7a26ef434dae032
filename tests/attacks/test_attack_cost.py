"""Cost accounting per attack: ``forward_passes`` and ``backward_passes`` (per image) match the ε-model calls the
attack really made through the exact, per-step checkpointed chain, and ``judge_calls`` the judge's calls.

With per-step checkpointing every differentiated purification calls the ε-model twice per step (the forward pass,
and the step's recomputation in the backward pass), so an attack on B images makes
B × (ε-calls per purification) × (forward_passes + backward_passes) ε-model image evaluations."""

from __future__ import annotations

import pytest
import torch
from conftest import TinyClassifier, images
from torch import Tensor

import hetpure
from hetpure import PurifyConfig
from hetpure.attacks import APGDCE, PGD, DiffAttack, DiffHammer, defended_model
from hetpure.models.base import EpsModel
from hetpure.schedule import NoiseSchedule


class CountingEps(EpsModel):
    """ε(x, t) = 0.2·tanh(x), counting the images it evaluates (tanh keeps its output for the backward pass, so a
    checkpointed step is recomputed; a linear ε-model would keep nothing and never be recomputed)."""

    def __init__(self) -> None:
        super().__init__(NoiseSchedule.linear(), in_channels=3)
        self.images = 0

    def predict_eps(self, x_t: Tensor, t: Tensor) -> Tensor:
        self.images += x_t.shape[0]
        return 0.2 * torch.tanh(x_t)


B, STEPS, EOT, N = 2, 3, 2, 4
ATTACKS = {  # attack, (forward passes, backward passes) per image
    "pgd": (lambda: PGD(steps=STEPS, eot=EOT), (STEPS * EOT, STEPS * EOT)),
    "pgd keep best": (lambda: PGD(steps=STEPS, eot=EOT, keep="best"), ((STEPS + 1) * EOT, STEPS * EOT)),
    "apgd-ce": (lambda: APGDCE(steps=STEPS, eot=EOT), ((STEPS + 1) * EOT, (STEPS + 1) * EOT)),
    "diffattack": (lambda: DiffAttack(steps=STEPS, eot=EOT), ((STEPS + 1) * EOT, (STEPS + 1) * EOT)),
    "diffhammer": (lambda: DiffHammer(steps=STEPS, diffhammer_samples=N), ((STEPS + 1) * N, STEPS + 1)),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_counted_passes_are_the_eps_model_calls_made(name: str) -> None:
    make, (forward, backward) = ATTACKS[name]
    eps = CountingEps()
    pur = hetpure.UniformPurifier(eps, TinyClassifier(), PurifyConfig(t_star=0.2, ddim_steps=10))  # 2 ε-calls
    model = defended_model(pur, pur.classifier, "exact")
    model.generator = torch.Generator().manual_seed(0)
    attack = make()
    attack(model, images(B, size=8), torch.tensor([1, 4]))
    assert (attack.forward_passes, attack.backward_passes) == (forward, backward)
    assert eps.images == B * pur.eps_calls() * (forward + backward)
    assert attack.judge_calls == 0


def test_judge_calls_are_counted_once_per_judged_iterate() -> None:
    """keep_every = 2 of 5 iterations, an image never broken: iterates 2, 4 and the last are judged."""
    pur = hetpure.UniformPurifier(CountingEps(), TinyClassifier(), PurifyConfig(t_star=0.2, ddim_steps=10))
    model = defended_model(pur, pur.classifier, "exact")
    shown = []
    for attack in (PGD(steps=5, keep="first_broken", keep_every=2), DiffHammer(steps=5, diffhammer_samples=2,
                                                                               keep="first_broken", keep_every=2)):
        attack.judge = lambda x_adv, y: shown.append(x_adv) or torch.ones_like(y, dtype=torch.bool)
        attack(model, images(B, size=8), torch.tensor([1, 4]))
        assert attack.judge_calls == 3 and attack.broken_at.tolist() == [-1, -1]
    assert len(shown) == 6

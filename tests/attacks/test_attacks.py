"""Attacks: threat-model invariants, loss definitions, EOT, and the gradient options through purifiers."""

from __future__ import annotations

import pytest
import torch
from conftest import TinyClassifier, tiny_unet
from torch import nn

import hetpure
from hetpure.attacks import APGD, FGSM, PGD, apgd_checkpoints, defended_model, dlr_loss, make_attack, project
from hetpure.errors import ConfigError, HetpureError


class Linear(nn.Module):
    """A linear classifier on 3×8×8 images: attacks on it have known optimal directions."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(123)  # not the data's seed: its weights would copy the first images
        self.fc = nn.Linear(3 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1) * 4)


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 8, 8, generator=g)
    with torch.no_grad():
        y = Linear()(x).argmax(1)
    return x, y


@pytest.mark.parametrize("norm, eps", [("linf", 8 / 255), ("l2", 0.5)])
@pytest.mark.parametrize("attack_cls", [FGSM, PGD, APGD])
def test_attacks_stay_in_the_threat_model(attack_cls, norm, eps, data) -> None:
    x, y = data
    kwargs = {"steps": 5} if attack_cls is not FGSM else {}
    x_adv = attack_cls(eps=eps, norm=norm, **kwargs)(Linear(), x, y)
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-5).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_pgd_increases_the_loss_and_lowers_accuracy(data) -> None:
    x, y = data
    model = Linear()
    x_adv = PGD(eps=16 / 255, steps=20, step_size=2 / 255)(model, x, y)
    with torch.no_grad():
        before = nn.functional.cross_entropy(model(x), y)
        after = nn.functional.cross_entropy(model(x_adv), y)
        acc = (model(x_adv).argmax(1) == y).float().mean()
    assert after > before + 0.5
    assert acc < 0.5


def test_l2_pgd_takes_normalised_steps(data) -> None:
    """One L2 step of size α moves exactly α (no clipping by the box for interior points)."""
    x, y = data
    x = 0.25 + 0.5 * x  # keep away from the box
    x_adv = PGD(eps=10.0, norm="l2", steps=1, step_size=0.3)(Linear(), x, y)
    assert torch.allclose((x_adv - x).flatten(1).norm(dim=1), torch.full((16,), 0.3), atol=1e-5)


def test_apgd_defeats_a_linear_model_at_large_budget(data) -> None:
    x, y = data
    for loss in ("ce", "dlr"):
        x_adv = APGD(eps=32 / 255, steps=20, loss=loss, eot=1)(Linear(), x, y)
        with torch.no_grad():
            assert (Linear()(x_adv).argmax(1) == y).float().mean() == 0


def test_apgd_checkpoints_match_the_paper() -> None:
    assert apgd_checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]


def test_dlr_loss_hand_values() -> None:
    logits = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.0, 2.0, 1.0, -3.0]])
    y = torch.tensor([0, 0])
    # sample 0: y is top; -(3 - 1)/(3 - 0) ; sample 1: -(0 - 2)/(2 - 0)
    assert torch.allclose(dlr_loss(logits, y), torch.tensor([-2 / 3, 1.0]))


def test_projection_l2_and_linf() -> None:
    x = torch.full((1, 1, 2, 2), 0.5)
    far = x + torch.tensor([0.3, -0.3, 0.0, 0.0]).view(1, 1, 2, 2)
    assert torch.allclose(project(far, x, 0.1, "linf"), x + torch.tensor([0.1, -0.1, 0, 0]).view(1, 1, 2, 2))
    assert abs(float((project(far, x, 0.1, "l2") - x).norm()) - 0.1) < 1e-6


def test_eot_averages_gradients_of_stochastic_models(data) -> None:
    """With eot passes over a model whose output noise is additive, the gradient is the same as the
    deterministic one; the number of forward passes is counted."""

    class Noisy(Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) + torch.randn(x.shape[0], 10)

    x, y = data
    att = PGD(steps=1, eot=6, eot_batch=32)
    g_eot, _, _ = att.gradient(Noisy(), x, y, lambda z, t: z.gather(1, t[:, None]).squeeze(1))
    g_det, _, _ = PGD(steps=1).gradient(Linear(), x, y, lambda z, t: z.gather(1, t[:, None]).squeeze(1))
    assert torch.allclose(g_eot, g_det, atol=1e-6)
    assert att.forward_passes == 6


def test_make_attack_and_errors() -> None:
    assert make_attack("none") is None
    assert isinstance(make_attack("apgd-dlr", steps=3), APGD)
    with pytest.raises(ConfigError, match="unknown attack"):
        make_attack("cw")
    with pytest.raises(ConfigError, match="norm"):
        PGD(norm="l1")
    with pytest.raises(HetpureError, match="labels"):
        PGD()(Linear(), torch.rand(2, 3, 8, 8), torch.tensor([1]))


# --- gradients through the defence ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def purifier() -> hetpure.HeterogeneousPurifier:
    eps = hetpure.DiffusersEps(tiny_unet())
    return hetpure.HeterogeneousPurifier(eps, TinyClassifier().eval(), hetpure.PurifyConfig(tau=0.5, ddim_steps=50))


def test_surrogate_exact_bpda_models(purifier) -> None:
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1])
    surrogate = defended_model(purifier, purifier.classifier, "surrogate", 10)
    exact = defended_model(purifier, purifier.classifier, "exact")
    bpda = defended_model(purifier, purifier.classifier, "bpda")
    assert surrogate.eps_calls() == 2 and exact.eps_calls() == 10
    assert defended_model(None, purifier.classifier) is purifier.classifier
    for model in (surrogate, exact, bpda):
        x_adv = PGD(steps=2, eot=2)(model, x, y)
        assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6 and (x_adv != x).any()


def test_bpda_gradient_is_the_classifier_gradient_at_the_purified_point(purifier) -> None:
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    bpda = defended_model(purifier, purifier.classifier, "bpda")
    bpda.generator = torch.Generator().manual_seed(1)
    (g,) = torch.autograd.grad(bpda(x).sum(), x)
    pure = purifier.purify(x.detach(), generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    (g_ref,) = torch.autograd.grad(purifier.classifier(pure).sum(), pure)
    assert torch.allclose(g, g_ref, atol=1e-6)

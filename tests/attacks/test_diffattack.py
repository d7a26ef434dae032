"""DiffAttack (hetpure.attacks.diffattack): the deviated-reconstruction loss by hand on a linear ε-model, its
gradient through the checkpointed exact chain, the sign and weight λ, every purifier, and the refusals."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import TinyClassifier, config, images
from torch import Tensor, nn

import hetpure
from hetpure import PurifyConfig
from hetpure.attacks import APGDCE, DiffAttack, cross_entropy, defended_model, deviated_reconstruction
from hetpure.errors import ConfigError
from hetpure.evaluate import evaluate
from hetpure.gdmp import GDMPPurifier
from hetpure.models.base import EpsModel
from hetpure.sampling import ReverseState
from hetpure.schedule import NoiseSchedule
from hetpure.sde import DiffPurePurifier

C = 0.3  # ε(x, t) = C·x


class LinearEps(EpsModel):
    """ε(x, t) = C·x on ``channels``-channel images (the DDPM linear schedule, T = 1000)."""

    def __init__(self, channels: int = 1) -> None:
        super().__init__(NoiseSchedule.linear(), in_channels=channels)

    def predict_eps(self, x_t: Tensor, t: Tensor) -> Tensor:
        return C * x_t


class LinearClassifier(nn.Module):
    """Three logits W·x of 1×2×2 images."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.tensor([[1.0, -2.0, 0.5, 0.0], [0.0, 1.0, -1.0, 2.0], [-1.0, 0.5, 1.0, -0.5]])

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1) @ self.w.t().to(x.dtype)


def abar(t: int) -> float:
    """ᾱ_t of the linear schedule, written out: Π_{s≤t} (1 − β_s), β_s = 1e-4 + s·(0.02 − 1e-4)/999."""
    return math.prod(1.0 - (1e-4 + s * (0.02 - 1e-4) / 999) for s in range(t + 1))


def by_hand(x: Tensor, y: Tensor, z: Tensor, weight: float, every: int = 1) -> Tensor:
    """L_cls + λ·L_dev of uniform DDIM purification from t* = 0.2 with S = 10 (timesteps 200 → 100 → 0, η = 0) and
    ε = C·x, start noise z: x_200 = √ᾱ x_0 + √(1 − ᾱ) z, then per step x̂_0 = (x − √(1 − ᾱ_t) C x)/√ᾱ_t and
    x_s = √ᾱ_s x̂_0 + √(1 − ᾱ_s) C x (DDIM eq. 12). The states are x_100 and x_0."""
    x0 = 2 * x - 1
    xt = math.sqrt(abar(200)) * x0 + math.sqrt(1 - abar(200)) * z
    states = []
    for t, s in ((200, 100), (100, 0)):
        x0_hat = (xt - math.sqrt(1 - abar(t)) * C * xt) / math.sqrt(abar(t))
        xt = math.sqrt(abar(s)) * x0_hat + math.sqrt(1 - abar(s)) * C * xt
        states.append((s, xt))
    chosen = states[every - 1::every]
    dev = sum(((v - math.sqrt(abar(s)) * x0) ** 2).flatten(1).mean(1) + (1 - abar(s)) for s, v in chosen) / len(chosen)
    logits = LinearClassifier()(((xt + 1) / 2).clamp(0, 1))
    return F.cross_entropy(logits, y, reduction="none") + weight * dev


def tiny() -> tuple[nn.Module, Tensor, Tensor, int]:
    pur = hetpure.UniformPurifier(LinearEps(), LinearClassifier(), PurifyConfig(t_star=0.2, ddim_steps=10))
    model = defended_model(pur, pur.classifier, "exact")  # per-step checkpointing
    x = torch.tensor([[0.2, 0.7, 0.4, 0.6], [0.5, 0.3, 0.8, 0.1]]).view(2, 1, 2, 2)
    return model, x, torch.tensor([0, 2]), 7


def start_noise(seed: int, x: Tensor) -> Tensor:
    return torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))  # the sampler's first draw


@pytest.mark.parametrize("weight, every", [(1.0, 1), (2.5, 1), (1.0, 2), (0.0, 1)])
def test_the_objective_equals_the_hand_computed_value(weight: float, every: int) -> None:
    model, x, y, seed = tiny()
    model.generator = torch.Generator().manual_seed(seed)
    attack = DiffAttack(eps=0.1, steps=1, eot=1, diffattack_weight=weight, diffattack_every=every)
    _, loss = attack.forward_loss(model, x, y, cross_entropy)
    assert torch.allclose(loss, by_hand(x, y, start_noise(seed, x), weight, every).float(), rtol=1e-5, atol=1e-6)


def test_the_gradient_is_that_of_the_hand_computed_objective_through_the_checkpointed_chain() -> None:
    model, x, y, seed = tiny()
    model.generator = torch.Generator().manual_seed(seed)
    attack = DiffAttack(eps=0.1, steps=1, eot=1, diffattack_weight=1.5)
    grad, loss, _ = attack.gradient(model, x, y, cross_entropy)
    xr = x.double().requires_grad_(True)
    (expected,) = torch.autograd.grad(by_hand(xr, y, start_noise(seed, x).double(), 1.5).sum(), xr)
    assert torch.allclose(grad.double(), expected, rtol=1e-4, atol=1e-6)
    assert expected.abs().sum() > 0 and attack.forward_passes == attack.backward_passes == 1


def test_the_deviation_enters_with_weight_lambda_and_a_plus_sign() -> None:
    """∇(L_cls + λ L_dev) is affine in λ (the same draws): ∇_3 − ∇_0 = 3 (∇_1 − ∇_0), and ∇_1 − ∇_0 is the gradient
    of the deviation itself, which a step along it increases."""
    model, x, y, seed = tiny()

    def grad(weight: float) -> Tensor:
        model.generator = torch.Generator().manual_seed(seed)
        return DiffAttack(eps=0.1, eot=1, diffattack_weight=weight).gradient(model, x, y, cross_entropy)[0]

    g0, g1, g3 = grad(0.0), grad(1.0), grad(3.0)
    assert torch.allclose(g3 - g0, 3 * (g1 - g0), atol=1e-5)
    z = start_noise(seed, x)
    step = 1e-3 * (g1 - g0)
    dev = by_hand(x, y, z, 1.0) - by_hand(x, y, z, 0.0)
    moved = by_hand(x + step, y, z, 1.0) - by_hand(x + step, y, z, 0.0)
    assert (moved > dev).all()


def test_deviated_reconstruction_splits_chunked_chains_and_checks_k() -> None:
    """Two chunks (two inputs x0), two states each: their rows are concatenated in order."""
    a0, b0 = torch.zeros(1, 1, 1, 1), torch.ones(2, 1, 1, 1)

    def state(t: int, ab: float, value: float, x0: Tensor) -> ReverseState:
        return ReverseState(t, ab, torch.full_like(x0, value), x0)

    states = [state(5, 0.25, 1.0, a0), state(0, 1.0, 0.0, a0), state(5, 0.25, 0.5, b0), state(0, 1.0, 1.0, b0)]
    # chunk a: ((1 − 0)² + 0.75 + 0 + 0)/2 = 0.875; chunk b: ((0.5 − 0.5)² + 0.75 + (1 − 1)² + 0)/2 = 0.375
    assert deviated_reconstruction(states).tolist() == [0.875, 0.375, 0.375]
    assert deviated_reconstruction(states, every=2).tolist() == [0.0, 0.0, 0.0]
    assert deviated_reconstruction([]) is None
    with pytest.raises(ConfigError, match="chooses none of the 2 reverse states"):
        deviated_reconstruction(states, every=3)


def test_against_a_bare_classifier_it_is_apgd() -> None:
    """No purification, no reverse state: DiffAttack is APGD-CE, bit for bit (the sanity check's undefended run)."""
    x, y = images(2, size=8), torch.tensor([1, 4])
    clf = TinyClassifier()
    runs = [cls(eps=8 / 255, steps=3, eot=1, generator=torch.Generator().manual_seed(0))(clf, x, y)
            for cls in (DiffAttack, APGDCE)]
    assert torch.equal(runs[0], runs[1])


class ScaleEps(EpsModel):
    def __init__(self) -> None:
        super().__init__(NoiseSchedule.linear(), in_channels=3)

    def predict_eps(self, x_t: Tensor, t: Tensor) -> Tensor:
        return 0.2 * x_t


PURIFIERS = {
    "heterogeneous": lambda e, c: hetpure.HeterogeneousPurifier(e, c, PurifyConfig(t_s=0.1, t_l=0.2, tau=0.5,
                                                                                   ddim_steps=20)),
    "uniform": lambda e, c: hetpure.UniformPurifier(e, c, PurifyConfig(t_star=0.2, ddim_steps=20)),
    "diffpure": lambda e, c: DiffPurePurifier(e, c, PurifyConfig(t_star=0.05, sde_steps=4)),
    "gdmp": lambda e, c: GDMPPurifier(e, c, PurifyConfig(t_star=0.004, gdmp_iterations=2)),
}


@pytest.mark.parametrize("method", list(PURIFIERS))
def test_runs_with_exact_gradients_on_every_purifier(method: str) -> None:
    clf = TinyClassifier()
    pur = PURIFIERS[method](ScaleEps(), clf)
    model = defended_model(pur, clf, "exact")
    x, y = images(2, size=8), torch.tensor([1, 4])
    model.generator = torch.Generator().manual_seed(0)
    attack = DiffAttack(eps=8 / 255, steps=2, eot=1, generator=torch.Generator().manual_seed(1))
    x_adv = attack(model, x, y)
    assert float((x_adv - x).abs().max()) <= 8 / 255 + 1e-6 and not torch.equal(x_adv, x)
    assert attack.forward_passes == attack.backward_passes == 3
    model.generator = torch.Generator().manual_seed(2)
    with_dev = attack.forward_loss(model, x, y, cross_entropy)[1]
    model.generator = torch.Generator().manual_seed(2)
    without = DiffAttack(diffattack_weight=0.0).forward_loss(model, x, y, cross_entropy)[1]
    assert (with_dev > without).all()  # the deviation term is there (it is at least Σ(1 − ᾱ)/n > 0)


def test_bpda_and_the_adjoint_are_refused() -> None:
    clf = TinyClassifier()
    x, y = images(1, size=8), torch.tensor([1])
    pur = PURIFIERS["uniform"](ScaleEps(), clf)
    with pytest.raises(ConfigError, match="gradients through the reverse chain"):
        DiffAttack(steps=1, eot=1)(defended_model(pur, clf, "bpda"), x, y)
    DiffAttack(steps=1, eot=1, diffattack_weight=0.0)(defended_model(pur, clf, "bpda"), x, y)  # λ = 0: APGD
    pytest.importorskip("torchsde")
    diffpure = PURIFIERS["diffpure"](ScaleEps(), clf)
    with pytest.raises(ConfigError, match="attack.gradient=exact"):
        DiffAttack(steps=1, eot=1)(defended_model(diffpure, clf, "adjoint"), x, y)


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="diffattack_loss"):
        DiffAttack(diffattack_loss="cw")
    with pytest.raises(ConfigError, match="diffattack_weight"):
        DiffAttack(diffattack_weight=-1.0)
    with pytest.raises(ConfigError, match="diffattack_every"):
        DiffAttack(diffattack_every=0)
    assert DiffAttack(diffattack_loss="dlr").loss == "dlr" and DiffAttack().name == "diffattack"


def test_a_tiny_evaluation_with_exact_gradients(assets: Path, tmp_path: Path) -> None:
    cfg = config(assets, tmp_path / "run", attack={"name": "diffattack", "steps": 1, "eot": 1, "gradient": "exact",
                                                   "diffattack_weight": 2.0, "diffattack_every": 2})
    cfg["data"]["n"] = 2
    summary = evaluate(cfg)
    assert summary["n"] == 2
    assert summary["config"]["attack"]["diffattack_weight"] == 2.0

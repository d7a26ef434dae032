"""DiffHammer (hetpure.attacks.diffhammer): the EM weights on constructed cases, gradient grafting against the full
EOT gradient (equal when the weights are equal and the chain's Jacobian does not depend on the noise, different
otherwise), the N-evaluation metric, and runs through every purifier."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import TinyClassifier, config, images
from torch import Tensor, nn

import hetpure
from hetpure import PurifyConfig
from hetpure.attacks import DiffHammer, cross_entropy, defended_model, em_weights, n_evaluation_correct
from hetpure.attacks.base import cw_loss
from hetpure.errors import ConfigError
from hetpure.evaluate import evaluate
from hetpure.gdmp import GDMPPurifier
from hetpure.models.base import EpsModel
from hetpure.schedule import NoiseSchedule
from hetpure.sde import DiffPurePurifier

# --- the EM step ------------------------------------------------------------------------------------------------


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def em_by_hand(losses: list[float], grads: list[list[float]], k: float, steps: int, norm: str,
               radius: float) -> tuple[list, list]:
    """E: w_i = σ(k (L_i + ⟨r̂, g_i⟩)) with r̂ = ε·s(r), M: r = Σ w_i g_i / Σ w_i, from r = mean g_i; Python floats."""
    n, d = len(grads), len(grads[0])
    r = [sum(g[j] for g in grads) / n for j in range(d)]
    w = [1 / n] * n
    for _ in range(steps):
        if norm == "linf":
            hat = [radius * math.copysign(1.0, v) if v else 0.0 for v in r]
        else:
            size = math.sqrt(sum(v * v for v in r))
            hat = [radius * v / size for v in r]
        raw = [sigmoid(k * (loss + sum(a * b for a, b in zip(hat, g)))) for loss, g in zip(losses, grads)]
        w = [v / sum(raw) for v in raw]
        r = [sum(wi * g[j] for wi, g in zip(w, grads)) for j in range(d)]
    return w, r


CASE_L = [0.5, 0.2, 0.1]
CASE_G = [[1.0, 0.0], [0.8, 0.2], [-1.0, 0.5]]  # samples 0 and 1 share a direction, sample 2 points elsewhere


@pytest.mark.parametrize("k, steps, norm, radius", [(2.0, 1, "linf", 1.0), (2.0, 3, "l2", 1.0), (0.7, 2, "l2", 0.5),
                                                    (5.0, 0, "linf", 1.0), (9.0, 2, "linf", 0.1)])
def test_em_weights_by_hand(k: float, steps: int, norm: str, radius: float) -> None:
    w, r = em_weights(torch.tensor(CASE_L).view(3, 1), torch.tensor(CASE_G).view(3, 1, 2), k, steps, norm, radius)
    w_hand, r_hand = em_by_hand(CASE_L, CASE_G, k, steps, norm, radius)
    assert torch.allclose(w.flatten(), torch.tensor(w_hand), atol=1e-6)
    assert torch.allclose(r.flatten(), torch.tensor(r_hand), atol=1e-6)


def test_em_weights_favour_the_samples_that_share_a_vulnerability() -> None:
    """One E step (L∞): r̂ = sign(mean g) = (1, 1), L_i + ⟨r̂, g_i⟩ = 1.5, 1.2, −0.4, so with k = 2 the weights are
    σ(3), σ(2.4), σ(−0.8), normalised: the outlier weighs least, and r turns toward the shared direction."""
    w, r = em_weights(torch.tensor(CASE_L).view(3, 1), torch.tensor(CASE_G).view(3, 1, 2), 2.0, 1, "linf")
    raw = [sigmoid(3.0), sigmoid(2.4), sigmoid(-0.8)]
    assert w.flatten().tolist() == pytest.approx([v / sum(raw) for v in raw], abs=1e-6)
    assert float(w[2, 0]) < float(w[1, 0]) < float(w[0, 0])
    assert float(r[0, 0]) > sum(g[0] for g in CASE_G) / 3  # more of samples 0 and 1 than the mean has


def test_em_weights_are_per_image_equal_at_k_zero_and_never_nan() -> None:
    g = torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(0))
    losses = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    w, r = em_weights(losses, g, 0.0, 5, "linf")
    assert torch.allclose(w, torch.full_like(w, 0.25)) and torch.allclose(r, g.mean(0))
    w, r = em_weights(losses - 1e4, g, 50.0, 3, "linf")  # every σ underflows: the softmax of log σ does not
    assert torch.isfinite(w).all() and torch.isfinite(r).all() and torch.allclose(w.sum(0), torch.ones(3))


def test_without_the_step_length_the_inner_product_saturates_the_weights() -> None:
    """3072 pixels with classifier-side gradients of ±0.01: ⟨sign r, g_i⟩ is of the size of ‖g_i‖₁ ≈ 30, so
    σ(5·(L_i + ⟨sign r, g_i⟩)) is 1 for every sample (equal weights); the step r̂ = ε·sign(r), ε = 8/255, keeps
    the samples apart."""
    g = 0.01 * torch.randn(5, 1, 3072, generator=torch.Generator().manual_seed(2)).sign()
    g[:, 0, :2000] = 0.01  # a shared direction, so that every ⟨sign r, g_i⟩ is large
    losses = torch.tensor([-0.5, -0.2, 0.0, 0.1, 0.3]).view(5, 1)
    w_unit, _ = em_weights(losses, g, 5.0, 1, "linf", radius=1.0)
    w_step, _ = em_weights(losses, g, 5.0, 1, "linf", radius=8 / 255)
    assert torch.allclose(w_unit, torch.full_like(w_unit, 0.2), atol=1e-6)
    assert float(w_step.max() - w_step.min()) > 0.03


# --- gradient grafting ------------------------------------------------------------------------------------------


class Sharp(nn.Module):
    """The tiny classifier with its logits ×10, so that the N samples' margins differ."""

    def __init__(self) -> None:
        super().__init__()
        self.net = TinyClassifier()

    def forward(self, x: Tensor) -> Tensor:
        return 10 * self.net(x)


class Eps(EpsModel):
    """ε(x, t) = 0.3·x (linear: the chain's Jacobian does not depend on the noise) or 0.5·tanh(4x) (it does)."""

    def __init__(self, linear: bool = True) -> None:
        super().__init__(NoiseSchedule.linear(), in_channels=3)
        self.linear = linear

    def predict_eps(self, x_t: Tensor, t: Tensor) -> Tensor:
        return 0.3 * x_t if self.linear else 0.5 * torch.tanh(4 * x_t)


N, SEED = 4, 11


def setup(linear: bool) -> tuple[hetpure.UniformPurifier, nn.Module, Tensor, Tensor]:
    """Uniform DDIM (η = 0) from t* = 0.05 in 5 steps: the only noise is the start's, added linearly, and the
    images stay far from the [0, 1] clamp, so with the linear ε-model the chain is affine in (x, noise). The labels
    are the clean predictions, so that the CW margins sit near the boundary."""
    clf = Sharp()
    pur = hetpure.UniformPurifier(Eps(linear), clf, PurifyConfig(t_star=0.05, ddim_steps=100))
    x = 0.4 + 0.2 * images(2, size=8)
    with torch.no_grad():
        y = clf(x).argmax(1)
    return pur, defended_model(pur, clf, "exact"), x, y


def full_eot(pur: hetpure.UniformPurifier, x: Tensor, y: Tensor, weights: Tensor | None = None) -> Tensor:
    """(1/N) Σ_i ∇ₓ L_i (or Σ_i w_i ∇ₓ L_i) over the N purifications DiffHammer draws, in its order: sample 0 alone,
    then samples 1 … N−1 as one batch, from the model's generator seeded with SEED; N backward passes."""
    g = torch.Generator().manual_seed(SEED)
    xr = x.clone().requires_grad_(True)
    pure = torch.cat([pur.purify(xr, generator=g), pur.purify(xr.repeat(N - 1, 1, 1, 1), generator=g)])
    assert 0.01 < float(pure.detach().min()) and float(pure.detach().max()) < 0.99  # no clamping
    losses = cw_loss(pur.classifier(pure), y.repeat(N)).view(N, -1)
    w = torch.full_like(losses, 1 / N) if weights is None else weights
    (grad,) = torch.autograd.grad((w * losses).sum(), xr)
    return grad


def grafted(model: nn.Module, x: Tensor, y: Tensor, k: float, em_steps: int = 3) -> tuple[Tensor, DiffHammer]:
    attack = DiffHammer(diffhammer_samples=N, diffhammer_k=k, diffhammer_em_steps=em_steps)
    model.generator = torch.Generator().manual_seed(SEED)
    grad, _, _ = attack.gradient(model, x, y, cw_loss)
    return grad, attack


def test_grafting_equals_the_full_eot_gradient_with_equal_weights_and_a_linear_chain() -> None:
    pur, model, x, y = setup(linear=True)
    grad, attack = grafted(model, x, y, k=0.0)  # σ(0): equal weights
    assert torch.allclose(attack.weights, torch.full((N, 2), 1 / N))
    expected = full_eot(pur, x, y)
    assert expected.abs().sum() > 0
    assert torch.allclose(grad, expected, rtol=1e-4, atol=1e-7)
    assert attack.forward_passes == N and attack.backward_passes == 1


def test_grafting_is_the_weighted_objectives_gradient_when_the_chain_is_linear() -> None:
    """Unequal EM weights: the grafted gradient J_0ᵀ r = Σ_i w̄_i Jᵀ g_i is the gradient of Σ_i w̄_i L_i (the
    weights held fixed), and it differs from the plain EOT gradient."""
    pur, model, x, y = setup(linear=True)
    grad, attack = grafted(model, x, y, k=5.0)
    assert float((attack.weights - 1 / N).abs().max()) > 0.02
    assert torch.allclose(grad, full_eot(pur, x, y, attack.weights), rtol=1e-4, atol=1e-7)
    assert not torch.allclose(grad, full_eot(pur, x, y), rtol=1e-2, atol=1e-5)


def test_grafting_differs_from_the_full_eot_gradient_when_the_jacobian_depends_on_the_noise() -> None:
    pur, model, x, y = setup(linear=False)
    grad, _ = grafted(model, x, y, k=0.0)
    expected = full_eot(pur, x, y)
    assert not torch.allclose(grad, expected, rtol=1e-2, atol=1e-5)
    cosine = F.cosine_similarity(grad.flatten(), expected.flatten(), dim=0)
    assert cosine > 0  # still an ascent direction of the EOT objective, on this tiny chain


class Toy(nn.Module):
    """A defended model whose "purification" adds the next scripted noise: x̂ = x + noise (Jacobian I)."""

    def __init__(self, classifier: nn.Module, noises: list[Tensor]) -> None:
        super().__init__()
        self.purifier = SimpleNamespace(classifier=classifier)
        self.noises = noises

    def forward(self, x: Tensor) -> Tensor:
        return self.purifier.classifier(x + self.noises.pop(0))


class Pixels(nn.Module):
    """Logits = the two pixels of a 1×1×2 image."""

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)


def test_the_n_evaluation_rule_and_the_graft_through_the_identity() -> None:
    """Two images of class 0 at (0.6, 0.4): sample 2's noise flips image 1 only. Its mean logits still say class 0,
    but one of its N = 3 samples is wrong: the N-evaluation rule counts image 1 as broken. With Jacobian I the graft
    is r itself, the EM of the samples' losses and classifier-side gradients."""
    x, y = torch.tensor([0.6, 0.4]).view(1, 1, 1, 2).repeat(2, 1, 1, 1), torch.zeros(2, dtype=torch.long)
    rest = torch.zeros(4, 1, 1, 2)  # samples 1 and 2, images 0 and 1 each, in the order DiffHammer draws them
    rest[3] = torch.tensor([-0.3, 0.3])  # sample 2, image 1
    attack = DiffHammer(diffhammer_samples=3, diffhammer_k=1.0)
    grad, loss, logits = attack.gradient(Toy(Pixels(), [torch.zeros(2, 1, 1, 2), rest]), x, y, cross_entropy)
    assert attack.fooled(logits, y).tolist() == [False, True]
    assert (logits.argmax(1) == y).all()
    pures = torch.cat([x, x.repeat(2, 1, 1, 1) + rest]).view(3, 2, 1, 1, 2).requires_grad_(True)
    losses = F.cross_entropy(Pixels()(pures.flatten(0, 1)), y.repeat(3), reduction="none").view(3, 2)
    (g,) = torch.autograd.grad(losses.sum(), pures)
    _, r = em_weights(losses.detach(), g.flatten(2), 1.0, 5, "linf", radius=8 / 255)  # the default ε
    assert torch.allclose(loss, losses.detach().mean(0))
    assert torch.allclose(grad.flatten(1), r, atol=1e-6) and r.abs().sum() > 0


def test_n_evaluation_correct_is_broken_when_any_evaluation_fails() -> None:
    x, y = torch.tensor([0.6, 0.4]).view(1, 1, 1, 2).repeat(3, 1, 1, 1), torch.zeros(3, dtype=torch.long)
    wrong_1 = torch.zeros(3, 1, 1, 2)
    wrong_1[1] = torch.tensor([-0.3, 0.3])
    wrong_2 = torch.zeros(3, 1, 1, 2)
    wrong_2[2] = torch.tensor([-0.3, 0.3])
    model = Toy(Pixels(), [torch.zeros(3, 1, 1, 2), wrong_1, wrong_2])
    assert n_evaluation_correct(model, x, y, n=3).tolist() == [True, False, False]
    with pytest.raises(ConfigError, match="n >= 1"):
        n_evaluation_correct(model, x, y, n=0)


# --- every purifier, the settings, a tiny evaluation ------------------------------------------------------------


PURIFIERS = {
    "heterogeneous": lambda e, c: hetpure.HeterogeneousPurifier(e, c, PurifyConfig(t_s=0.1, t_l=0.2, tau=0.5,
                                                                                   ddim_steps=20)),
    "uniform": lambda e, c: hetpure.UniformPurifier(e, c, PurifyConfig(t_star=0.2, ddim_steps=20)),
    "diffpure": lambda e, c: DiffPurePurifier(e, c, PurifyConfig(t_star=0.05, sde_steps=4)),
    "gdmp": lambda e, c: GDMPPurifier(e, c, PurifyConfig(t_star=0.004, gdmp_iterations=2)),
}


@pytest.mark.parametrize("gradient", ["exact", "surrogate", "bpda"])
@pytest.mark.parametrize("method", list(PURIFIERS))
def test_runs_on_every_purifier(method: str, gradient: str) -> None:
    clf = TinyClassifier()
    model = defended_model(PURIFIERS[method](Eps(), clf), clf, gradient, surrogate_ddim_steps=2)
    model.generator = torch.Generator().manual_seed(0)
    x, y = images(2, size=8), torch.tensor([1, 4])
    attack = DiffHammer(eps=8 / 255, steps=2, diffhammer_samples=3, generator=torch.Generator().manual_seed(1))
    x_adv = attack(model, x, y)
    assert float((x_adv - x).abs().max()) <= 8 / 255 + 1e-6 and not torch.equal(x_adv, x)
    assert attack.forward_passes == 9 and attack.backward_passes == 3
    assert attack.weights.shape == (3, 2) and attack.any_of_n_broken.shape == (2,)


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="diffhammer_loss"):
        DiffHammer(diffhammer_loss="hinge")
    with pytest.raises(ConfigError, match="diffhammer_samples"):
        DiffHammer(diffhammer_samples=0)
    with pytest.raises(ConfigError, match="diffhammer_em_steps"):
        DiffHammer(diffhammer_em_steps=-1)
    with pytest.raises(ConfigError, match="diffhammer_k"):
        DiffHammer(diffhammer_k=-1.0)
    assert DiffHammer(diffhammer_loss="dlr").loss == "dlr" and DiffHammer().loss == "cw"
    assert DiffHammer().name == "diffhammer"


def test_a_tiny_evaluation_with_exact_gradients(assets: Path, tmp_path: Path) -> None:
    cfg = config(assets, tmp_path / "run", attack={"name": "diffhammer", "steps": 1, "gradient": "exact",
                                                   "diffhammer_samples": 2, "diffhammer_em_steps": 1})
    cfg["data"]["n"] = 2
    summary = evaluate(cfg)
    assert summary["n"] == 2 and summary["config"]["attack"]["diffhammer_samples"] == 2

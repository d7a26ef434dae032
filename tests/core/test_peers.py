"""The peers' defences (DiffPure's reverse VP-SDE, GDMP's guided purification): golden values derived by hand,
gradients, ε-call accounting, and a tiny end-to-end evaluation of each."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from conftest import TinyClassifier, config, images, tiny_unet

import hetpure
from hetpure import PurifyConfig
from hetpure.catalog import catalog
from hetpure.errors import ConfigError, HetpureError
from hetpure.evaluate import evaluate
from hetpure.evaluation.config import resolve_config
from hetpure.evaluation.identity import defense_identity
from hetpure.evaluation.report import describe_pipeline, pipeline_calls
from hetpure.gdmp import (
    GDMPPurifier,
    _gdmp_step,
    gdmp_eps_calls,
    gdmp_timesteps,
    guidance_gradient,
    guided_step,
    ssim,
)
from hetpure.models.base import EpsModel
from hetpure.schedule import NoiseSchedule
from hetpure.sde import (
    T_END,
    VPSDE,
    DiffPurePurifier,
    euler_maruyama_step,
    reverse_drift,
    sample_diffpure,
    solver_times,
    start_index,
    step_size,
)

ZEROS = torch.zeros_like


class LinearEps(EpsModel):
    """ε(x, t) = a·x + b·t, recording every timestep it is called with (a closed form for gradient tests)."""

    def __init__(self, a: float = 0.3, b: float = 1e-3) -> None:
        super().__init__(NoiseSchedule.linear(), in_channels=3)
        self.a, self.b = a, b
        self.calls: list[float] = []

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls.append(float(t[0]))
        return self.a * x_t + self.b * t.to(x_t.dtype)[:, None, None, None]


class CountingEps(hetpure.DiffusersEps):
    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__(unet)
        self.count = 0

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.count += 1
        return super().predict_eps(x_t, t)


@pytest.fixture(scope="module")
def eps() -> CountingEps:
    """conftest.py's tiny UNet, counting its calls (``clf`` and ``assets`` are conftest.py's fixtures)."""
    return CountingEps(tiny_unet())


# --- DiffPure: the VP-SDE, golden values by hand ---------------------------------------------------------


def test_vp_sde_is_the_continuous_linear_ddpm_schedule() -> None:
    sde = VPSDE.from_schedule(NoiseSchedule.linear())
    assert sde.beta_min == pytest.approx(0.1) and sde.beta_max == pytest.approx(20.0)
    assert sde.beta(0.1) == pytest.approx(0.1 + 0.1 * 19.9)  # β(t) = β_min + t(β_max − β_min) = 2.09
    # ᾱ(0.1) = exp(−½·19.9·0.01 − 0.1·0.1) = exp(−0.1095) = 0.8962822; the discrete ᾱ_99 is within 1e-3
    assert sde.alpha_bar(0.1) == pytest.approx(0.8962822, abs=1e-7)
    assert abs(sde.alpha_bar(0.1) - NoiseSchedule.linear().alpha_bar(99)) < 1e-3
    assert sde.sigma(0.1) == pytest.approx(0.3220525, abs=1e-7)
    with pytest.raises(ConfigError, match="not linear"):
        VPSDE.from_schedule(NoiseSchedule.from_betas(hetpure.schedule.cosine_betas()))


def test_reverse_drift_is_minus_half_beta_x_plus_two_scores() -> None:
    sde = VPSDE()
    x, eps = torch.tensor([0.5, -1.0]), torch.tensor([0.2, 0.4])
    t = 0.1
    beta, sigma = 2.09, 0.3220525355
    score = -eps / sigma  # s_θ = −ε/σ(t)
    f_rev = -0.5 * beta * (x + 2 * score)  # DiffPure: f_rev(x, t) = −½β(t)[x + 2 s_θ(x, t)]
    assert torch.allclose(reverse_drift(sde, x, eps, t), f_rev, atol=1e-6)
    # the same as Song et al. eq. 6 for the VP-SDE: f − g² s with f = −½βx, g² = β
    assert torch.allclose(reverse_drift(sde, x, eps, t), -0.5 * beta * x - beta * score, atol=1e-6)


def test_euler_maruyama_step_at_zero_noise_by_hand() -> None:
    # x = 0.5, ε = 0.2, t = 0.1, h = 1e-3: x + ½βxh − βεh/σ = 0.5 + 0.0005225 − 0.000418/0.3220525 = 0.4992246
    x, eps = torch.full((1, 3, 2, 2), 0.5), torch.full((1, 3, 2, 2), 0.2)
    out = euler_maruyama_step(VPSDE(), x, eps, 0.1, 1e-3, None)
    assert torch.allclose(out, torch.full_like(x, 0.4992246), atol=1e-7)
    # with noise z = 1 the step adds √(β h) = √0.00209 = 0.0457165
    noisy = euler_maruyama_step(VPSDE(), x, eps, 0.1, 1e-3, torch.ones_like(x))
    assert torch.allclose(noisy - out, torch.full_like(x, 0.0457165), atol=1e-7)


def test_continuous_to_discrete_timesteps() -> None:
    sde = VPSDE()
    assert sde.model_timestep(0.0) == 0.0 and sde.model_timestep(1.0) == pytest.approx(999.0)
    assert sde.model_timestep(0.1) == pytest.approx(99.9)  # t·(T − 1)
    assert start_index(0.1, 1000) == 100 and start_index(0.036, 1000) == 36 and start_index(0.0105, 1000) == 10
    with pytest.raises(ConfigError, match="below one timestep"):
        start_index(0.0001, 1000)
    # DiffPure's 100 steps from t* = 0.1 end at t_end = 1e-5: h = (0.1 − 1e-5)/100
    h = step_size(0.1, 100)
    assert h == pytest.approx(9.999e-4, rel=1e-12) and T_END == 1e-5
    times = solver_times(0.1, 100)
    assert times[0] == 0.1 and times[-1] - h == pytest.approx(1e-5, abs=1e-12)
    # the ε-model sees exactly t_k·999 at each step, after a start at the discrete ᾱ_99
    model = LinearEps()
    sample_diffpure(model, torch.zeros(1, 3, 4, 4), t_star=0.1, sde_steps=4, noise=ZEROS)
    h4 = (0.1 - 1e-5) / 4
    assert model.calls == pytest.approx([(0.1 - k * h4) * 999 for k in range(4)], abs=1e-4)


def test_diffpure_zero_noise_equals_the_written_loop() -> None:
    model = LinearEps()
    x0 = torch.linspace(-1, 1, 48).view(1, 3, 4, 4)
    out = sample_diffpure(model, x0, t_star=0.05, sde_steps=5, noise=ZEROS)
    x = math.sqrt(NoiseSchedule.linear().alpha_bar(49)) * x0  # q(x_49 | x_0) with z = 0
    h = (0.05 - 1e-5) / 5
    for k in range(5):
        t = 0.05 - k * h
        beta = 0.1 + t * 19.9
        sigma = math.sqrt(1 - math.exp(-0.5 * 19.9 * t * t - 0.1 * t))
        e = 0.3 * x + 1e-3 * (t * 999)
        x = x + (0.5 * beta * x - beta * e / sigma) * h
    assert torch.allclose(out, x, atol=1e-5)


# --- GDMP: the guided step ---------------------------------------------------------------------------------


def test_guided_step_by_hand() -> None:
    # β = (0.1, 0.2, 0.3): ᾱ_0 = 0.9, ᾱ_1 = 0.72. Step 1 → 0 with x = 0.5, ε = 0.1, ∇G = 0.3, s = 2, z = 1:
    # x̂_0 = (0.5 − √0.28·0.1)/√0.72 = 0.5268947; μ = 0.6776309·x̂_0 + 0.3194383·0.5 = 0.5167593;
    # guidance β·s·√(0.28/0.72)·∇G = 0.0748331; noise √0.2 = 0.4472136
    schedule = NoiseSchedule.from_betas([0.1, 0.2, 0.3])
    x = torch.full((1, 1, 1, 1), 0.5)
    out = guided_step(schedule, x, torch.full_like(x, 0.1), torch.full_like(x, 0.3), 1, 0, 2.0, torch.ones_like(x))
    assert float(out) == pytest.approx(1.0388060, abs=1e-6)
    mean = guided_step(schedule, x, torch.full_like(x, 0.1), torch.full_like(x, 0.3), 1, 0, 2.0, None)
    assert float(mean) == pytest.approx(0.5915924, abs=1e-6)
    # the last step (to the clean image) returns the clipped x̂_0 plus the guidance
    last = guided_step(schedule, torch.full_like(x, 3.0), torch.zeros_like(x), torch.zeros_like(x), 0, -1, 2.0, None)
    assert float(last) == pytest.approx(1.0)


def test_mse_guidance_gradient_is_the_written_derivative() -> None:
    x, y = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    # G = −mean((x − y)²) per image: ∇_x G = −2(x − y)/(C·H·W)
    assert torch.allclose(guidance_gradient(x, y, "mse"), -2 * (x - y) / 48, atol=1e-7)
    with torch.no_grad():  # also where gradients are off (the defence's own votes), without a graph
        g = guidance_gradient(x, y, "mse")
    assert not g.requires_grad


def test_guided_step_gradient_equals_autograd_of_the_written_formula() -> None:
    """d/dx0 of one GDMP step (guidance gradient by autograd inside, create_graph) equals the derivative of the
    formula written with the analytic ∇G = −2(x − y)/D: the attack's gradient flows through ∇G and y_t."""
    torch.manual_seed(0)
    model = LinearEps(a=0.3, b=0.0).double()
    x0 = (torch.rand(1, 3, 4, 4, dtype=torch.float64) * 1.6 - 0.8).requires_grad_(True)
    zr, z = torch.randn_like(x0), torch.randn_like(x0)
    t, s, scale = 20, 19, 500.0
    sched = model.schedule
    a_t, a_s = sched.alpha_bar(t), sched.alpha_bar(s)
    w = torch.randn_like(x0)

    def written(x0: torch.Tensor, second_order: bool = True) -> torch.Tensor:
        x = 0.7 * x0 + 0.2 * z  # a point on the chain that depends on the input
        y = math.sqrt(a_t) * x0 + math.sqrt(1 - a_t) * zr
        grad = -2 * (x - y) / 48
        grad = grad if second_order else grad.detach()
        beta = 1 - a_t / a_s
        x0_hat = ((x - math.sqrt(1 - a_t) * 0.3 * x) / math.sqrt(a_t)).clamp(-1, 1)
        mean = math.sqrt(a_s) * beta / (1 - a_t) * x0_hat + math.sqrt(1 - beta) * (1 - a_s) / (1 - a_t) * x
        return mean + beta * scale * math.sqrt((1 - a_t) / a_t) * grad + math.sqrt(beta) * z

    def sampler(x0: torch.Tensor) -> torch.Tensor:
        return _gdmp_step(model, x0, "mse", scale, t, s, 0.7 * x0 + 0.2 * z, zr, z)

    assert torch.allclose(sampler(x0), written(x0), atol=1e-12)
    (g_sampler,) = torch.autograd.grad((w * sampler(x0)).sum(), x0)
    (g_written,) = torch.autograd.grad((w * written(x0)).sum(), x0)
    assert torch.allclose(g_sampler, g_written, atol=1e-10)
    # the part through ∇G matters: with ∇G treated as a constant the gradient is another one
    (g_first_order,) = torch.autograd.grad((w * written(x0, second_order=False)).sum(), x0)
    assert (g_first_order - g_written).abs().max() > 1e-5  # 1e5 × the tolerance above


def test_ssim_by_hand_and_its_second_derivatives() -> None:
    torch.manual_seed(1)
    x = torch.rand(1, 1, 12, 12, dtype=torch.float64)
    y = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    assert float(ssim(x, x)) == pytest.approx(1.0)
    # one pixel by hand: Gaussian-weighted local statistics with zero padding (Wang et al. 2004, eq. 13)
    i = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-(i**2) / (2 * 1.5**2))
    win = torch.outer(g / g.sum(), g / g.sum())
    px, py = torch.nn.functional.pad(x, (5, 5, 5, 5))[0, 0], torch.nn.functional.pad(y, (5, 5, 5, 5))[0, 0]
    total = 0.0
    for r in range(12):
        for c in range(12):
            a, b = px[r:r + 11, c:c + 11], py[r:r + 11, c:c + 11]
            mx, my = (win * a).sum(), (win * b).sum()
            vx, vy, cxy = (win * a * a).sum() - mx**2, (win * b * b).sum() - my**2, (win * a * b).sum() - mx * my
            total += float((2 * mx * my + 1e-4) * (2 * cxy + 9e-4) / ((mx**2 + my**2 + 1e-4) * (vx + vy + 9e-4)))
    assert float(ssim(x, y)) == pytest.approx(total / 144, abs=1e-10)
    # ∇SSIM is differentiable in x and y, and its derivatives are right (finite differences, float64)
    xs, ys = x[..., :8, :8].clone().requires_grad_(True), y[..., :8, :8].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: guidance_gradient(a, b, "ssim"), (xs, ys))


# --- gradients through the whole samplers --------------------------------------------------------------


@pytest.mark.parametrize("method, cfg", [
    ("diffpure", PurifyConfig(t_star=0.05, sde_steps=6)),
    ("gdmp", PurifyConfig(t_star=0.006, gdmp_iterations=2, gdmp_guidance="ssim", gdmp_scale=3000.0)),
], ids=["diffpure", "gdmp-ssim"])
def test_exact_gradient_with_and_without_checkpointing_equal(eps, clf, method, cfg) -> None:
    pur = DiffPurePurifier(eps, clf, cfg) if method == "diffpure" else GDMPPurifier(eps, clf, cfg)
    grads = []
    for ck in (False, True):
        x = images().requires_grad_(True)
        model = pur.as_module(use_checkpoint=ck)
        model.generator = torch.Generator().manual_seed(4)
        model(x).logsumexp(1).sum().backward()
        grads.append(x.grad)
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1], atol=1e-6)


def test_adjoint_has_the_same_forward_and_an_approximate_gradient(eps, clf) -> None:
    pytest.importorskip("torchsde")
    pur = DiffPurePurifier(eps, clf, PurifyConfig(t_star=0.1, sde_steps=10))
    outs = {}
    for name, model in (("exact", pur.as_module()), ("adjoint", pur.adjoint_module())):
        x = images().requires_grad_(True)
        pure = model.purifier.purify(x, generator=torch.Generator().manual_seed(2))
        clf(pure).logsumexp(1).sum().backward()
        outs[name] = (pure.detach(), x.grad)
    (a, ga), (b, gb) = outs["exact"], outs["adjoint"]
    assert torch.allclose(a, b, atol=1e-5)  # the same draws in the same order
    cosine = torch.nn.functional.cosine_similarity(ga.flatten(), gb.flatten(), 0)
    assert 0.8 < float(cosine) < 1 - 1e-6  # close, not equal: the adjoint re-solves the SDE backwards


def test_adjoint_without_torchsde_names_the_extra(eps, clf, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchsde", None)  # import torchsde raises ImportError
    pur = DiffPurePurifier(eps, clf, PurifyConfig(t_star=0.1, sde_steps=2))
    with pytest.raises(HetpureError, match=r"pip install 'hetpure\[sde\]'"):
        pur.adjoint_module()


# --- ε-call accounting -----------------------------------------------------------------------------------


def test_eps_calls_are_counted(eps, clf) -> None:
    dp = DiffPurePurifier(eps, clf, PurifyConfig(t_star=0.1))
    assert dp.eps_calls() == 100 and dp.eps_calls(10) == 10  # DiffPure's dt = 1e-3 at t* = 0.1; the surrogate
    gd = GDMPPurifier(eps, clf, PurifyConfig(t_star=0.036))
    assert gd.eps_calls() == 4 * 36 and gd.eps_calls(10) == 4 * 10
    assert gdmp_timesteps(36) == list(range(35, -1, -1))
    short = gdmp_timesteps(36, 10)
    assert len(short) == 10 and short[0] == 35 and short[-1] == 0 and short == sorted(set(short), reverse=True)
    for pur, override in ((DiffPurePurifier(eps, clf, PurifyConfig(t_star=0.02, sde_steps=3)), None),
                          (GDMPPurifier(eps, clf, PurifyConfig(t_star=0.005, gdmp_iterations=2)), None),
                          (GDMPPurifier(eps, clf, PurifyConfig(t_star=0.005, gdmp_iterations=2)), 2)):
        eps.count = 0
        with torch.no_grad():
            pur.purify(images(), noise=ZEROS, ddim_steps=override)
        assert eps.count == pur.eps_calls(override)
    base = {"t_s": 0.1, "t_l": 0.2, "tau": 0.9, "top_p": None, "resample_steps": 3, "repaint_jumps": 1,
            "ddim_steps": 500, "eta": 0.0, "runs": 1, "sampler": "ddim", "levels": "binary", "tau_lo": None,
            "tau_hi": None, "mask_source": "energy", "max_batch": 32, "resize": False, "sde_steps": 100,
            "gdmp_guidance": "mse", "gdmp_scale": 28687.5, "gdmp_iterations": 4}
    assert pipeline_calls({**base, "method": "diffpure", "t_star": 0.1}, 1000) == 100
    assert pipeline_calls({**base, "method": "diffpure", "t_star": 0.1}, 1000, 10) == 10
    assert pipeline_calls({**base, "method": "gdmp", "t_star": 0.036}, 1000) == gdmp_eps_calls(
        PurifyConfig(t_star=0.036)) == 144
    assert pipeline_calls({**base, "method": "gdmp", "t_star": 0.036}, 1000, 10) == 40
    assert describe_pipeline({**base, "method": "diffpure", "t_star": 0.1}) == (
        "diffpure t* = 0.1, Euler–Maruyama 100 steps")
    assert describe_pipeline({**base, "method": "gdmp", "t_star": 0.036}, 10) == (
        "gdmp t* = 0.036, mse guidance s = 28687.5, 4 iterations × 10 steps")


# --- config, identity, listing -----------------------------------------------------------------------------


def test_config_rules(assets: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"method diffpure needs defense.t_star; fix: --set defense.t_star=0.1"):
        resolve_config(config(assets, tmp_path, defense={"method": "diffpure"}))
    with pytest.raises(ConfigError, match="adjoint .* needs defense.method diffpure"):
        resolve_config(config(assets, tmp_path, attack={"gradient": "adjoint"}))
    with pytest.raises(ConfigError, match="gdmp_guidance"):
        resolve_config(config(assets, tmp_path, defense={"method": "gdmp", "t_star": 0.036, "gdmp_guidance": "l1"}))
    with pytest.raises(ConfigError, match="needs t_star"):
        DiffPurePurifier(hetpure.DiffusersEps(tiny_unet()), TinyClassifier(), PurifyConfig())
    # keys only the peers read stay out of other methods' identities (old runs keep their hash)
    het = resolve_config(config(assets, tmp_path))["defense"]
    assert "sde_steps" in het and "sde_steps" not in defense_identity(het)
    dp = resolve_config(config(assets, tmp_path, defense={"method": "diffpure", "t_star": 0.1}))["defense"]
    assert "sde_steps" in defense_identity(dp) and "gdmp_scale" not in defense_identity(dp)


def test_the_peers_are_listed() -> None:
    names = dict(catalog("methods")["methods"])
    assert {"none", "uniform", "heterogeneous", "diffpure", "gdmp"} == set(names)
    assert "Euler–Maruyama" in names["diffpure"] and "guided" in names["gdmp"]


# --- end to end ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("defense, gradient", [
    ({"method": "diffpure", "t_star": 0.02, "sde_steps": 4}, "exact"),
    ({"method": "diffpure", "t_star": 0.02, "sde_steps": 4}, "adjoint"),
    ({"method": "gdmp", "t_star": 0.004, "gdmp_iterations": 2, "gdmp_guidance": "ssim"}, "exact"),
], ids=["diffpure-exact", "diffpure-adjoint", "gdmp-exact"])
def test_tiny_evaluation_of_each_peer(assets: Path, tmp_path: Path, defense: dict, gradient: str) -> None:
    if gradient == "adjoint":
        pytest.importorskip("torchsde")
    sanity = gradient == "adjoint"  # the Carlini et al. checks run through the peers too
    cfg = config(assets, tmp_path / "run", data={"n": 2}, defense={**defense, "runs": 2},
                 attack={"steps": 1, "eot": 1, "gradient": gradient},
                 run={"worst_case_k": 2, "save_images": False, "sanity": sanity, "sanity_n": 2})
    summary = evaluate(cfg)
    assert ("sanity" in summary) == sanity
    calls = 4 if defense["method"] == "diffpure" else 2 * 4
    assert summary["n"] == 2 and summary["eps_calls"]["defence_per_purification"] == calls
    assert summary["eps_calls"]["attack_per_forward_pass"] == calls  # exact / adjoint: the defence itself
    assert summary["eps_calls"]["attack_gradient"] == gradient
    assert summary["pipelines"]["evaluated"].startswith(defense["method"])
    from hetpure.evaluate import read_records

    records = read_records(Path(cfg["run"]["out"]) / "records.jsonl")
    elected = [all(v[r["label"]] == max(v) and v.count(max(v)) == 1 for v in (r["clean_votes"], r["adversarial_votes"]))
               for r in records]
    assert summary["robust_accuracy"] == sum(elected) / len(records)  # counted by hand from the votes
    assert summary["robust_accuracy_worst_case"] <= summary["robust_accuracy"]

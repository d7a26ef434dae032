"""Attacks aimed at heterogeneous purification: mask-aware PGD and low-frequency PGD."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TinyClassifier, tiny_unet

import hetpure
from hetpure.attacks import PGD, LowFrequencyPGD, MaskAwarePGD, attention_overlap, defended_model, make_attack
from hetpure.errors import ConfigError


@pytest.fixture(scope="module")
def purifier() -> hetpure.HeterogeneousPurifier:
    eps = hetpure.DiffusersEps(tiny_unet())
    return hetpure.HeterogeneousPurifier(eps, TinyClassifier().eval(), hetpure.PurifyConfig(tau=0.5, ddim_steps=50))


def data(b: int = 2, lo: float = 0.0, hi: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    x = lo + (hi - lo) * torch.rand(b, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    return x, torch.arange(b)


def test_mask_aware_pgd_leaves_the_high_noise_pixels_alone(purifier) -> None:
    x, y = data()
    model = defended_model(purifier, purifier.classifier, "surrogate", 10)
    model.generator = torch.Generator().manual_seed(1)
    x_adv = MaskAwarePGD(steps=1, step_size=2 / 255)(model, x, y)
    mask = purifier.mask(x)
    delta = (x_adv - x).abs()
    assert 0 < mask.mean() < 1
    assert (delta * mask).max() == 0  # one step: exactly the mask of the clean image is untouched
    assert (delta * (1 - mask)).max() > 0


def test_mask_aware_pgd_weight_mode_scales_steps_by_one_minus_attention(purifier) -> None:
    x, y = data(lo=0.1, hi=0.9)
    model = defended_model(purifier, purifier.classifier, "surrogate", 10)
    model.generator = torch.Generator().manual_seed(1)
    step = 2 / 255
    x_adv = MaskAwarePGD(steps=1, step_size=step, mode="weight")(model, x, y)
    expected = step * (1 - purifier.attention(x))
    delta = (x_adv - x).abs()
    nonzero = delta > 0
    assert nonzero.float().mean() > 0.9
    assert torch.allclose(delta[nonzero], expected.expand_as(delta)[nonzero], atol=1e-6)


def test_mask_aware_pgd_stays_in_the_ball_and_reports_where_it_sits(purifier) -> None:
    x, y = data()
    model = defended_model(purifier, purifier.classifier, "surrogate", 10)
    for norm, eps in (("linf", 8 / 255), ("l2", 0.5)):
        attack = MaskAwarePGD(eps=eps, norm=norm, steps=3, attention_weight=1.0)
        x_adv = attack(model, x, y)
        d = (x_adv - x).flatten(1)
        size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
        assert (size <= eps + 1e-5).all() and x_adv.min() >= 0 and x_adv.max() <= 1
        assert attack.low_noise_fraction is not None and 0.5 < attack.low_noise_fraction <= 1


def test_mask_aware_pgd_without_a_mask_is_plain_pgd(purifier) -> None:
    x, y = data()
    clf = purifier.classifier
    a = MaskAwarePGD(steps=4, step_size=1 / 255, attention_weight=2.0)(clf, x, y)
    b = PGD(steps=4, step_size=1 / 255)(clf, x, y)
    assert torch.equal(a, b)


def test_attention_overlap_hand_values_and_gradient(purifier) -> None:
    x, _ = data(b=1)
    clf, layers = purifier.classifier, purifier.mask_layers
    x_adv = x.clone()
    x_adv[0, 1, 5, 7] += 0.01  # one perturbed pixel: the overlap is the attention there
    energy = hetpure.energy_map(clf, x_adv, layers)
    overlap = attention_overlap(clf, layers, x_adv, x)
    assert overlap.item() == pytest.approx(energy[0, 0, 5, 7].item(), abs=1e-6)
    x_adv = (x + 0.01 * torch.randn_like(x)).requires_grad_(True)
    attention_overlap(clf, layers, x_adv, x).sum().backward()
    assert x_adv.grad is not None and x_adv.grad.abs().sum() > 0
    assert 0 <= attention_overlap(clf, layers, x_adv.detach(), x).item() <= 1


def test_attention_penalty_moves_attention_off_the_perturbation(purifier) -> None:
    x, y = data(b=4)
    clf = purifier.classifier
    model = defended_model(purifier, clf, "surrogate", 10)
    overlaps = []
    for weight in (0.0, 50.0):
        model.generator = torch.Generator().manual_seed(1)
        x_adv = MaskAwarePGD(steps=5, step_size=2 / 255, mode="weight", attention_weight=weight)(model, x, y)
        overlaps.append(attention_overlap(clf, purifier.mask_layers, x_adv, x).mean().item())
    assert overlaps[1] < overlaps[0]


@pytest.mark.parametrize("norm, eps", [("linf", 8 / 255), ("l2", 0.5)])
@pytest.mark.parametrize("upsample", ["bilinear", "nearest"])
def test_low_frequency_pgd_stays_in_the_threat_model(purifier, norm, eps, upsample) -> None:
    x, y = data()
    x_adv = LowFrequencyPGD(eps=eps, norm=norm, steps=3, grid=4, upsample=upsample, random_start=True,
                            generator=torch.Generator().manual_seed(0))(purifier.classifier, x, y)
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert (size <= eps + 1e-5).all() and x_adv.min() >= 0 and x_adv.max() <= 1
    assert (size > 0).all()


def test_low_frequency_perturbation_is_block_constant_with_nearest_upsampling(purifier) -> None:
    x, y = data(lo=0.2, hi=0.8)  # no clipping at the box
    x_adv = LowFrequencyPGD(steps=3, grid=4, upsample="nearest")(purifier.classifier, x, y)
    blocks = (x_adv - x).view(2, 3, 4, 4, 4, 4)  # (b, c, gy, py, gx, px)
    spread = blocks.amax(dim=(3, 5)) - blocks.amin(dim=(3, 5))
    assert spread.max() < 1e-6
    assert (x_adv - x).abs().max() > 0


def test_full_resolution_grid_is_pixel_pgd(purifier) -> None:
    x, y = data(lo=0.2, hi=0.8)
    clf = purifier.classifier
    a = LowFrequencyPGD(steps=4, step_size=1 / 255, grid=16, upsample="nearest")(clf, x, y)
    b = PGD(steps=4, step_size=1 / 255)(clf, x, y)
    assert torch.allclose(a, b, atol=1e-6)


def test_low_frequency_attack_raises_the_loss() -> None:
    x, _ = data(b=8)
    torch.manual_seed(5)
    clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 10))
    with torch.no_grad():
        y = clf(x).argmax(1)
    x_adv = LowFrequencyPGD(eps=32 / 255, steps=10, step_size=4 / 255, grid=4)(clf, x, y)
    with torch.no_grad():
        before = torch.nn.functional.cross_entropy(clf(x), y)
        after = torch.nn.functional.cross_entropy(clf(x_adv), y)
    assert after > before + 0.1


def test_adaptive_attack_configuration_errors() -> None:
    assert isinstance(make_attack("mask-pgd", mode="weight"), MaskAwarePGD)
    assert isinstance(make_attack("lowfreq-pgd", grid=2), LowFrequencyPGD)
    with pytest.raises(ConfigError, match="mode"):
        MaskAwarePGD(mode="everywhere")
    with pytest.raises(ConfigError, match="attention_weight"):
        MaskAwarePGD(attention_weight=-1)
    with pytest.raises(ConfigError, match="grid"):
        LowFrequencyPGD(grid=0)
    with pytest.raises(ConfigError, match="finer"):
        LowFrequencyPGD(grid=32)(TinyClassifier(), *data())


def test_mask_aware_pgd_is_plain_pgd_when_the_mask_is_fixed(purifier) -> None:
    x, y = data()
    fixed = hetpure.HeterogeneousPurifier(purifier.eps_model, purifier.classifier,
                                          purifier.config.replace(mask_source="all"))
    model = defended_model(fixed, fixed.classifier, "surrogate", 10)
    results = []
    for attack in (MaskAwarePGD(steps=2, attention_weight=1.0), PGD(steps=2)):
        model.generator = torch.Generator().manual_seed(3)
        results.append(attack(model, x, y))
    assert torch.equal(*results) and (results[0] != x).any()


def test_mask_aware_pgd_follows_graded_levels(purifier) -> None:
    x, y = data()
    graded = hetpure.HeterogeneousPurifier(purifier.eps_model, purifier.classifier,
                                           purifier.config.replace(levels="graded", tau_lo=0.3, tau_hi=0.6))
    model = defended_model(graded, graded.classifier, "surrogate", 10)
    model.generator = torch.Generator().manual_seed(1)
    x_adv = MaskAwarePGD(steps=1, step_size=2 / 255)(model, x, y)
    noised = graded.level_weights(x) > 0  # every pixel that starts above t_s
    assert noised.float().mean() > torch.as_tensor(purifier.mask(x)).mean()
    assert ((x_adv - x).abs() * noised).max() == 0


def test_low_frequency_l2_steps_have_image_space_norm_alpha(purifier) -> None:
    x, y = data(lo=0.3, hi=0.7)
    step = 0.1
    for upsample in ("bilinear", "nearest"):
        x_adv = LowFrequencyPGD(eps=2.0, norm="l2", steps=1, step_size=step, grid=4, upsample=upsample)(
            purifier.classifier, x, y)
        assert torch.allclose((x_adv - x).flatten(1).norm(dim=1), torch.full((2,), step), atol=1e-5)


@pytest.mark.parametrize("attack", [
    {"name": "mask-pgd", "mask_mode": "restrict"},
    {"name": "mask-pgd", "mask_mode": "weight", "attention_weight": 1.0},
    {"name": "lowfreq-pgd", "grid": 8}])
def test_the_verdicts_mask_aware_attacks_run_with_exact_gradients(assets, tmp_path, attack) -> None:
    """The rows of bench/cifar10_verdict.py: each mask-aware attack differentiates the S-step sampler itself
    and keeps its perturbation in the ε-ball."""
    from conftest import config

    from hetpure.evaluate import evaluate

    cfg = config(assets, tmp_path / "exact", data={"n": 2}, run={"worst_case_k": 1},
                 attack={"steps": 1, "eot": 2, "gradient": "exact", **attack})
    s = evaluate(cfg)
    assert s["n"] == 2 and s["eps_calls"]["attack_gradient"] == "exact"
    assert s["config"]["attack"]["name"] == attack["name"]
    records = [json.loads(line) for line in (tmp_path / "exact" / "records.jsonl").read_text().splitlines()]
    assert all(0 < r["perturbation_linf"] <= cfg["attack"].get("eps", 8 / 255) + 1e-6 for r in records)

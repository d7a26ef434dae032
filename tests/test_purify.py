"""The purification engine: golden values of the official loop, properties, API and errors."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import UNet2DModel
from safetensors import safe_open
from torch import nn

import hetpure
from hetpure import HeterogeneousPurifier, PurifyConfig, UniformPurifier
from hetpure.errors import ConfigError, HetpureError
from hetpure.schedule import ddim_timesteps

ZEROS = torch.zeros_like


def tiny_unet(seed: int = 0, size: int = 16) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=size, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    ).eval()


class TinyClassifier(nn.Module):
    """Two conv stages: enough to hook, small enough to be fast."""

    mask_layers = ["stage1", "stage2"]

    def __init__(self, channels: int = 3, classes: int = 10) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.stage1 = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage2(self.stage1(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def eps() -> hetpure.DiffusersEps:
    return hetpure.DiffusersEps(tiny_unet())


@pytest.fixture(scope="module")
def clf() -> TinyClassifier:
    return TinyClassifier().eval()


def images(b: int = 2, size: int = 16, seed: int = 3) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --- golden file of the official implementation -------------------------------------------------------


@pytest.fixture(scope="module")
def golden(request: pytest.FixtureRequest):
    from conftest import fixture_file

    path = fixture_file("hetero_sampler_zero_noise.safetensors")
    f = safe_open(str(path), "pt")
    meta = f.metadata()
    unet = UNet2DModel(**json.loads(meta["unet_config"]))
    unet.load_state_dict({k[5:]: f.get_tensor(k) for k in f.keys() if k.startswith("unet.")})
    tensors = {k: f.get_tensor(k) for k in f.keys() if not k.startswith("unet.")}
    return hetpure.DiffusersEps(unet.eval()), json.loads(meta["cases"]), tensors


def test_golden_official_loop_zero_noise(golden, clf) -> None:
    eps_model, cases, t = golden
    x = (t["input.x0"] + 1) / 2
    assert len(cases) == 4
    for i, case in enumerate(cases):
        cfg = PurifyConfig(t_s=case["t_s"], t_l=case["t_l"], resample_steps=case["U"], ddim_steps=case["ddim_steps"])
        pur = HeterogeneousPurifier(eps_model, clf, cfg)
        with torch.no_grad():
            out = pur.purify(x, mask=t["input.mask"], noise=ZEROS)
        expected = ((t[f"output.case{i}"] + 1) / 2).clamp(0, 1)
        assert (out - expected).abs().max() < 1e-5, f"case {i} {case}"


def test_golden_detects_an_off_by_one_in_u(golden, clf) -> None:
    """The golden comparison can fail: one forward step fewer moves the result far beyond 1e-5."""
    eps_model, cases, t = golden
    case = cases[1]
    cfg = PurifyConfig(t_s=case["t_s"], t_l=case["t_l"], resample_steps=case["U"] - 1, ddim_steps=case["ddim_steps"])
    with torch.no_grad():
        pur = HeterogeneousPurifier(eps_model, clf, cfg)
        out = pur.purify((t["input.x0"] + 1) / 2, mask=t["input.mask"], noise=ZEROS)
    assert (out - ((t["output.case1"] + 1) / 2).clamp(0, 1)).abs().max() > 1e-4


# --- schedule -------------------------------------------------------------------------------------------


def test_timesteps_match_the_issue_examples() -> None:
    assert ddim_timesteps(1000, 10, 0.2) == [200, 100, 0]
    ts = ddim_timesteps(1000, 500, 0.2)
    assert ts[:3] == [200, 198, 196] and ts[-1] == 0 and len(ts) == 101


def test_eps_calls_accounting(eps, clf) -> None:
    pur = HeterogeneousPurifier(eps, clf, PurifyConfig(ddim_steps=500))
    assert pur.eps_calls() == 100 and pur.eps_calls(10) == 2
    uni = UniformPurifier(eps, clf, PurifyConfig(t_star=0.1, sampler="ddpm"))
    assert uni.eps_calls() == 100


# --- properties -----------------------------------------------------------------------------------------


def test_ts_equal_tl_is_uniform_ddim(eps, clf) -> None:
    x = images()
    het = HeterogeneousPurifier(eps, clf, PurifyConfig(t_s=0.2, t_l=0.2, ddim_steps=50))
    uni = UniformPurifier(eps, clf, PurifyConfig(t_star=0.2, ddim_steps=50))
    with torch.no_grad():
        for noise_kw in ({"noise": ZEROS}, {"generator": None}):
            g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
            a = het.purify(x, generator=g1) if "generator" in noise_kw else het.purify(x, **noise_kw)
            b = uni.purify(x, generator=g2) if "generator" in noise_kw else uni.purify(x, **noise_kw)
            assert torch.equal(a, b)


def test_u0_full_mask_is_plain_ddim_from_tl(eps, clf) -> None:
    x = images()
    het = HeterogeneousPurifier(eps, clf, PurifyConfig(t_s=0.05, t_l=0.2, resample_steps=0, ddim_steps=50))
    uni = UniformPurifier(eps, clf, PurifyConfig(t_star=0.2, ddim_steps=50))
    ones = torch.ones(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(het.purify(x, mask=ones, noise=ZEROS), uni.purify(x, noise=ZEROS))
        # in distribution with real noise: the means over many runs agree
        xs = x[:1].repeat(128, 1, 1, 1)
        g = torch.Generator().manual_seed(0)
        a = het.purify(xs, mask=ones[:1], generator=g)
        b = uni.purify(xs, generator=g)
    se = ((a.var(0) + b.var(0)) / 128).sqrt().clamp_min(1e-4)
    z = ((a.mean(0) - b.mean(0)).abs() / se).mean()
    assert z < 1.0  # |N(0,1)| averages 0.8 when both samplers have the same distribution


def test_zero_mask_keeps_every_pixel_on_the_low_noise_path(eps, clf) -> None:
    """With m ≡ 0 each stage-1 step starts from a fresh q(x_t|x0): the result is the low path from t_s."""
    x = images()
    cfg = PurifyConfig(t_s=0.1, t_l=0.2, resample_steps=0, ddim_steps=50)
    het = HeterogeneousPurifier(eps, clf, cfg)
    with torch.no_grad():
        zero_mask = het.purify(x, mask=torch.zeros(2, 1, 16, 16), noise=ZEROS)
        # the last stage-1 step starts from q(x_{t}|x0) at t = t_s·T + stride: a uniform DDIM from there
        low = UniformPurifier(eps, clf, PurifyConfig(t_star=0.12, ddim_steps=50)).purify(x, noise=ZEROS)
        full = het.purify(x, mask=torch.ones(2, 1, 16, 16), noise=ZEROS)
    assert torch.allclose(zero_mask, low, atol=1e-6)
    assert (zero_mask - full).abs().max() > 1e-3


def test_identical_generators_identical_results(eps, clf) -> None:
    x = images()
    pur = HeterogeneousPurifier(eps, clf, PurifyConfig(tau=0.5, ddim_steps=50))
    with torch.no_grad():
        a = pur.purify(x, generator=torch.Generator().manual_seed(11))
        b = pur.purify(x, generator=torch.Generator().manual_seed(11))
        c = pur.purify(x, generator=torch.Generator().manual_seed(12))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and 0 <= float(a.min()) and float(a.max()) <= 1


def test_gradients_flow_through_as_module(eps, clf) -> None:
    pur = HeterogeneousPurifier(eps, clf, PurifyConfig(tau=0.5, ddim_steps=20))
    x = images().requires_grad_(True)
    logits = pur.as_module()(x)
    assert logits.shape == (2, 10)
    (grad,) = torch.autograd.grad(logits.logsumexp(1).sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_checkpointed_gradient_equals_plain(eps, clf) -> None:
    pur = HeterogeneousPurifier(eps, clf, PurifyConfig(tau=0.5, ddim_steps=50, eta=0.5))
    x = images()
    grads = []
    for use_checkpoint in (False, True):
        xr = x.clone().requires_grad_(True)
        mod = pur.as_module(use_checkpoint=use_checkpoint)
        mod.generator = torch.Generator().manual_seed(3)
        loss = nn.functional.cross_entropy(mod(xr), torch.tensor([1, 2]))
        grads.append(torch.autograd.grad(loss, xr)[0])
    assert (grads[0] - grads[1]).abs().max() < 1e-5
    assert grads[0].abs().sum() > 0


# --- masks ----------------------------------------------------------------------------------------------


def test_mask_is_binary_and_top_p_counts(eps, clf) -> None:
    x = images(4)
    m = HeterogeneousPurifier(eps, clf, PurifyConfig(tau=0.6)).mask(x)
    assert m.shape == (4, 1, 16, 16) and set(m.unique().tolist()) <= {0.0, 1.0}
    mp = HeterogeneousPurifier(eps, clf, PurifyConfig(top_p=0.15)).mask(x)
    assert mp.sum((1, 2, 3)).tolist() == [round(0.15 * 256)] * 4


def test_energy_map_matches_hand_computation(clf) -> None:
    x = images(2)
    acts = {}
    h1 = clf.stage1.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o))
    h2 = clf.stage2.register_forward_hook(lambda m, i, o: acts.__setitem__("b", o))
    with torch.no_grad():
        clf(x)
    h1.remove()
    h2.remove()
    maps = []
    for a in (acts["a"], acts["b"]):
        e = nn.functional.interpolate(a.pow(2).sum(1, keepdim=True), size=(16, 16), mode="bilinear")
        lo = e.amin((2, 3), keepdim=True)
        hi = e.amax((2, 3), keepdim=True)
        maps.append((e - lo) / (hi - lo))
    expected = torch.maximum(*maps)
    got = hetpure.energy_map(clf, x, clf.mask_layers)
    assert torch.allclose(got, expected, atol=1e-6)
    assert got.amax((1, 2, 3)).tolist() == [1.0, 1.0]


def test_hooks_are_removed_after_every_call(eps, clf) -> None:
    pur = HeterogeneousPurifier(eps, clf, PurifyConfig(tau=0.5, ddim_steps=10))
    for _ in range(3):
        pur.mask(images())
        pur.predict(images(), runs=2)
    assert all(len(m._forward_hooks) == 0 for m in clf.modules())


def test_hooks_removed_even_when_forward_fails() -> None:
    class Broken(TinyClassifier):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.stage1(x)
            raise RuntimeError("boom")

    model = Broken()
    with pytest.raises(RuntimeError):
        hetpure.energy_map(model, images(), model.mask_layers)
    assert all(len(m._forward_hooks) == 0 for m in model.modules())


# --- prediction -----------------------------------------------------------------------------------------


def test_majority_vote_ties_go_to_lowest_label() -> None:
    labels = torch.tensor([[3, 1], [1, 1], [3, 2], [1, 2]])  # (R=4, B=2)
    winner, counts = hetpure.majority_vote(labels, 5)
    assert winner.tolist() == [1, 1]
    assert counts[0].tolist() == [0, 2, 0, 2, 0]


def test_predict_batched_equals_loop_of_runs(eps, clf) -> None:
    """The batched ensemble (B·R in chunks) gives the same votes as R purifications one by one."""
    x = images(3)
    pur = HeterogeneousPurifier(eps, clf, PurifyConfig(tau=0.5, ddim_steps=10, runs=4, max_batch=5))
    with torch.no_grad():
        counts = pur.vote_counts(x, noise=ZEROS)
        one = clf(pur.purify(x, noise=ZEROS)).argmax(1)
    assert counts.sum(1).tolist() == [4, 4, 4]
    assert counts.argmax(1).tolist() == one.tolist()
    assert pur.predict(x, generator=torch.Generator().manual_seed(0)).dtype == torch.int64


# --- errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"t_s": 0.3, "t_l": 0.2}, "t_s <= t_l"),
        ({"tau": 1.5}, "tau"),
        ({"top_p": 0.0}, "top_p"),
        ({"ddim_steps": 2, "t_l": 0.2}, "empty schedule"),
        ({"t_l": 0.999, "resample_steps": 3, "ddim_steps": 1000}, "below T"),
        ({"levels": "smooth"}, "levels"),
    ],
)
def test_config_errors(eps, clf, kwargs, words) -> None:
    with pytest.raises(ConfigError, match=words):
        HeterogeneousPurifier(eps, clf, PurifyConfig(**kwargs))


def test_uniform_needs_t_star(eps, clf) -> None:
    with pytest.raises(ConfigError, match="t_star"):
        UniformPurifier(eps, clf, PurifyConfig())


@pytest.mark.parametrize(
    "x, words",
    [
        (torch.rand(3, 16, 16), "batch"),
        (torch.rand(1, 3, 16, 16) * 2, "outside \\[0, 1\\]"),
        (torch.full((1, 3, 16, 16), float("nan")), "NaN"),
        (torch.rand(1, 1, 16, 16), "channels"),
        (torch.randint(0, 255, (1, 3, 16, 16)), "dtype"),
        (torch.rand(1, 3, 24, 24), "resize"),
    ],
)
def test_image_errors(eps, clf, x, words) -> None:
    pur = HeterogeneousPurifier(eps, clf, PurifyConfig(ddim_steps=10))
    with pytest.raises(HetpureError, match=words):
        pur.purify(x)


def test_resize_round_trip(eps, clf) -> None:
    pur = HeterogeneousPurifier(eps, clf, PurifyConfig(ddim_steps=10, tau=0.5, resize=True))
    with torch.no_grad():
        out = pur.purify(torch.rand(1, 3, 24, 24), noise=ZEROS)
    assert out.shape == (1, 3, 24, 24)


def test_missing_layer_named_in_error(eps, clf) -> None:
    pur = HeterogeneousPurifier(eps, clf, PurifyConfig(), mask_layers=["stage3"])
    with pytest.raises(HetpureError, match="stage3"):
        pur.mask(images())


def test_classifier_that_returns_a_tuple_is_refused(eps) -> None:
    class TupleOut(TinyClassifier):
        def forward(self, x: torch.Tensor):  # type: ignore[override]
            return super().forward(x), None

    pur = HeterogeneousPurifier(eps, TupleOut(), PurifyConfig(ddim_steps=10, tau=0.5))
    with pytest.raises(HetpureError, match="logits"):
        pur.predict(images(), runs=1)

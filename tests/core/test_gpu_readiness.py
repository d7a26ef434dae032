"""GPU readiness, tested on the CPU: device-agnostic rules, refusals, frozen models, chunk sizes,
error paths of the distributed run, and the benchmark flags that only matter on a GPU."""

from __future__ import annotations

import datetime
import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import hetpure.devices as devices
from hetpure import HeterogeneousPurifier, PurifyConfig, UniformPurifier
from hetpure.attacks import PGD, BPDAPurified, cross_entropy, defended_model
from hetpure.devices import (
    check_gradient_precision,
    device_generator,
    draw_device,
    freeze,
    is_large_eps_model,
)
from hetpure.distributed import DistContext, collective_timeout, teardown_on_exit
from hetpure.errors import ConfigError, HetpureError
from hetpure.mask import gradcam_map, random_mask_like
from hetpure.models.base import EpsModel
from hetpure.models.fast import AcceleratedEps
from hetpure.presets import MEMORY_MAX_BATCH, get_preset
from hetpure.purify import PurifiedClassifier, sample_heterogeneous
from hetpure.schedule import NoiseSchedule

REPO = Path(__file__).resolve().parents[2]  # tests/core/ → the repository root


class ToyEps(EpsModel):
    """A one-convolution ε-model that records the batch of every call."""

    def __init__(self, image_size: int | None = None) -> None:
        super().__init__(NoiseSchedule.linear(1000, 1e-4, 2e-2), 3, image_size)
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.batches: list[int] = []

    def predict_eps(self, x_t: Tensor, t: Tensor) -> Tensor:
        self.batches.append(x_t.shape[0])
        return 0.1 * self.conv(x_t.to(self.conv.weight.dtype)).float()


class ToyClassifier(nn.Module):
    mask_layers = ["stage1", "stage2"]

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.stage1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(8, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stage2(self.stage1(x)).mean((2, 3)))


def images(b: int, seed: int = 0) -> Tensor:
    return torch.rand(b, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def purifier(**changes: Any) -> HeterogeneousPurifier:
    cfg = PurifyConfig(t_s=0.1, t_l=0.2, tau=0.5, ddim_steps=20, runs=2).replace(**changes)
    return HeterogeneousPurifier(ToyEps(), ToyClassifier().eval(), cfg)


# --- 1 + 10: random draws on the generator's device ----------------------------------------------------------


def test_random_mask_draws_on_the_generators_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CUDA generator here, so a stand-in generator reports another device: the mask's draw must be made
    there (a CPU-only draw fails with a CUDA generator) and the result moved to the mask's device."""
    mask = (images(2)[:, :1] > 0.5).float()
    seen: list[torch.device] = []
    real_rand = torch.rand

    def fake_rand(*shape: Any, generator: Any = None, device: Any = None, **kw: Any) -> Tensor:
        seen.append(torch.device(device))
        return real_rand(*shape)

    class OtherDeviceGenerator:
        device = torch.device("meta")

    monkeypatch.setattr(torch, "rand", fake_rand)
    out = random_mask_like(mask, OtherDeviceGenerator())  # type: ignore[arg-type]
    assert seen == [torch.device("meta")]
    assert out.device == mask.device
    assert torch.equal(out.flatten(1).sum(1), mask.flatten(1).sum(1))


def test_draw_device_reads_the_generator() -> None:
    assert draw_device(torch.Generator(), "meta") == torch.device("cpu")
    assert draw_device(None, "meta") == torch.device("meta")


def test_device_generator_keeps_cpu_streams_and_seeds_one_device_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(7)
    assert device_generator(g, torch.device("cpu")) is g  # CPU data: the same generator, the same stream
    assert device_generator(None, torch.device("meta")) is None
    made: list[tuple[torch.device, int]] = []

    class FakeDeviceGenerator:
        def __init__(self, device: torch.device) -> None:
            self.device = device

        def manual_seed(self, seed: int) -> FakeDeviceGenerator:
            made.append((self.device, seed))
            return self

    expected = int(torch.randint(0, 2**63 - 1, (), generator=torch.Generator().manual_seed(7)))
    monkeypatch.setattr(torch, "Generator", FakeDeviceGenerator)
    out = device_generator(g, torch.device("meta"))  # accelerator data: one seeded device generator per call
    assert isinstance(out, FakeDeviceGenerator) and made == [(torch.device("meta"), expected)]


# --- 3: chunks sized by max_batch, checkpointing on large models, derived EOT chunks ----------------------------


def test_purified_classifier_chunks_by_max_batch_with_gradients() -> None:
    pur = purifier(max_batch=3)
    module = pur.as_module(ddim_steps=10, use_checkpoint=True, max_batch=3)
    x = images(7).requires_grad_(True)
    pur.eps_model.batches.clear()
    logits = module(x)
    assert logits.shape == (7, 10)
    assert pur.eps_model.batches and max(pur.eps_model.batches) <= 3
    (g,) = torch.autograd.grad(logits.logsumexp(1).sum(), x)
    assert g.abs().sum() > 0
    with pytest.raises(ConfigError, match="max_batch"):
        PurifiedClassifier(pur, max_batch=0)(x)


def test_small_models_keep_the_unchunked_uncheckpointed_pass() -> None:
    pur = purifier()
    assert not is_large_eps_model(pur.eps_model)
    surrogate = defended_model(pur, pur.classifier, "surrogate", 10)
    assert surrogate.max_batch is None and not surrogate.use_checkpoint
    exact = defended_model(pur, pur.classifier, "exact")
    assert exact.max_batch is None and exact.use_checkpoint
    assert PGD(steps=1).chunk_size(surrogate) == 256  # the default, unchanged for small models


def test_large_models_are_chunked_and_checkpointed(monkeypatch: pytest.MonkeyPatch) -> None:
    assert is_large_eps_model(ToyEps(image_size=256))
    monkeypatch.setattr(devices, "LARGE_MODEL_PARAMETERS", 1)  # make the toy model "large"
    pur = purifier(max_batch=4)
    assert is_large_eps_model(pur.eps_model)
    for gradient in ("surrogate", "exact"):
        model = defended_model(pur, pur.classifier, gradient, 10)
        assert model.use_checkpoint and model.max_batch == 4
    bpda = defended_model(pur, pur.classifier, "bpda")
    assert isinstance(bpda, BPDAPurified) and bpda.max_batch == 4
    model = defended_model(pur, pur.classifier, "surrogate", 10)
    attack = PGD(steps=1, eot=5)  # eot_batch None: derived from the model's memory-sized max_batch
    assert attack.chunk_size(model) == 4
    assert PGD(steps=1, eot_batch=256).chunk_size(model) == 4  # the model caps a larger explicit value
    assert PGD(steps=1, eot_batch=2).chunk_size(model) == 2
    x, y = images(3), torch.tensor([0, 1, 2])
    pur.eps_model.batches.clear()
    grad, loss, logits = attack.gradient(model, x, y, cross_entropy)
    assert max(pur.eps_model.batches) <= 4 and grad.shape == x.shape and logits.shape == (3, 10)


def test_eot_chunks_split_rows_when_the_batch_exceeds_them() -> None:
    clf = ToyClassifier().eval()
    x, y = images(5), torch.arange(5)
    whole = PGD(steps=1, eot=3).gradient(clf, x, y, cross_entropy)
    split = PGD(steps=1, eot=3, eot_batch=2).gradient(clf, x, y, cross_entropy)
    for a, b in zip(whole, split):
        assert torch.allclose(a, b, atol=1e-6)


def test_presets_carry_a_memory_sized_max_batch_and_derive_eot_batch() -> None:
    for name, size in MEMORY_MAX_BATCH.items():
        preset = get_preset(name)
        assert preset["defense"]["max_batch"] == size and preset["attack"]["eot_batch"] == size
    assert MEMORY_MAX_BATCH["imagenet-adm"] < MEMORY_MAX_BATCH["cifar10-scoresde"] < 256


# --- 5: float16 refused on gradient paths, bfloat16 allowed --------------------------------------------------


def test_float16_is_refused_on_gradient_paths() -> None:
    pur = purifier()
    pur.eps_model.half()
    for gradient in ("surrogate", "exact"):
        with pytest.raises(ConfigError, match="float16 is refused on gradient paths.*bfloat16"):
            defended_model(pur, pur.classifier, gradient, 10)
    module = pur.as_module(ddim_steps=10)
    with pytest.raises(ConfigError, match="float16"):
        module(images(2).requires_grad_(True))
    bpda = defended_model(pur, pur.classifier, "bpda")  # no gradient through the ε-model: allowed
    assert isinstance(bpda, BPDAPurified)
    with pytest.raises(ConfigError, match="float16"):
        defended_model(None, ToyClassifier().half(), "surrogate")


def test_float16_autocast_is_refused_and_bfloat16_allowed() -> None:
    wrapper = nn.Module()
    wrapper.autocast_dtype = torch.float16  # what AcceleratedEps(autocast="fp16") carries
    with pytest.raises(ConfigError, match="float16"):
        check_gradient_precision([wrapper], "test")
    pur = purifier()
    pur.eps_model.to(torch.bfloat16)
    assert defended_model(pur, pur.classifier, "exact").use_checkpoint  # bf16: built, not refused


# --- 6: the distributed run: shared folder, merged count, failure reports, timeout --------------------------


def test_merged_count_must_equal_the_runs_images(tmp_path: Path) -> None:
    ctx = DistContext()
    ctx.check_merged(5, 5, tmp_path)
    with pytest.raises(HetpureError, match="found 3 of the run's 5 records.*shared.*copy every node"):
        ctx.check_merged(3, 5, tmp_path)
    ctx.check_shared_folder(tmp_path)  # one process: nothing to check


def test_collective_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HETPURE_DIST_TIMEOUT_MINUTES", raising=False)
    assert collective_timeout() == datetime.timedelta(days=1)
    monkeypatch.setenv("HETPURE_DIST_TIMEOUT_MINUTES", "90")
    assert collective_timeout() == datetime.timedelta(minutes=90)
    assert collective_timeout(5) == datetime.timedelta(minutes=5)  # run.dist_timeout_minutes wins
    monkeypatch.setenv("HETPURE_DIST_TIMEOUT_MINUTES", "soon")
    with pytest.raises(ConfigError, match="HETPURE_DIST_TIMEOUT_MINUTES"):
        collective_timeout()


def test_teardown_on_exit_closes_the_context_after_an_exception() -> None:
    ctx = DistContext()
    DistContext.active = ctx

    @teardown_on_exit
    def failing() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        failing()
    assert ctx.closed and DistContext.active is None


# --- 8: Grad-CAM with a frozen classifier; evaluation freezes the models -------------------------------------


def test_gradcam_works_with_a_frozen_classifier() -> None:
    clf = ToyClassifier().eval()
    x = images(3)
    reference = gradcam_map(clf, x, clf.mask_layers)
    freeze(clf)
    assert not any(p.requires_grad for p in clf.parameters())
    frozen = gradcam_map(clf, x, clf.mask_layers)
    assert torch.equal(frozen, reference) and frozen.shape == (3, 1, 8, 8)
    pur = HeterogeneousPurifier(ToyEps(), clf, PurifyConfig(tau=0.5, ddim_steps=20, mask_source="gradcam"))
    assert pur.mask(x).shape == (3, 1, 8, 8)


def test_attacks_run_on_frozen_models() -> None:
    pur = purifier()
    freeze(pur.classifier, pur)
    assert not any(p.requires_grad for p in pur.parameters())
    model = defended_model(pur, pur.classifier, "surrogate", 10)
    x, y = images(2), torch.tensor([1, 2])
    grad, _, _ = PGD(steps=1).gradient(model, x, y, cross_entropy)
    assert grad.abs().sum() > 0


# --- 9: the timestep range is checked once per sampler call ----------------------------------------------------


def test_sampler_checks_integer_timesteps_once() -> None:
    eps = ToyEps()
    x0 = images(1) * 2 - 1
    with pytest.raises(HetpureError, match=r"timesteps must lie in \[0, 1000\)"):
        sample_heterogeneous(eps, x0, torch.zeros(1, 1, 8, 8), t_s=0.5, t_l=1.0, ddim_steps=1000, resample_steps=3)
    with pytest.raises(HetpureError, match="timesteps must lie"):
        eps(x0, 1000)  # a Python number is checked without a device sync


# --- 11: compiled calls padded to one batch, CUDA graphs only under no_grad ------------------------------------


def test_compiled_calls_are_padded_and_graphs_never_differentiated(monkeypatch: pytest.MonkeyPatch) -> None:
    inner = ToyEps()
    fast = AcceleratedEps(inner, compile=True)  # torch.compile is lazy: nothing compiles unless called
    calls: list[tuple[str, int]] = []
    fast._call = lambda x, t: (calls.append(("graphs", x.shape[0])), inner.predict_eps(x, t))[1]
    fast._grad_call = lambda x, t: (calls.append(("eager", x.shape[0])), inner.predict_eps(x, t))[1]
    fast.flags["cuda_graphs"] = True  # stand-in: CUDA graphs cannot be built on a CPU
    pur = UniformPurifier(fast, ToyClassifier().eval(), PurifyConfig(t_star=0.2, ddim_steps=20, max_batch=4))
    assert fast.pad_batch == 4
    x = images(6)
    expected = inner.predict_eps(x * 2 - 1, torch.full((6,), 5.0))
    assert torch.allclose(fast(x * 2 - 1, 5), expected, atol=1e-6)
    steps: list[int] = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: steps.append(1))
    calls.clear()
    with torch.no_grad():
        pur.purify(x, generator=torch.Generator().manual_seed(0))
    assert steps == [1] and calls and all(c == ("graphs", 4) for c in calls)
    calls.clear()
    pur.as_module()(x.requires_grad_(True)).sum().backward()
    assert calls and all(c == ("eager", 4) for c in calls)


# --- 12: --max-batch for the paper budget and the speed table --------------------------------------------------


@pytest.fixture
def cifar10_robust(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location("cifar10_robust_max_batch", REPO / "bench/cifar10_robust.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "shared_dir", lambda: tmp_path)
    return module


def test_cifar10_robust_max_batch_reaches_every_row(cifar10_robust: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["cifar10_robust.py", "table", "--paper-budget", "--max-batch", "256"])
    parser_args = _parse(cifar10_robust)
    assert parser_args.max_batch == 256 and parser_args.paper_budget
    for row in cifar10_robust.ROWS:
        cfg = cifar10_robust.row_config(row, parser_args)
        for defense in (cfg["defense"], cfg["attack"].get("through")):
            if defense and defense["method"] != "none":
                assert defense["max_batch"] == 256, row
    monkeypatch.setattr(sys, "argv", ["cifar10_robust.py", "table"])
    default = _parse(cifar10_robust)
    assert default.max_batch is None
    assert "max_batch" not in cifar10_robust.row_config("heterogeneous", default)["defense"]  # identities unchanged


def _parse(module: Any) -> Any:
    """The script's parsed arguments (its main() parses sys.argv and dispatches; dispatch is caught here)."""
    seen: dict[str, Any] = {}

    def capture(args: Any) -> None:
        seen["args"] = args

    for name in ("table", "tune", "sweep", "figures", "ablations", "cost"):
        setattr(module, name, capture)
    module.main()
    return seen["args"]


@pytest.mark.parametrize("script", ["speed.py", "flags.py"])
def test_benchmarks_offer_gpu_flags(script: str) -> None:
    out = subprocess.run([sys.executable, str(REPO / "bench" / script), "--help"], capture_output=True, text=True,
                         cwd=REPO / "bench", timeout=120)
    assert out.returncode == 0, out.stderr
    for flag in ("--cudnn-benchmark", "--tf32", "--device") + (("--max-batch",) if script == "speed.py" else ()):
        assert flag in out.stdout


# --- 16: checkpointing does not save RNG states ----------------------------------------------------------------


def test_checkpoint_does_not_preserve_rng_state(monkeypatch: pytest.MonkeyPatch) -> None:
    import hetpure.sampling as purify_module

    seen: list[dict[str, Any]] = []
    real = purify_module._checkpoint

    def recording(*args: Any, **kwargs: Any) -> Tensor:
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(purify_module, "_checkpoint", recording)
    pur = purifier()
    x = images(2)
    grads = []
    for use_checkpoint in (True, False):
        xr = x.clone().requires_grad_(True)
        out = pur.purify(xr, generator=torch.Generator().manual_seed(4), use_checkpoint=use_checkpoint)
        grads.append(torch.autograd.grad(out.square().sum(), xr)[0])
    assert seen and all(k.get("preserve_rng_state") is False and k.get("use_reentrant") is False for k in seen)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)  # the noise is drawn before each step: same result

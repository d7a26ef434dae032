"""Classifiers: golden outputs, manifest key layouts, the shared ResNet-20, registry and wrappers."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from conftest import fixture_file, shared_file
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import hetpure
from hetpure.errors import CheckpointError, HetpureError
from hetpure.models.checkpoint import load_into
from hetpure.models.classifiers import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CifarResNet,
    DMWideResNet,
    MnistCNN,
    WideResNet,
    as_classifier,
    check_logits,
    resolve_layers,
)

RESNET20 = "models/resnet20-cifar10/model.safetensors"


def _tiny_fixture(name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    path = fixture_file(f"{name}.safetensors")
    with safe_open(str(path), "pt") as f:
        config = json.loads(f.metadata()["config"])
    return config, load_file(str(path))


def _state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len("state.") :]: v for k, v in tensors.items() if k.startswith("state.")}


def _manifest(name: str) -> dict:
    return json.loads(fixture_file(f"{name}.manifest.json").read_text())


def _layout(model: nn.Module) -> list[tuple[str, list[int], str]]:
    return [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()]


# --- goldens ---


def test_golden_wrn_tiny_matches_reference_output() -> None:
    config, t = _tiny_fixture("wrn_tiny")
    model = WideResNet.from_config(config).eval()
    load_into(model, _state(t), strict=True)
    with torch.no_grad():
        out = model(t["input.x"])
    assert out.shape == t["output"].shape == (2, 10)
    torch.testing.assert_close(out, t["output"], atol=1e-5, rtol=0)


def test_golden_dmwrn_tiny_matches_reference_output() -> None:
    config, t = _tiny_fixture("dmwrn_tiny")
    model = DMWideResNet.from_config(config).eval()
    load_into(model, _state(t), strict=True)
    with torch.no_grad():
        out = model(t["input.x"])
    torch.testing.assert_close(out, t["output"], atol=1e-6, rtol=0)


def test_golden_dmwrn_tiny_mask_layer_outputs_match_sidecar() -> None:
    config, t = _tiny_fixture("dmwrn_tiny")
    sidecar = json.loads(fixture_file("dmwrn_tiny.config.json").read_text())
    model = DMWideResNet.from_config(config).eval()
    load_into(model, _state(t))
    expected = {m["name"]: m for m in sidecar["mask_hook_modules"]}
    assert model.mask_layers == list(expected)
    seen: dict[str, torch.Tensor] = {}
    handles = [
        mod.register_forward_hook(lambda _m, _i, o, n=name: seen.__setitem__(n, o))
        for name, mod in zip(model.mask_layers, resolve_layers(model, model.mask_layers), strict=True)
    ]
    with torch.no_grad():
        model(t["input.x"])
    for h in handles:
        h.remove()
    for name, ref in expected.items():
        assert list(seen[name].shape) == ref["output_shape"]
        assert seen[name].mean().item() == pytest.approx(ref["output_mean"], abs=1e-6)
        assert seen[name].std().item() == pytest.approx(ref["output_std"], abs=1e-6)
    # the normalisation is non-persistent and holds the reference values
    for buf in sidecar["non_persistent_buffers"]:
        torch.testing.assert_close(getattr(model, buf["name"]).flatten(), torch.tensor(buf["values"]))
        assert buf["name"] not in model.state_dict()


def test_golden_wrn_tiny_via_registry_and_prefixed_checkpoint(tmp_path: Path) -> None:
    config, t = _tiny_fixture("wrn_tiny")
    path = tmp_path / "Standard.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in _state(t).items()}}, path)
    model = hetpure.load_classifier(
        "wrn28_10", path, depth=config["depth"], widen_factor=config["widen_factor"]
    )
    assert not model.training and model.weights_source == str(path)
    with torch.no_grad():
        torch.testing.assert_close(model(t["input.x"]), t["output"], atol=1e-5, rtol=0)


def test_golden_dmwrn_tiny_via_registry(tmp_path: Path) -> None:
    _, t = _tiny_fixture("dmwrn_tiny")
    path = tmp_path / "weights-best.pt"
    torch.save({"model_state_dict": {"module.0." + k: v for k, v in _state(t).items()}}, path)
    model = hetpure.load_classifier("wrn70_16", path, depth=16, width=1)
    with torch.no_grad():
        torch.testing.assert_close(model(t["input.x"]), t["output"], atol=1e-6, rtol=0)


# --- manifests ---


@pytest.mark.parametrize(("name", "cls"), [("wrn28_10", WideResNet), ("dmwrn70_16", DMWideResNet)])
def test_golden_full_size_layout_matches_manifest(name: str, cls: type) -> None:
    manifest = _manifest(name)
    with torch.device("meta"):
        model = cls.from_config(manifest["config"])
    expected = [(e["key"], e["shape"], e["dtype"]) for e in manifest["state_dict"]]
    assert _layout(model) == expected
    assert sum(p.numel() for p in model.parameters()) == manifest["num_parameters"]
    assert [n for n, _ in model.named_parameters()] == manifest["parameters_order"]
    module_names = {m["name"] for m in manifest["modules"]}
    assert set(model.mask_layers) <= module_names
    assert all(n in dict(model.named_modules()) for n in model.mask_layers)


def test_golden_full_size_presets_match_registry_defaults() -> None:
    with torch.device("meta"):
        wrn = WideResNet()
        dm = DMWideResNet()
    assert wrn.mask_layers == ["block1.layer.3.relu2", "block2.layer.3.relu2", "block3.layer.3.relu2", "relu"]
    assert dm.mask_layers == [
        "layer.0.block.10.relu_1",
        "layer.1.block.10.relu_1",
        "layer.2.block.10.relu_1",
        "relu",
    ]
    manifest = _manifest("dmwrn70_16")
    assert dm.mask_layers == [m["name"] for m in manifest["mask_hook_modules"]]
    assert sum(p.numel() for p in wrn.parameters()) == 36_479_194


# --- ResNet-20 ---


def _cifar_subset(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    root = shared_file("data/cifar10")
    ds = hetpure.load_dataset("imagefolder", root=root, split="test", n=n, seed=0)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    return x, torch.tensor(ds.targets)


def test_resnet20_loads_strictly_and_classifies() -> None:
    path = shared_file(RESNET20)
    model = hetpure.load_classifier("cifar_resnet20", path)
    assert isinstance(model, CifarResNet) and not model.training
    assert model.mask_layers == ["layer1", "layer2", "layer3"]
    assert "mean" not in model.state_dict() and "std" not in model.state_dict()
    assert len(load_file(str(path))) == 97 and len(model.state_dict()) == 97 + 19  # + num_batches_tracked
    x, y = _cifar_subset(96)
    logits = check_logits(model, x, num_classes=10)
    acc = (logits.argmax(1) == y).float().mean().item()
    assert acc >= 0.85, acc
    # without the inner normalisation the same weights do much worse: the mean/std really are applied
    raw = CifarResNet(20, mean=None, std=None).eval()
    load_into(raw, load_file(str(path)))
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(raw((x - mean) / std), logits, atol=1e-4, rtol=1e-4)
        assert (raw(x).argmax(1) == y).float().mean().item() < acc - 0.2


@pytest.mark.slow
def test_resnet20_full_test_accuracy() -> None:
    model = hetpure.load_classifier("cifar_resnet20", shared_file(RESNET20))
    ds = hetpure.load_dataset("imagefolder", root=shared_file("data/cifar10"), split="test")
    loader = torch.utils.data.DataLoader(ds, batch_size=500, num_workers=0)
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    assert total == 10_000
    acc = correct / total
    print(f"ResNet-20 CIFAR-10 test accuracy: {acc:.4f}")
    assert acc >= 0.915, acc


# --- architectures ---


@pytest.mark.parametrize(
    ("name", "kw", "shape", "n_layers"),
    [
        ("cifar_resnet20", {}, (3, 32, 32), 3),
        ("cifar_resnet32", {}, (3, 32, 32), 3),
        ("wrn28_10", {"depth": 16, "widen_factor": 1}, (3, 32, 32), 4),
        ("wrn70_16", {"depth": 16, "width": 1}, (3, 32, 32), 4),
        ("mnist_cnn", {}, (1, 28, 28), 3),
    ],
)
def test_registry_builds_every_classifier(name: str, kw: dict, shape: tuple[int, ...], n_layers: int) -> None:
    torch.manual_seed(0)
    model = hetpure.load_classifier(name, **kw)
    assert not model.training and model.weights_source is None
    assert len(model.mask_layers) == n_layers
    x = torch.rand(2, *shape, requires_grad=True)
    seen: list[torch.Size] = []
    for mod in resolve_layers(model, model.mask_layers):
        mod.register_forward_hook(lambda _m, _i, o: seen.append(o.shape))
    out = model(x)
    assert out.shape == (2, 10)
    assert len(seen) == n_layers and all(s[0] == 2 for s in seen)
    out.sum().backward()  # attacks differentiate through the classifier, normalisation included
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_cifar_resnet_stage_shapes_and_depths() -> None:
    model = CifarResNet(56).eval()
    assert len(model.layer1) == 9
    shapes = []
    for mod in resolve_layers(model, model.mask_layers):
        mod.register_forward_hook(lambda _m, _i, o: shapes.append(tuple(o.shape)))
    with torch.no_grad():
        model(torch.rand(1, 3, 32, 32))
    assert shapes == [(1, 16, 32, 32), (1, 32, 16, 16), (1, 64, 8, 8)]


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("cifar_resnet20", 269_722),
        ("cifar_resnet32", 464_154),
        ("cifar_resnet44", 658_586),
        ("cifar_resnet56", 853_018),
        ("cifar_resnet110", 1_727_962),
    ],
)
def test_cifar_resnet_sizes(name: str, params: int) -> None:
    """0.27M, 0.46M, 0.66M, 0.85M, 1.7M parameters as in He et al. 2016, Table 6."""
    with torch.device("meta"):
        model = hetpure.load_classifier(name)
    depth = int(name.removeprefix("cifar_resnet"))
    assert sum(p.numel() for p in model.parameters()) == params
    assert len(model.layer3) == (depth - 2) // 6
    assert all(n in dict(model.named_modules()) for n in model.mask_layers)


def test_mnist_cnn_stages() -> None:
    model = MnistCNN().eval()
    shapes = []
    for mod in resolve_layers(model, model.mask_layers):
        mod.register_forward_hook(lambda _m, _i, o: shapes.append(tuple(o.shape)))
    with torch.no_grad():
        assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    assert shapes == [(3, 16, 28, 28), (3, 32, 14, 14), (3, 64, 7, 7)]


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: CifarResNet(21), "6n\\+2"),
        (lambda: WideResNet(depth=27), "6n\\+4"),
        (lambda: DMWideResNet(depth=70, width=0), "width"),
        (lambda: DMWideResNet(activation="gelu"), "activation"),
        (lambda: CifarResNet(20, mean=(0.5, 0.5), std=(0.2, 0.2)), "3 channels"),
        (lambda: CifarResNet(20, mean=IMAGENET_MEAN, std=(0.2, 0.0, 0.2)), "positive"),
        (lambda: CifarResNet(20, mean=IMAGENET_MEAN, std=None), "both"),
    ],
)
def test_bad_architecture_options(build, match: str) -> None:
    with pytest.raises(HetpureError, match=match):
        build()


def test_bad_inputs_give_clear_errors() -> None:
    model = CifarResNet(20).eval()
    with pytest.raises(HetpureError, match="unsqueeze"):
        model(torch.rand(3, 32, 32))
    with pytest.raises(HetpureError, match="3-channel"):
        model(torch.rand(1, 1, 32, 32))
    with pytest.raises(HetpureError, match="float"):
        model(torch.randint(0, 255, (1, 3, 32, 32), dtype=torch.uint8))


def test_checkpoint_for_wrong_depth_names_the_keys(tmp_path: Path) -> None:
    path = tmp_path / "r32.safetensors"
    save_file(CifarResNet(32).state_dict(), str(path))
    with pytest.raises(CheckpointError) as err:
        hetpure.load_classifier("cifar_resnet20", path)
    msg = str(err.value)
    assert "unexpected in the checkpoint (72)" in msg and "  layer1.3.conv1.weight\n" in msg
    assert "layer1.3.bn1.{bias, num_batches_tracked, running_mean, running_var, weight}" in msg


# --- registry ---


def test_list_and_unknown_names() -> None:
    names = hetpure.list_classifiers()
    for n in ["cifar_resnet20", "cifar_resnet110", "wrn28_10", "wrn70_16", "resnet50", "mnist_cnn"]:
        assert n in names
    with pytest.raises(HetpureError, match="Did you mean .*cifar_resnet20"):
        hetpure.load_classifier("cifar_resnet2O")
    with pytest.raises(HetpureError, match="no option 'widen'.*widen_factor"):
        hetpure.load_classifier("wrn28_10", widen=2)


def test_register_custom_classifier() -> None:
    from hetpure.models.registry import _REGISTRY, register_classifier

    @register_classifier("test_custom_mlp")
    def _factory(path, trust_pickle: bool = False, hidden: int = 3) -> nn.Module:
        """A test MLP"""
        net = nn.Sequential(nn.Flatten(), nn.Linear(12, hidden), nn.ReLU(), nn.Linear(hidden, 2))
        return as_classifier(net, ["1"], num_classes=2)

    try:
        model = hetpure.load_classifier("test_custom_mlp", hidden=5)
        assert model.net[1].out_features == 5 and model.mask_layers == ["net.1"]
        with pytest.raises(HetpureError, match="already registered"):
            register_classifier("test_custom_mlp")(_factory)
    finally:
        _REGISTRY.pop("test_custom_mlp", None)


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed")
def test_resnet50_without_torchvision_is_a_clear_error() -> None:
    with pytest.raises(HetpureError, match=r"hetpure\[torchvision\]"):
        hetpure.load_classifier("resnet50")


@pytest.mark.skipif(importlib.util.find_spec("robustbench") is not None, reason="robustbench is installed")
def test_robustbench_without_package_is_a_clear_error() -> None:
    with pytest.raises(HetpureError, match="robustbench package.*path="):
        hetpure.load_classifier("wrn28_10", from_robustbench=True, depth=16, widen_factor=1)
    with pytest.raises(HetpureError, match="not both"):
        hetpure.load_classifier("wrn28_10", "x.pt", from_robustbench=True)


# --- user modules ---


class _UserNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
        self.head = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def test_as_classifier_wraps_with_normalisation() -> None:
    torch.manual_seed(0)
    net = _UserNet().eval()
    clf = hetpure.as_classifier(net, ["features.1", "features.2"], mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    assert clf.mask_layers == ["net.features.1", "net.features.2"]
    assert len(resolve_layers(clf, clf.mask_layers)) == 2
    assert "mean" not in clf.state_dict()
    x = torch.rand(4, 3, 8, 8)
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(clf(x), net((x - mean) / std))
        plain = hetpure.as_classifier(net, ["features"])
        torch.testing.assert_close(plain(x), net(x))
    assert check_logits(clf, x).shape == (4, 5)


def test_as_classifier_errors() -> None:
    net = _UserNet()
    with pytest.raises(HetpureError, match="Close names: features.2"):
        hetpure.as_classifier(net, ["features.3"])
    with pytest.raises(HetpureError, match="no mask_layers attribute"):
        hetpure.as_classifier(net)
    with pytest.raises(HetpureError, match="list of module names"):
        hetpure.as_classifier(net, "features")
    with pytest.raises(HetpureError, match="empty"):
        hetpure.as_classifier(net, [])
    with pytest.raises(HetpureError, match="nn.Module"):
        hetpure.as_classifier(lambda x: x, ["a"])  # type: ignore[arg-type]
    # a module that already carries mask_layers needs none
    net.mask_layers = ["features"]
    assert hetpure.as_classifier(net).mask_layers == ["net.features"]


class _Returns(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor):
        return self.fn(x)


@pytest.mark.parametrize(
    ("fn", "match"),
    [
        (lambda x: (torch.zeros(x.shape[0], 10), torch.zeros(1)), "tuple of 2 items"),
        (lambda x: torch.zeros(10), "1-D output"),
        (lambda x: torch.zeros(x.shape[0], 10, 1), "2-D"),
        (lambda x: torch.zeros(x.shape[0] + 1, 10), "rows for a batch of 3"),
        (lambda x: torch.full((x.shape[0], 10), float("nan")), "NaN"),
        (lambda x: torch.zeros(x.shape[0], 10, dtype=torch.long), "floating point"),
        (lambda x: torch.zeros(x.shape[0], 1), "expected at least 2"),
        (lambda x: {"logits": torch.zeros(x.shape[0], 10)}, "dict"),
    ],
)
def test_check_logits_rejects_bad_outputs(fn, match: str) -> None:
    with pytest.raises(HetpureError, match=match):
        check_logits(_Returns(fn), torch.rand(3, 3, 8, 8))


def test_check_logits_class_count() -> None:
    model = _Returns(lambda x: torch.zeros(x.shape[0], 10))
    assert check_logits(model, torch.rand(2, 3, 4, 4)).shape == (2, 10)
    with pytest.raises(HetpureError, match="expected 100 classes"):
        check_logits(model, torch.rand(2, 3, 4, 4), num_classes=100)
    with pytest.raises(HetpureError, match="image batch"):
        check_logits(model, torch.rand(3, 4, 4))

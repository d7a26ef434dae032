"""Safe checkpoint loading: formats, wrappers, pickle refusal, prefix stripping, readable key diffs."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import hetpure
from hetpure.errors import CheckpointError
from hetpure.models.checkpoint import (
    load_ema_shadow_params,
    load_into,
    load_state_dict_file,
    match_state_dict_keys,
)


class Tiny(nn.Module):
    def __init__(self, hidden: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, hidden, 3)
        self.bn = nn.BatchNorm2d(hidden)
        self.fc = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.conv(x)).mean(dim=(2, 3)))


def _randomised(seed: int = 0) -> Tiny:
    torch.manual_seed(seed)
    m = Tiny()
    with torch.no_grad():
        m.bn.running_mean.normal_()
        m.bn.running_var.uniform_(0.5, 2.0)
        m.bn.num_batches_tracked.fill_(7)
    return m


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b) or sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_exported_from_package() -> None:
    assert hetpure.load_state_dict_file is load_state_dict_file


def test_safetensors_round_trip(tmp_path: Path) -> None:
    sd = _randomised().state_dict()
    path = tmp_path / "w.safetensors"
    save_file(sd, str(path))
    _assert_same(load_state_dict_file(path), sd)
    # recognised by content, whatever the suffix
    other = tmp_path / "weights.bin"
    other.write_bytes(path.read_bytes())
    _assert_same(load_state_dict_file(other), sd)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".th", ".bin"])
def test_plain_torch_file_loads_with_weights_only(tmp_path: Path, suffix: str) -> None:
    sd = _randomised().state_dict()
    path = tmp_path / f"w{suffix}"
    torch.save(sd, path)
    _assert_same(load_state_dict_file(path), sd)


@pytest.mark.parametrize("key", ["state_dict", "model_state_dict", "model", "ema"])
def test_wrappers_are_unwrapped(tmp_path: Path, key: str) -> None:
    sd = _randomised().state_dict()
    path = tmp_path / "w.pt"
    torch.save({key: sd, "epoch": 12, "best_acc": 0.9, "optimizer": {"lr": 0.1}}, path)
    _assert_same(load_state_dict_file(path), sd)


def test_ema_preferred_over_raw_model_weights(tmp_path: Path) -> None:
    raw, ema = _randomised(0).state_dict(), _randomised(1).state_dict()
    path = tmp_path / "w.pt"
    torch.save({"model": raw, "ema": ema}, path)
    _assert_same(load_state_dict_file(path), ema)


def test_state_dict_with_a_few_extras_keeps_tensors(tmp_path: Path) -> None:
    sd = _randomised().state_dict()
    path = tmp_path / "w.pt"
    torch.save({**sd, "epoch": 3}, path)
    _assert_same(load_state_dict_file(path), sd)


def test_pickle_needing_full_unpickling_is_refused(tmp_path: Path) -> None:
    sd = _randomised().state_dict()
    path = tmp_path / "w.pth"
    torch.save({"state_dict": sd, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(CheckpointError) as err:
        load_state_dict_file(path)
    msg = str(err.value)
    assert "trust_pickle=True" in msg and "arbitrary code" in msg and str(path) in msg
    # only when explicitly trusted
    _assert_same(load_state_dict_file(path, trust_pickle=True), sd)


def test_whole_module_pickle_needs_trust(tmp_path: Path) -> None:
    m = _randomised()
    path = tmp_path / "model.pt"
    torch.save(m, path)
    with pytest.raises(CheckpointError, match="trust_pickle"):
        load_state_dict_file(path)
    _assert_same(load_state_dict_file(path, trust_pickle=True), m.state_dict())


def test_missing_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_state_dict_file(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="folder"):
        load_state_dict_file(tmp_path)
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        load_state_dict_file(txt)
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(CheckpointError, match="could not read"):
        load_state_dict_file(bad)
    good = tmp_path / "w.safetensors"
    save_file(_randomised().state_dict(), str(good))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="safetensors"):
        load_state_dict_file(cut)
    lst = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], lst)
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_state_dict_file(lst)
    odd = tmp_path / "odd.pt"
    torch.save({"weights": {"a": 1}, "epoch": 1}, odd)
    with pytest.raises(CheckpointError, match="top-level keys"):
        load_state_dict_file(odd)


@pytest.mark.parametrize("prefix", ["module.", "model.", "module.0.", "module.model."])
def test_load_into_strips_prefixes(prefix: str) -> None:
    src = _randomised(0)
    sd = {prefix + k: v for k, v in src.state_dict().items()}
    dst = _randomised(1)
    load_into(dst, sd)
    _assert_same(dst.state_dict(), src.state_dict())


def test_load_into_adds_wrapper_prefix() -> None:
    src = _randomised(0)
    wrapper = nn.Sequential()
    wrapper.add_module("net", _randomised(1))
    load_into(wrapper, src.state_dict())
    _assert_same(wrapper.net.state_dict(), src.state_dict())


def test_prefix_not_stripped_when_keys_already_match() -> None:
    sd = {"model.weight": torch.zeros(1), "model.bias": torch.zeros(1)}
    assert list(match_state_dict_keys(sd, ["model.weight", "model.bias"])) == ["model.weight", "model.bias"]
    assert list(match_state_dict_keys(sd, ["weight", "bias"])) == ["weight", "bias"]


def test_missing_num_batches_tracked_is_filled_like_torch() -> None:
    src = _randomised(0)
    sd = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    dst = _randomised(1)
    load_into(dst, sd)
    for k, v in sd.items():
        assert torch.equal(dst.state_dict()[k], v)


def test_readable_key_diff() -> None:
    sd = dict(_randomised().state_dict())
    sd["fc.weights"] = sd.pop("fc.weight")  # a typo
    sd["extra.bias"] = torch.zeros(3)
    del sd["conv.bias"]
    with pytest.raises(CheckpointError) as err:
        load_into(Tiny(), sd)
    msg = str(err.value)
    assert "missing from the checkpoint (2)" in msg
    assert "unexpected in the checkpoint (2)" in msg
    assert "fc.weight   (closest on the other side: fc.weights)" in msg
    assert "conv.bias" in msg and "extra.bias" in msg
    assert "Traceback" not in msg


def test_shape_mismatch_is_reported_even_when_not_strict() -> None:
    sd = Tiny(hidden=8).state_dict()
    with pytest.raises(CheckpointError) as err:
        load_into(Tiny(hidden=4), sd, strict=False)
    msg = str(err.value)
    assert "shape mismatches" in msg
    assert "conv.weight: checkpoint (8, 3, 3, 3) vs model (4, 3, 3, 3)" in msg


def test_non_strict_allows_missing_keys() -> None:
    src = _randomised(0)
    sd = {k: v for k, v in src.state_dict().items() if k.startswith("conv.")}
    dst = _randomised(1)
    before = dst.fc.weight.clone()
    load_into(dst, sd, strict=False)
    assert torch.equal(dst.conv.weight, src.conv.weight)
    assert torch.equal(dst.fc.weight, before)
    with pytest.raises(CheckpointError, match="missing from the checkpoint"):
        load_into(dst, sd, strict=True)


def test_load_into_rejects_non_tensors() -> None:
    with pytest.raises(CheckpointError, match="not tensors"):
        load_into(Tiny(), {"conv.weight": [1, 2, 3]})  # type: ignore[dict-item]


def _score_sde_checkpoint(tmp_path: Path) -> tuple[Path, Tiny, list[torch.Tensor]]:
    model = _randomised(0)
    shadow = [p.detach() + 1.0 for p in model.parameters()]
    path = tmp_path / "checkpoint_8.pth"
    ema = {"decay": 0.9999, "num_updates": 10, "shadow_params": shadow}
    torch.save({"model": model.state_dict(), "ema": ema, "step": 10}, path)
    return path, model, shadow


def test_score_sde_checkpoint_warns_and_ema_helper_applies_shadow(tmp_path: Path) -> None:
    path, model, shadow = _score_sde_checkpoint(tmp_path)
    with pytest.warns(UserWarning, match="shadow"):
        sd = load_state_dict_file(path)
    _assert_same(sd, model.state_dict())
    dst = _randomised(1)
    load_into(dst, sd)
    load_ema_shadow_params(dst, path)
    for p, s in zip(dst.parameters(), shadow, strict=True):
        assert torch.equal(p, s)


def test_ema_helper_rejects_wrong_architecture(tmp_path: Path) -> None:
    path, _, _ = _score_sde_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="parameters"):
        load_ema_shadow_params(nn.Linear(2, 2), path)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_ema_shadow_params(Tiny(hidden=8), path)
    plain = tmp_path / "plain.pt"
    torch.save(Tiny().state_dict(), plain)
    with pytest.raises(CheckpointError, match="shadow_params"):
        load_ema_shadow_params(Tiny(), plain)


def test_no_warning_for_plain_files(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save({"model": Tiny().state_dict()}, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_state_dict_file(path)

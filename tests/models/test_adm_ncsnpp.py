"""ADM (guided-diffusion) and NCSN++ (score_sde) re-implementations and ``load_eps_model``.

Golden numbers come from ``../shared/fixtures`` (see its README): tiny reference models with perturbed
weights and their float32 outputs, and the key/shape manifests of the full-size networks.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from conftest import fixture_file
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from hetpure import AdmEps, CheckpointError, ConfigError, HetpureError, NcsnppEps, load_eps_model
from hetpure.models import AdmUNet, build_eps_model
from hetpure.models.adm import AdmAttention, AdmConfig
from hetpure.models.ncsnpp import NcsnppConfig
from hetpure.schedule import NoiseSchedule

TOL = 1e-5


def _tiny(name: str) -> tuple[dict, dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """(config, state dict without the ``state.`` prefix, input x, input t, reference output)."""
    path = fixture_file(f"{name}_tiny.safetensors")
    with safe_open(str(path), "pt") as f:
        config = json.loads(f.metadata()["config"])
    tensors = load_file(str(path))
    state = {k.removeprefix("state."): v for k, v in tensors.items() if k.startswith("state.")}
    return config, state, tensors["input.x"], tensors["input.t"], tensors["output"]


def _manifest(kind: str) -> dict:
    name = {"adm": "adm256_uncond", "ncsnpp": "ncsnpp_cifar10"}[kind]
    return json.loads(fixture_file(f"{name}.manifest.json").read_text())


# --------------------------------------------------------------------------- golden outputs


def test_adm_tiny_golden_through_load_eps_model(tmp_path: Path) -> None:
    config, state, x, t, ref = _tiny("adm")
    ckpt = tmp_path / "adm_tiny.pt"
    torch.save(state, ckpt)  # a plain state dict, like 256x256_diffusion_uncond.pt
    eps_model = load_eps_model("adm", ckpt, config=config)
    assert isinstance(eps_model, AdmEps)
    assert eps_model.loaded_weights == "state_dict"
    assert not eps_model.training and not any(p.requires_grad for p in eps_model.parameters())
    with torch.no_grad():
        full = eps_model.net(x, t)
        eps = eps_model(x, t)
    assert full.shape == (2, 6, 16, 16)
    assert (full - ref).abs().max().item() < TOL
    assert eps.shape == (2, 3, 16, 16) and eps.dtype == torch.float32
    assert torch.equal(eps, full[:, :3])


def test_ncsnpp_tiny_golden_through_load_eps_model(tmp_path: Path) -> None:
    config, state, x, t, ref = _tiny("ncsnpp")
    ckpt = tmp_path / "ncsnpp_tiny.safetensors"
    save_file(state, str(ckpt))
    eps_model = load_eps_model("ncsnpp", ckpt, config=config)
    assert isinstance(eps_model, NcsnppEps)
    assert eps_model.net.sigmas.dtype == torch.float64
    with torch.no_grad():
        eps = eps_model(x, t)  # N = 1000: the label fed to the network is t itself (non-integer here)
    assert (eps - ref).abs().max().item() < TOL


def test_golden_config_can_be_a_sidecar_file(tmp_path: Path) -> None:
    _, state, x, t, ref = _tiny("ncsnpp")
    ckpt = tmp_path / "w.safetensors"
    save_file(state, str(ckpt))
    sidecar = fixture_file("ncsnpp_tiny.config.json")
    eps_model = load_eps_model("ncsnpp", ckpt, config=sidecar)
    with torch.no_grad():
        assert (eps_model(x, t) - ref).abs().max().item() < TOL


# --------------------------------------------------------------------------- full-size manifests


@pytest.mark.parametrize("kind", ["adm", "ncsnpp"])
def test_golden_full_size_state_dict_matches_manifest(kind: str) -> None:
    manifest = _manifest(kind)
    eps_model = build_eps_model(kind, manifest["config"], device="meta")
    net = eps_model.net
    ours = [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in net.state_dict().items()]
    theirs = [(e["key"], e["shape"], e["dtype"]) for e in manifest["state_dict"]]
    assert ours == theirs  # same keys, same order, same shapes and dtypes
    assert [n for n, _ in net.named_parameters()] == manifest["parameters_order"]  # EMA list order
    assert sum(p.numel() for p in net.parameters()) == manifest["num_parameters"]
    # Defaults (config=None) are the same full-size networks.
    default = build_eps_model(kind, device="meta").net
    assert list(default.state_dict()) == [e["key"] for e in manifest["state_dict"]]


@pytest.mark.parametrize("kind", ["adm", "ncsnpp"])
def test_golden_full_size_module_attributes_match_manifest(kind: str) -> None:
    """GroupNorm groups/eps, attention heads, conv geometry, resampling flags, as in the module table."""
    manifest = _manifest(kind)
    mods = dict(build_eps_model(kind, manifest["config"], device="meta").net.named_modules())
    compared = 0
    for entry in manifest["modules"]:
        mine = mods.get(entry["name"])
        if mine is None:
            continue
        for attr, value in entry["attrs"].items():
            if not hasattr(mine, attr) or attr in ("training",):
                continue
            got = getattr(mine, attr)
            got = list(got) if isinstance(got, tuple) else got
            assert got == value, f"{entry['name']}.{attr}: {got!r} != {value!r}"
            compared += 1
    assert compared > 1000


# --------------------------------------------------------------------------- score_sde checkpoints (EMA)


def _score_sde_checkpoint(state: dict[str, torch.Tensor], config: dict, extra: object = None) -> dict:
    """A checkpoint dict laid out like score_sde's: DataParallel ``model`` weights, EMA shadow list."""
    net = build_eps_model("ncsnpp", config).net
    raw = {"module." + k: (v + 0.5 if k != "sigmas" else v) for k, v in state.items()}
    shadow = [state[name].clone() for name, _ in net.named_parameters()]
    ckpt = {
        "optimizer": {"state": {}, "param_groups": [{"lr": 2e-4, "params": list(range(len(shadow)))}]},
        "model": raw,
        "ema": {"decay": 0.9999, "num_updates": 123, "shadow_params": shadow},
        "step": 950001,
    }
    if extra is not None:
        ckpt["config"] = extra
    return ckpt


def test_golden_score_sde_checkpoint_loads_ema_weights(tmp_path: Path) -> None:
    config, state, x, t, ref = _tiny("ncsnpp")
    path = tmp_path / "checkpoint_8.pth"
    torch.save(_score_sde_checkpoint(state, config), path)
    ema_model = load_eps_model("ncsnpp", path, config=config)
    assert ema_model.loaded_weights == "ema"
    assert ema_model.weights_source == str(path)
    with torch.no_grad():
        assert (ema_model(x, t) - ref).abs().max().item() < TOL
    raw_model = load_eps_model("ncsnpp", path, config=config, use_ema=False)
    assert raw_model.loaded_weights == "model"
    key = "all_modules.3.Conv_0.weight"
    assert torch.equal(raw_model.net.state_dict()[key], state[key] + 0.5)


def test_golden_pickled_objects_need_trust_pickle(tmp_path: Path) -> None:
    config, state, x, t, ref = _tiny("ncsnpp")
    path = tmp_path / "checkpoint_with_config.pth"
    torch.save(_score_sde_checkpoint(state, config, extra=argparse.Namespace(lr=2e-4)), path)
    with pytest.raises(CheckpointError, match="trust_pickle=True"):
        load_eps_model("ncsnpp", path, config=config)
    trusted = load_eps_model("ncsnpp", path, config=config, trust_pickle=True)
    assert trusted.loaded_weights == "ema"
    with torch.no_grad():
        assert (trusted(x, t) - ref).abs().max().item() < TOL


def test_golden_ema_list_of_wrong_length_is_refused(tmp_path: Path) -> None:
    config, state, *_ = _tiny("ncsnpp")
    ckpt = _score_sde_checkpoint(state, config)
    ckpt["ema"]["shadow_params"] = ckpt["ema"]["shadow_params"][:-1]
    path = tmp_path / "short_ema.pth"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="EMA shadow parameters"):
        load_eps_model("ncsnpp", path, config=config)


# --------------------------------------------------------------------------- strict loading errors


def test_golden_wrong_key_fails_strict_load_with_readable_message(tmp_path: Path) -> None:
    config, state, *_ = _tiny("adm")
    state["out.3.weight"] = state.pop("out.2.weight")
    path = tmp_path / "renamed.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_eps_model("adm", path, config=config)
    message = str(info.value)
    assert "out.2.weight" in message and "out.3.weight" in message
    assert "missing" in message and "unexpected" in message


def test_golden_wrong_config_fails_with_shape_report(tmp_path: Path) -> None:
    _, state, *_ = _tiny("ncsnpp")
    path = tmp_path / "tiny.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_eps_model("ncsnpp", path, config={"model": {"nf": 16, "num_res_blocks": 2}})


def test_missing_file_and_bad_kind() -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_eps_model("adm", "/nonexistent/256x256_diffusion_uncond.pt")
    with pytest.raises(HetpureError, match="unknown ε-model kind"):
        load_eps_model("ddpm", "x.pt")
    with pytest.raises(ConfigError, match="config.json"):
        load_eps_model("diffusers", "/nonexistent", config={"nf": 8})


# --------------------------------------------------------------------------- adapter conventions


def _tiny_adm(**flags: object) -> AdmUNet:
    base = {
        "image_size": 16,
        "num_channels": 32,
        "num_res_blocks": 1,
        "channel_mult": "1,1",
        "attention_resolutions": "8",
        "num_head_channels": 8,
    }
    torch.manual_seed(0)
    return AdmUNet(AdmConfig.from_flags({**base, **flags})).eval()


def test_learned_sigma_output_is_sliced_to_eps() -> None:
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10.0, 900.0])
    net = _tiny_adm(learn_sigma=True)
    eps_model = AdmEps(net)
    with torch.no_grad():
        full, eps = net(x, t), eps_model(x, t)
    assert full.shape[1] == 6 and eps.shape == x.shape
    assert torch.equal(eps, full[:, :3])
    plain = _tiny_adm(learn_sigma=False)
    with torch.no_grad():
        assert torch.equal(AdmEps(plain)(x, t), plain(x, t))


def test_schedules_are_the_linear_ddpm_betas() -> None:
    linear = NoiseSchedule.linear().betas_tensor()
    adm = AdmConfig.from_flags().schedule().betas_tensor()
    vp = NcsnppConfig.from_dict().schedule().betas_tensor()  # VP SDE, β 0.1 … 20, N = 1000
    assert torch.allclose(adm, linear, rtol=0, atol=1e-15)
    assert torch.allclose(vp, linear, rtol=0, atol=1e-15)


def test_new_attention_order_is_a_permutation_of_legacy() -> None:
    torch.manual_seed(0)
    c, heads = 32, 4
    legacy, new = AdmAttention(c, heads), AdmAttention(c, heads, new_order=True)
    new.load_state_dict(legacy.state_dict())
    w = c // heads
    # legacy rows: [head0: q k v][head1: q k v]...; new rows: [q: heads][k: heads][v: heads]
    order = [h * 3 * w + part * w + i for part in range(3) for h in range(heads) for i in range(w)]
    with torch.no_grad():
        new.qkv.weight.copy_(legacy.qkv.weight[order])
        new.qkv.bias.copy_(legacy.qkv.bias[order])
        new.proj_out.weight.normal_()
        legacy.proj_out.weight.copy_(new.proj_out.weight)
        x = torch.randn(2, c, 4, 4)
        assert torch.allclose(legacy(x), new(x), atol=1e-6)


def test_golden_reduced_precision_returns_float32(tmp_path: Path) -> None:
    config, state, x, t, ref = _tiny("adm")
    path = tmp_path / "adm.safetensors"
    save_file(state, str(path))
    eps_model = load_eps_model("adm", path, config=config, dtype="bf16")
    assert next(eps_model.net.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        eps = eps_model(x, t)
    assert eps.dtype == torch.float32
    assert (eps - ref[:, :3]).abs().max().item() < 0.05  # bfloat16 has ~3 significant digits


def test_gradients_flow_to_the_input() -> None:
    eps_model = AdmEps(_tiny_adm())
    x = torch.randn(1, 3, 16, 16, requires_grad=True)
    eps_model(x, torch.tensor([500.0])).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_input_checks() -> None:
    adm = AdmEps(_tiny_adm())
    with pytest.raises(HetpureError, match="divisible by 2"):
        adm(torch.randn(1, 3, 15, 15), 10.0)
    ncsn = build_eps_model("ncsnpp", {"model": {"nf": 8, "num_res_blocks": 1}})
    with pytest.raises(HetpureError, match=r"\[0, 1000\)"):
        ncsn(torch.randn(1, 3, 32, 32), 1000.0)
    with pytest.raises(HetpureError, match="divisible by 8"):
        ncsn(torch.randn(1, 3, 20, 20), 10.0)


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown ADM config keys"):
        AdmConfig.from_flags({"num_chanels": 128})
    with pytest.raises(ConfigError, match="class_cond"):
        AdmConfig.from_flags({"class_cond": True})
    with pytest.raises(ConfigError, match="multiples of 32"):
        AdmConfig.from_flags({"num_channels": 48})
    with pytest.raises(ConfigError, match="fir"):
        NcsnppConfig.from_dict({"model": {"fir": True}})
    with pytest.raises(ConfigError, match="unknown NCSN\\+\\+ model keys"):
        NcsnppConfig.from_dict({"model": {"n_f": 8}})
    with pytest.raises(ConfigError, match="score"):
        build_eps_model("ncsnpp", {"model": {"nf": 8, "num_res_blocks": 1, "scale_by_sigma": True}})

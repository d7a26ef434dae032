"""``load_eps_model``: one entry point for the diffusion networks hetpure can purify with.

* ``"diffusers"``: a diffusers ``UNet2DModel`` folder (:meth:`DiffusersEps.from_pretrained`);
* ``"adm"``: guided-diffusion ADM checkpoints such as OpenAI's ``256x256_diffusion_uncond.pt``;
* ``"ncsnpp"``: score_sde NCSN++ VP checkpoints such as DiffPure's CIFAR-10 ``checkpoint_8.pth``.

Files are read by :mod:`hetpure.models.checkpoint` (safetensors, or ``torch.load(weights_only=True)``;
full unpickling only with ``trust_pickle=True``) and loaded with ``strict=True`` semantics.
See ``docs/checkpoints.md``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError, HetpureError, describe_missing
from .adm import AdmConfig, AdmEps, AdmUNet
from .base import EpsModel
from .checkpoint import check_trust_pickle, load_ema_shadow_params, load_into, read_checkpoint
from .diffusers_eps import DiffusersEps
from .ncsnpp import NCSNpp, NcsnppConfig, NcsnppEps

__all__ = ["EPS_MODEL_KINDS", "NETWORK_KINDS", "NetworkKind", "build_eps_model", "load_eps_model", "resolve_dtype"]

logger = logging.getLogger("hetpure")

@dataclass(frozen=True)
class NetworkKind:
    """How to build and wrap one architecture family from a checkpoint file and its config."""

    network: type[nn.Module]
    config_from: Callable[[dict[str, Any]], Any]
    wrapper: Callable[[Any], EpsModel]


#: Checkpoint-file ε-model kinds as data: kind → network class, config reader, ε-model wrapper.
NETWORK_KINDS: dict[str, NetworkKind] = {
    "adm": NetworkKind(AdmUNet, AdmConfig.from_flags, AdmEps),
    "ncsnpp": NetworkKind(NCSNpp, NcsnppConfig.from_dict, NcsnppEps),
}
#: The ``kind`` values :func:`load_eps_model` accepts: a diffusers folder, or one of :data:`NETWORK_KINDS`.
EPS_MODEL_KINDS: tuple[str, ...] = ("diffusers", *NETWORK_KINDS)

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
    "double": torch.float64,
}


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """``torch.float16`` / ``"fp16"`` / ``"bfloat16"`` … → a floating ``torch.dtype`` (``None`` stays)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        if isinstance(dtype, torch.dtype) and not dtype.is_floating_point:
            raise HetpureError(f"dtype must be a floating-point type, got {dtype}")
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of {', '.join(sorted(_DTYPES))}")
    return _DTYPES[key]


def _read_config(config: Mapping[str, Any] | str | Path | None) -> dict[str, Any] | None:
    """A config given as a dict, or as a JSON/YAML file (a manifest/sidecar's ``config`` entry is used)."""
    if config is None:
        return None
    if isinstance(config, Mapping):
        return dict(config)
    if not isinstance(config, (str, Path)):
        raise ConfigError(f"config must be a dict or a path to a JSON/YAML file, got {type(config).__name__}")
    p = Path(config).expanduser()
    if not p.is_file():
        why = "is a folder" if p.is_dir() else describe_missing(p)
        raise ConfigError(f"config file {p} {why}; pass a dict or the path of a JSON/YAML config")
    text = p.read_text()
    if p.suffix.lower() in (".yml", ".yaml"):
        from ..yamlio import load_yaml

        data = load_yaml(text, str(p))  # a key written twice is refused, not silently dropped
    else:
        try:
            data = json.loads(text, object_pairs_hook=lambda pairs: _unique_keys(pairs, p))
        except ConfigError:
            raise
        except ValueError as exc:
            raise ConfigError(f"could not parse config file {p}: {exc}") from exc
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {p} must hold a mapping, got {type(data).__name__}")
    if "architecture" in data and isinstance(data.get("config"), Mapping):
        data = data["config"]  # a hetpure fixture manifest or sidecar
    return dict(data)


def _unique_keys(pairs: list[tuple[str, Any]], source: Path) -> dict[str, Any]:
    """A JSON object's members as a dict; a key written twice is a :class:`ConfigError` (json keeps the last)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ConfigError(f"config file {source}: key {key!r} is written twice in one object; json would keep "
                              "only the last one and silently drop the other. Fix: write it once")
        out[key] = value
    return out


def _build_net(kind: str, config: Mapping[str, Any] | str | Path | None) -> tuple[type[nn.Module], Any]:
    spec = NETWORK_KINDS[kind]
    return spec.network, spec.config_from(_read_config(config))


def _wrap(kind: str, net: nn.Module) -> EpsModel:
    return NETWORK_KINDS[kind].wrapper(net).eval().requires_grad_(False)


def _check_kind(kind: str) -> str:
    k = str(kind).lower()
    if k not in EPS_MODEL_KINDS:
        raise ConfigError(f"unknown ε-model kind {kind!r}; use one of {', '.join(EPS_MODEL_KINDS)}")
    return k


def _cast(net: nn.Module, dtype: torch.dtype | None) -> None:
    """Cast parameters and buffers to ``dtype``; NCSN++'s float64 ``sigmas`` constant stays float64."""
    if dtype is None:
        return
    net.to(dtype)
    if isinstance(net, NCSNpp) and net.sigmas.dtype != torch.float64:
        net.sigmas = net.sigmas.to(torch.float64)


def build_eps_model(
    kind: str,
    config: Mapping[str, Any] | str | Path | None = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
) -> EpsModel:
    """An ``"adm"`` or ``"ncsnpp"`` ε-model with randomly initialised weights (tests, benchmarks).

    ``device="meta"`` builds it without allocating memory (shapes and keys only).
    """
    k = _check_kind(kind)
    if k == "diffusers":
        raise HetpureError(
            "build_eps_model builds 'adm' or 'ncsnpp' networks; use load_eps_model for diffusers"
        )
    cls, cfg = _build_net(k, config)
    with torch.device(device or "cpu"):
        net = cls(cfg)
    _cast(net, resolve_dtype(dtype))
    eps = _wrap(k, net)
    return eps


class _CastDiffusersEps(DiffusersEps):
    """A :class:`DiffusersEps` whose UNet runs in a reduced precision: inputs cast in, float32 out."""

    def predict_eps(self, x_t: Tensor, t: Tensor) -> Tensor:
        dtype = next(self.unet.parameters()).dtype
        out = super().predict_eps(x_t.to(dtype), t)
        return out.to(torch.promote_types(x_t.dtype, torch.float32))


def _load_diffusers(path: str | Path, config: Any, dtype: torch.dtype | None, device: Any) -> EpsModel:
    if config is not None:
        raise ConfigError(
            "config is not used for kind='diffusers': the model folder's config.json defines the network"
        )
    eps = DiffusersEps.from_pretrained(path)
    if dtype is not None and dtype != torch.float32:
        eps = _CastDiffusersEps(eps.unet.to(dtype), eps.schedule)
    eps.loaded_weights = "diffusers"  # type: ignore[attr-defined]
    eps.weights_source = str(path)  # type: ignore[attr-defined]
    return eps.to(device) if device is not None else eps


def load_eps_model(
    kind: str,
    path: str | Path,
    config: Mapping[str, Any] | str | Path | None = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    *,
    trust_pickle: bool = False,
    use_ema: bool = True,
) -> EpsModel:
    """Load a diffusion network as an :class:`EpsModel`, in eval mode with frozen parameters.

    Args:
        kind: ``"diffusers"`` (a UNet2DModel folder or hub id), ``"adm"`` (guided-diffusion, e.g.
            ``256x256_diffusion_uncond.pt``) or ``"ncsnpp"`` (score_sde VP, e.g. DiffPure's
            ``checkpoint_8.pth``).
        path: the original checkpoint file (a plain state dict, or a score_sde checkpoint dict with
            ``model``/``ema``/``optimizer``/``step``), a ``.safetensors`` state dict, or for diffusers a
            folder.
        config: the architecture. ``None`` is the full-size setting of the paper (ADM 256×256
            unconditional; NCSN++ DiffPure CIFAR-10 ``cifar10.yml``). Otherwise a dict (ADM:
            guided-diffusion flags merged over those defaults; NCSN++: the nested ``cifar10.yml`` layout,
            merged section by section) or a JSON/YAML file with that content (the ``config`` entry of a
            fixture manifest/sidecar is picked automatically). Not allowed for diffusers.
        dtype: run the network in this precision (``torch.float16``, ``"bf16"``, …; default float32).
            Inputs are cast to it and ε is returned in float32.
        device: where to put the network (default CPU). Weights are copied straight into a network
            allocated there, so a CUDA model never needs a second CPU copy of itself.
        trust_pickle: allow full unpickling of a torch file that ``weights_only=True`` cannot read. This
            can execute code chosen by the file's author: only for files from a source you trust. Only the
            boolean ``True`` allows it; another value that is not ``False`` is an ``InputTypeError``.
        use_ema: for score_sde checkpoints, load the EMA ``shadow_params`` (what DiffPure uses) rather
            than the raw ``model`` weights.

    Returns:
        The ε-model; ``loaded_weights`` says which weights were loaded (``"ema"``, ``"model"``,
        ``"state_dict"``, ``"diffusers"``) and ``weights_source`` the path.

    Raises:
        CheckpointError: missing/unreadable/unsafe file, or keys and shapes that do not fit the network
            (the message lists them).
        ConfigError: an invalid or unsupported architecture setting.

    Example:
        >>> import hetpure
        >>> from hetpure.demo import assets_dir
        >>> eps = hetpure.load_eps_model("diffusers", assets_dir() / "ddpm")  # the MNIST DDPM in the package
        >>> eps.loaded_weights, eps.image_size
        ('diffusers', 28)
        >>> eps = hetpure.load_eps_model("ncsnpp", "checkpoint_8.pth")  # doctest: +SKIP
    """
    check_trust_pickle(trust_pickle)  # before anything: only the boolean True may allow unpickling
    k = _check_kind(kind)
    torch_dtype = resolve_dtype(dtype)
    if k == "diffusers":
        return _load_diffusers(path, config, torch_dtype, device)
    cls, cfg = _build_net(k, config)
    target = torch.device(device) if device is not None else torch.device("cpu")
    if target.type == "meta":
        raise HetpureError(
            "load_eps_model needs a real device; use build_eps_model(device='meta') for shapes"
        )
    with torch.device("meta"):
        net = cls(cfg)
    # Allocate without initialising: every tensor is overwritten by the strict load below.
    net = net.to_empty(device=target)
    _cast(net, torch_dtype or torch.float32)

    state, has_ema = read_checkpoint(path, trust_pickle=trust_pickle)  # score_sde: EMA weights stored apart
    load_into(net, state, strict=True)
    del state
    if has_ema and use_ema:
        load_ema_shadow_params(net, path, trust_pickle=trust_pickle)
        loaded = "ema"
    elif has_ema:
        loaded = "model"
    else:
        loaded = "state_dict"
    logger.info("loaded %s weights (%s) from %s", k, loaded, path)
    eps = _wrap(k, net)
    eps.loaded_weights = loaded
    eps.weights_source = str(path)
    return eps

"""ε-model adapter for diffusers ``UNet2DModel`` networks (ε-prediction DDPMs)."""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..errors import CheckpointError, DownloadError, HetpureError, MissingDependencyError, describe_missing
from ..schedule import NoiseSchedule, cosine_betas
from .base import EpsModel


def schedule_from_scheduler_config(config: dict[str, Any]) -> NoiseSchedule:
    """Build the β schedule described by a diffusers scheduler config (linear, scaled_linear, cosine)."""
    import torch

    if config.get("prediction_type", "epsilon") != "epsilon":
        raise HetpureError(
            f"the scheduler's prediction_type is {config['prediction_type']!r}; hetpure needs an "
            "ε-prediction model (prediction_type 'epsilon')"
        )
    n = int(config.get("num_train_timesteps", 1000))
    kind = config.get("beta_schedule", "linear")
    start, end = float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 2e-2))
    if config.get("trained_betas") is not None:
        return NoiseSchedule.from_betas(list(config["trained_betas"]))
    if kind == "linear":
        return NoiseSchedule.linear(n, start, end)
    if kind == "scaled_linear":
        return NoiseSchedule.from_betas(torch.linspace(start**0.5, end**0.5, n, dtype=torch.float64) ** 2)
    if kind == "squaredcos_cap_v2":
        return NoiseSchedule.from_betas(cosine_betas(n))
    raise HetpureError(f"unsupported beta_schedule {kind!r}; use linear, scaled_linear or squaredcos_cap_v2")


def _low_memory_kwargs() -> dict[str, Any]:
    """Without the optional ``accelerate`` package, ask diffusers for the plain loader (no warning)."""
    import importlib.util

    return {} if importlib.util.find_spec("accelerate") else {"low_cpu_mem_usage": False}


class DiffusersEps(EpsModel):
    """Wrap a diffusers ``UNet2DModel``: ``eps(x_t, t) = unet(x_t, t).sample``.

    A network with twice the input channels (learned variance) returns its first half as ε.

    Example:
        >>> import torch, hetpure
        >>> from hetpure.demo import assets_dir
        >>> eps = hetpure.DiffusersEps.from_pretrained(assets_dir() / "ddpm")  # the MNIST DDPM in the package
        >>> eps.in_channels, eps.image_size, eps.num_timesteps
        (1, 28, 1000)
        >>> tuple(eps(torch.randn(2, 1, 28, 28), torch.tensor([10.0, 300.0])).shape)
        (2, 1, 28, 28)
    """

    def __init__(self, unet: nn.Module, schedule: NoiseSchedule | None = None) -> None:
        config = getattr(unet, "config", None)
        if config is None or not hasattr(config, "in_channels"):
            raise HetpureError("DiffusersEps needs a diffusers UNet2DModel (a module with a .config)")
        super().__init__(schedule or NoiseSchedule.linear(), config.in_channels, getattr(config, "sample_size", None))
        self.unet = unet
        self.out_channels = int(getattr(config, "out_channels", config.in_channels))

    def predict_eps(self, x_t: Tensor, t: Tensor) -> Tensor:
        out = self.unet(x_t, t).sample
        return out[:, : self.in_channels] if self.out_channels != self.in_channels else out

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, subfolder: str | None = None) -> DiffusersEps:
        """Load a UNet2DModel and its scheduler config from a local folder (or a hub id when online).

        Looks for ``config.json`` + weights at the folder's root or in ``unet/``, and for
        ``scheduler_config.json`` at the root or in ``scheduler/`` (hub pipeline layout).
        """
        try:
            from diffusers import UNet2DModel
        except ImportError as exc:  # pragma: no cover - diffusers is a dependency
            raise MissingDependencyError("the diffusers package is needed: pip install diffusers") from exc

        path = Path(name_or_path).expanduser()
        if path.is_dir():
            if subfolder is None and not (path / "config.json").exists() and (path / "unet" / "config.json").exists():
                subfolder = "unet"
            _check_folder(path, path / (subfolder or ""))
            try:
                unet = UNet2DModel.from_pretrained(str(path), subfolder=subfolder, use_safetensors=None,
                                                   **_low_memory_kwargs())
            except (OSError, ValueError, RuntimeError, TypeError, KeyError) as exc:  # diffusers' many types
                raise CheckpointError(_damaged(path / (subfolder or ""), exc)) from exc
            sched_cfg, where = None, path
            for candidate in (path / "scheduler_config.json", path / "scheduler" / "scheduler_config.json"):
                if candidate.exists():
                    sched_cfg, where = _read_json(candidate, "scheduler config"), candidate
                    break
        elif path.exists() or path.is_symlink():
            raise CheckpointError(f"diffusion model path {name_or_path} is not a folder; point at a diffusers "
                                  "UNet2DModel folder (config.json + diffusion_pytorch_model.safetensors)")
        elif str(name_or_path).startswith((".", "/", "~")) or Path(name_or_path).suffix:
            raise CheckpointError(f"diffusion model folder {name_or_path} {describe_missing(path)}; check the path")
        else:
            unet, sched_cfg = _from_hub(str(name_or_path), subfolder)
            where = Path(str(name_or_path))
        if not sched_cfg:
            warnings.warn(
                f"{where} has no scheduler_config.json: assuming DDPM's linear β schedule (β from 1e-4 to 0.02 "
                "over 1000 steps). A model trained with another schedule (e.g. cosine, squaredcos_cap_v2) would "
                "be purified with the wrong noise levels: add its scheduler_config.json to the folder",
                UserWarning, stacklevel=2,
            )
            return cls(unet.eval(), NoiseSchedule.linear())
        try:
            schedule = schedule_from_scheduler_config(sched_cfg)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"the scheduler config of {where} is not usable ({exc}); fix: restore "
                                  "scheduler_config.json from the model's source") from exc
        return cls(unet.eval(), schedule)


#: Weights files diffusers looks for in a UNet folder (plain or sharded, safetensors or torch).
_WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                 "diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.bin.index.json")


def _read_json(file: Path, what: str) -> dict[str, Any]:
    """A JSON object from ``file``; a :class:`CheckpointError` naming the file and the fix otherwise."""
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{file} (the {what}) is not valid JSON: {exc}; fix: restore it from the model's "
                              "source, or re-save the model with save_pretrained") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{file} (the {what}) must hold a JSON object, got {type(data).__name__}; fix: "
                              "restore it from the model's source")
    return data


def _check_folder(root: Path, unet_dir: Path) -> None:
    """Refuse a damaged diffusers folder before diffusers reads it: no or invalid config.json, no weights, a
    safetensors file that is not one (random bytes) or is cut short (its header promises more bytes)."""
    config = unet_dir / "config.json"
    if not config.exists():
        raise CheckpointError(
            f"{root} has no config.json: point at a diffusers UNet2DModel folder "
            "(config.json + diffusion_pytorch_model.safetensors)"
        )
    _read_json(config, "UNet config")
    found = [unet_dir / name for name in _WEIGHT_NAMES if (unet_dir / name).exists()]
    if not found:
        present = sorted(p.name for p in unet_dir.iterdir() if p.is_file())
        raise CheckpointError(
            f"{unet_dir} has no weights file: expected {_WEIGHT_NAMES[0]} (or {_WEIGHT_NAMES[1]}) next to "
            f"config.json; found {', '.join(present) or 'nothing else'}. Fix: copy the model's weights file into "
            "the folder (or re-save it with save_pretrained)"
        )
    weights = unet_dir / _WEIGHT_NAMES[0]
    if weights.exists():
        problem = _safetensors_problem(weights)
        if problem:
            raise CheckpointError(f"{weights} {problem}; fix: copy the weights file again from the model's source "
                                  "(or re-save the model with save_pretrained)")


def _safetensors_problem(file: Path) -> str | None:
    """Why ``file`` is not a whole safetensors file (None when its header and size agree)."""
    size = file.stat().st_size
    try:
        with file.open("rb") as fh:
            head = fh.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if not 2 <= n <= min(size - 8, 100_000_000):
                return "is not a safetensors file (its first bytes are not a safetensors header)"
            header = json.loads(fh.read(n))
    except (OSError, ValueError, UnicodeDecodeError):
        return "is not a safetensors file (its header is not valid JSON)"
    if not isinstance(header, dict):
        return "is not a safetensors file (its header is not a JSON object)"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
            and isinstance(v.get("data_offsets"), list) and len(v["data_offsets"]) == 2]
    need = 8 + n + max(ends, default=0)
    if size < need:
        return f"is truncated: its header describes {need} bytes but the file has {size}"
    return None


def _damaged(folder: Path, exc: BaseException) -> str:
    """The message for a folder diffusers could not load (the checks above pass, e.g. weights of another config)."""
    text = " ".join(str(exc).split())
    if "size mismatch" in text or "Error(s) in loading state_dict" in text:
        return (f"the weights in {folder} do not fit its config.json ({text[:300]}); fix: use the config.json that "
                "came with these weights")
    return (f"could not load the diffusers model in {folder}: {type(exc).__name__}: {text[:300]}; fix: check that "
            "config.json and the weights file belong together and are complete (re-save with save_pretrained)")


def _from_hub(repo_id: str, subfolder: str | None) -> tuple[nn.Module, dict[str, Any] | None]:
    from diffusers import UNet2DModel

    try:
        unet = UNet2DModel.from_pretrained(repo_id, subfolder=subfolder, **_low_memory_kwargs())
    except Exception as exc:  # network errors come in many types
        raise DownloadError(
            f"could not load {repo_id!r} from the Hugging Face hub ({type(exc).__name__}). Offline? "
            "Download the model folder elsewhere and pass its local path instead."
        ) from exc
    try:
        from huggingface_hub import hf_hub_download

        sched_file = hf_hub_download(repo_id, "scheduler_config.json")
        return unet, json.loads(Path(sched_file).read_text())
    except Exception:
        return unet, None

"""ε-model adapter for diffusers ``UNet2DModel`` networks (ε-prediction DDPMs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..errors import CheckpointError, DownloadError, HetpureError, MissingDependencyError
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
            if not (path / (subfolder or "") / "config.json").exists():
                raise CheckpointError(
                    f"{path} has no config.json: point at a diffusers UNet2DModel folder "
                    "(config.json + diffusion_pytorch_model.safetensors)"
                )
            unet = UNet2DModel.from_pretrained(str(path), subfolder=subfolder, use_safetensors=None,
                                               **_low_memory_kwargs())
            sched_cfg = None
            for candidate in (path / "scheduler_config.json", path / "scheduler" / "scheduler_config.json"):
                if candidate.exists():
                    sched_cfg = json.loads(candidate.read_text())
                    break
        elif str(name_or_path).startswith((".", "/", "~")) or Path(name_or_path).suffix:
            raise CheckpointError(f"diffusion model folder {name_or_path} does not exist; check the path")
        else:
            unet, sched_cfg = _from_hub(str(name_or_path), subfolder)
        schedule = schedule_from_scheduler_config(sched_cfg) if sched_cfg else NoiseSchedule.linear()
        return cls(unet.eval(), schedule)


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

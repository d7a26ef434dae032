"""Device-dependent rules shared by the purifiers, attacks and evaluation (GPU readiness).

hetpure is developed on CPUs and run on CUDA GPUs. The few places where the device changes what must
happen live here, each testable on a CPU:

- random draws: where a generator's draws are made (:func:`draw_device`), and one device generator per
  call instead of a CPU draw plus a blocking copy per noise tensor (:func:`device_generator`);
- precision on gradient paths: float16 gradients through the ε-network underflow without loss scaling,
  so float16 is refused there (:func:`check_gradient_precision`; bfloat16 is allowed);
- model size: which ε-models are large enough that a differentiated pass is chunked and checkpointed
  (:func:`is_large_eps_model`, :func:`chunks`);
- host syncs: the sampler's integer timesteps are range-checked once per call (:func:`check_timesteps`),
  not on the timestep tensor in every ε call; evaluation freezes its models (:func:`freeze`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from .errors import ConfigError, HetpureError
from .schedule import NoiseFn

#: an ε-model with at least this many parameters, or images at least this large, counts as large
LARGE_MODEL_PARAMETERS = 50_000_000
LARGE_MODEL_IMAGE_SIZE = 128


def draw_device(generator: torch.Generator | None, fallback: torch.device | str = "cpu") -> torch.device:
    """The device a draw with ``generator`` must be made on: the generator's own (``fallback`` without one).

    A CPU generator cannot draw CUDA tensors and a CUDA generator cannot draw CPU tensors, so a draw is
    made where the generator lives and the result moved to the data.
    """
    return torch.device(fallback) if generator is None else generator.device


def device_generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator | None:
    """The generator to draw a call's noise for data on ``device``.

    A CPU generator with data on an accelerator would make every noise draw a CPU ``randn`` and a blocking
    host-to-device copy: instead, one generator on ``device`` is seeded from it (one CPU draw per call).
    Every other combination, in particular CPU data with a CPU generator, returns ``generator`` itself,
    so CPU random streams are unchanged.
    """
    if generator is None or generator.device.type != "cpu" or device.type == "cpu":
        return generator
    seed = int(torch.randint(0, 2**63 - 1, (), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)


def default_noise(noise: NoiseFn | None, generator: torch.Generator | None) -> NoiseFn:
    """``noise`` if given, else Gaussian draws from ``generator`` (on its device, moved to the data)."""
    if noise is not None:
        return noise
    if generator is None:
        return torch.randn_like
    return lambda like: torch.randn(like.shape, generator=generator, device=generator.device).to(
        device=like.device, dtype=like.dtype
    )


def check_timesteps(top: int, num_timesteps: int) -> None:
    """A sampler's largest integer timestep, checked once per sampler call: a range check on the timestep
    tensor inside every ε call would sync the device (and break compiled graphs) at every step."""
    if not 0 <= top < num_timesteps:
        raise HetpureError(f"timesteps must lie in [0, {num_timesteps}), but this sampler reaches {top}; "
                           "lower t_l / t_star or the resampling steps")


def _float16_in(module: nn.Module) -> bool:
    """float16 weights, or a float16 autocast wrapper (``AcceleratedEps.autocast_dtype``), anywhere inside."""
    if any(getattr(m, "autocast_dtype", None) == torch.float16 for m in module.modules()):
        return True
    return any(p.dtype == torch.float16 for p in module.parameters())


def check_gradient_precision(modules: Iterable[nn.Module | None], where: str) -> None:
    """Refuse float16 weights or float16 autocast on a path that attacks differentiate.

    Input gradients through a float16 ε-network are not loss-scaled: small ones underflow to 0, sign(0) = 0,
    PGD stalls and robust accuracy is over-reported. bfloat16 (float32's exponent range) is allowed.
    """
    for module in modules:
        if module is not None and _float16_in(module):
            raise ConfigError(
                f"{where}: float16 is refused on gradient paths (input gradients underflow without loss "
                "scaling, so the attack stalls and robust accuracy is over-reported); use bfloat16 "
                "(diffusion.dtype bf16 or accelerate autocast='bf16') or float32 for attacked models"
            )


def is_large_eps_model(eps_model: nn.Module) -> bool:
    """Whether a differentiated pass through ``eps_model`` should be chunked and checkpointed.

    Large = images of at least ``LARGE_MODEL_IMAGE_SIZE``² or at least ``LARGE_MODEL_PARAMETERS`` parameters
    (ADM 256², NCSN++); the small CIFAR-10 DDPMs are not, and keep the unchunked, uncheckpointed pass.
    """
    size = getattr(eps_model, "image_size", None)
    if size is not None and size >= LARGE_MODEL_IMAGE_SIZE:
        return True
    return sum(p.numel() for p in eps_model.parameters()) >= LARGE_MODEL_PARAMETERS


def chunks(x: Tensor, size: int | None) -> list[Tensor]:
    """``x`` split along the batch into pieces of at most ``size`` rows (one piece when ``size`` is None)."""
    if size is not None and size < 1:
        raise ConfigError(f"max_batch must be >= 1 or None, got {size}")
    if size is None or x.shape[0] <= size:
        return [x]
    return list(x.split(size))


def freeze(*modules: nn.Module | None) -> None:
    """``requires_grad_(False)`` on every parameter: evaluation differentiates inputs only, so autograd then
    keeps no activations for weight gradients that nobody uses (Grad-CAM masks make their input require grad)."""
    for module in modules:
        if module is not None:
            module.requires_grad_(False)


def check_run_device(name: str, key: str = "run.device") -> torch.device:
    """The device a run computes on, refused with the fix when it cannot hold data here: not a device name,
    ``meta`` (shapes without data), or an accelerator this machine does not have.

    Example:
        >>> from hetpure.devices import check_run_device
        >>> check_run_device("cpu")
        device(type='cpu')
        >>> check_run_device("meta")
        Traceback (most recent call last):
            ...
        hetpure.errors.ConfigError: run.device meta holds no data ...; fix: --set run.device=cpu (or cuda)
    """
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"{key} {name!r} is not a device ({exc}); fix: --set {key}=cpu") from exc
    if device.type == "meta":
        raise ConfigError(f"{key} meta holds no data (a meta tensor is a shape without values), so nothing can be "
                          f"computed on it; fix: --set {key}=cpu (or cuda)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key} is cuda but no CUDA device is available here; fix: --set {key}=cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"{key} is {name} but this machine has {torch.cuda.device_count()} CUDA device(s) "
                          f"(cuda:0 … cuda:{torch.cuda.device_count() - 1}); fix: --set {key}=cuda:0")
    if device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(f"{key} is mps but no Apple GPU (MPS) is available here; fix: --set {key}=cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"{key} {name!r}: hetpure runs on cpu, cuda or mps, not {device.type}; fix: --set {key}=cpu")
    return device

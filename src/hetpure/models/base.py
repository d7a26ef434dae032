"""The one interface every diffusion network is adapted to: an ε-prediction model."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..schedule import NoiseSchedule


class EpsModel(nn.Module):
    """An ε-model: ``eps(x_t, t) -> ε`` that also carries its noise schedule.

    ``x_t`` is on the diffusion scale ([-1, 1] for clean images), ``t`` a float tensor (B,) of timestep
    indices in [0, T), and the result has ``x_t``'s shape. Subclasses implement :meth:`predict_eps`.

    Attributes:
        schedule: the β schedule the network was trained with.
        in_channels: image channels the network expects.
        image_size: the spatial size the network was trained at (``None`` if any size works).

    Example:
        >>> import torch, hetpure
        >>> class ZeroEps(hetpure.EpsModel):  # a toy ε-model that always predicts 0
        ...     def predict_eps(self, x_t, t):
        ...         return torch.zeros_like(x_t)
        >>> eps = ZeroEps(hetpure.NoiseSchedule.linear(), in_channels=3)
        >>> eps.num_timesteps, tuple(eps(torch.randn(2, 3, 8, 8), 100).shape)
        (1000, (2, 3, 8, 8))
    """

    def __init__(self, schedule: NoiseSchedule, in_channels: int, image_size: int | None = None) -> None:
        super().__init__()
        self.schedule = schedule
        self.in_channels = int(in_channels)
        self.image_size = None if image_size is None else int(image_size)

    @property
    def num_timesteps(self) -> int:
        return self.schedule.num_timesteps

    def predict_eps(self, x_t: Tensor, t: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def begin_purification(self) -> None:
        """Called once before each purification (batch of sampler runs); CUDA-graph wrappers mark a new step."""

    def prefer_batch(self, size: int) -> None:
        """The batch a purifier calls with (its ``max_batch``); compiled wrappers pad every call to it."""

    def forward(self, x_t: Tensor, t: Tensor | float | int) -> Tensor:
        if x_t.dim() != 4 or x_t.shape[1] != self.in_channels:
            raise InputError(
                f"the ε-model expects (B, {self.in_channels}, H, W) inputs, got shape {tuple(x_t.shape)}"
            )
        if not torch.is_tensor(t):
            if not 0 <= float(t) < self.num_timesteps:  # a Python number: checked without a device sync
                raise InputError(f"timesteps must lie in [0, {self.num_timesteps}), got {t}")
            t = torch.full((x_t.shape[0],), float(t), device=x_t.device)
        elif t.dim() == 0:
            t = t.expand(x_t.shape[0])
        return self.predict_eps(x_t, t.to(device=x_t.device, dtype=torch.float32))

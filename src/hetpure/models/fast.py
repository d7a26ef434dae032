"""Optional speed-ups of an ε-model, each off by default (issue 9): compile, channels_last, autocast, CUDA graphs.

:func:`accelerate` wraps any :class:`EpsModel` in an :class:`AcceleratedEps` that has the same schedule,
channels and call convention, so every purifier, attack and evaluation can use it unchanged. Each flag is
opt-in because each has a cost or a numerical effect that its benchmark has to justify (docs/performance.md):

- ``channels_last``: NHWC memory layout for the network's weights and inputs (same arithmetic).
- ``autocast``: ``"bf16"`` or ``"fp16"`` matmuls/convolutions on CUDA with fp32 accumulation; the output ε
  is returned in fp32 so the sampler's arithmetic stays fp32. Changes the numbers slightly.
- ``compile``: ``torch.compile`` of the network (first calls are slow while it compiles).
- ``cuda_graphs``: ``torch.compile(mode="reduce-overhead")``, which captures CUDA graphs for the fixed
  shapes of the sampler loop; CUDA only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from .base import EpsModel

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


class AcceleratedEps(EpsModel):
    """An ε-model with optional speed-ups; ``inner`` is the wrapped model."""

    def __init__(self, inner: EpsModel, *, compile: bool = False, channels_last: bool = False,
                 autocast: str | None = None, cuda_graphs: bool = False) -> None:
        super().__init__(inner.schedule, inner.in_channels, inner.image_size)
        if autocast is not None and autocast not in AUTOCAST_DTYPES:
            raise ConfigError(f"autocast must be one of {sorted(AUTOCAST_DTYPES)} or None, got {autocast!r}")
        param = next(inner.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        if (autocast is not None or cuda_graphs) and device.type != "cuda":
            raise ConfigError(
                "autocast and cuda_graphs are CUDA speed-ups; move the ε-model to a GPU first (model.cuda()) "
                "or leave them off on the CPU"
            )
        self.inner = inner
        self.channels_last = bool(channels_last)
        self.autocast_dtype = AUTOCAST_DTYPES[autocast] if autocast else None
        if self.channels_last:  # converts the wrapped model's weights in place (same values, NHWC layout)
            inner.to(memory_format=torch.channels_last)
        self._call: Any = inner.predict_eps
        if compile or cuda_graphs:
            self._call = torch.compile(inner.predict_eps, mode="reduce-overhead" if cuda_graphs else None)
        self.flags = {"compile": bool(compile), "channels_last": self.channels_last, "autocast": autocast,
                      "cuda_graphs": bool(cuda_graphs)}

    def predict_eps(self, x_t: Tensor, t: Tensor) -> Tensor:
        if self.channels_last:
            x_t = x_t.contiguous(memory_format=torch.channels_last)
        if self.autocast_dtype is not None:
            with torch.autocast("cuda", dtype=self.autocast_dtype):
                out = self._call(x_t, t).float()
        else:
            out = self._call(x_t, t)
        if self.flags["cuda_graphs"]:
            return out.clone()  # a graph's output buffer is overwritten by its next replay
        return out.contiguous()


def accelerate(eps_model: EpsModel, *, compile: bool = False, channels_last: bool = False,
               autocast: str | None = None, cuda_graphs: bool = False) -> EpsModel:
    """The ε-model with the chosen speed-ups; with every flag off, the model itself (no wrapper)."""
    if not (compile or channels_last or autocast or cuda_graphs):
        return eps_model
    return AcceleratedEps(eps_model, compile=compile, channels_last=channels_last, autocast=autocast,
                          cuda_graphs=cuda_graphs)

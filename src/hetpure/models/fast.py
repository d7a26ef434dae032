"""Optional speed-ups of an ε-model, each off by default: compile, channels_last, autocast, CUDA graphs.

:func:`accelerate` wraps any :class:`EpsModel` in an :class:`AcceleratedEps` that has the same schedule,
channels and call convention, so every purifier, attack and evaluation can use it unchanged. Each flag is
opt-in because each has a cost or a numerical effect that its benchmark has to justify (docs/performance.md):

- ``channels_last``: NHWC memory layout for the network's weights and inputs (same arithmetic).
- ``autocast``: ``"bf16"`` or ``"fp16"`` matmuls/convolutions on CUDA with fp32 accumulation; the output ε
  is returned in fp32 so the sampler's arithmetic stays fp32. Changes the numbers slightly.
- ``compile``: ``torch.compile`` of the network (first calls are slow while it compiles).
- ``cuda_graphs``: ``torch.compile(mode="reduce-overhead")``, which captures CUDA graphs for the fixed
  shapes of the sampler loop; CUDA only. Graphs run only under ``torch.no_grad()`` (the defence's votes);
  differentiated calls (attacks, checkpoint recomputation) take the eager or plainly compiled path, and
  ``torch.compiler.cudagraph_mark_step_begin()`` marks each purification as a new step.

With ``compile`` or ``cuda_graphs`` every call is padded to one batch size (the purifier's ``max_batch``,
see :meth:`AcceleratedEps.prefer_batch`): the last chunk, EOT chunks and gradient passes would otherwise
each have a new shape and recompile or record a new graph. Padding rows are zeros and are cut off again.
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
        self._grad_call: Any = inner.predict_eps  # differentiated calls never replay CUDA graphs
        if compile or cuda_graphs:
            self._call = torch.compile(inner.predict_eps, mode="reduce-overhead" if cuda_graphs else None)
        if compile:
            self._grad_call = self._call if not cuda_graphs else torch.compile(inner.predict_eps)
        self.pad_batch: int | None = None  # with compile / CUDA graphs: every call padded to this batch
        self.flags = {"compile": bool(compile), "channels_last": self.channels_last, "autocast": autocast,
                      "cuda_graphs": bool(cuda_graphs)}

    def prefer_batch(self, size: int) -> None:
        """Pad compiled calls to ``size`` images (the largest ``max_batch`` of the purifiers using this model)."""
        if self.flags["compile"] or self.flags["cuda_graphs"]:
            self.pad_batch = max(self.pad_batch or 0, int(size))

    def begin_purification(self) -> None:
        mark = getattr(torch.compiler, "cudagraph_mark_step_begin", None)
        if self.flags["cuda_graphs"] and mark is not None:
            mark()

    def predict_eps(self, x_t: Tensor, t: Tensor) -> Tensor:
        size = self.pad_batch
        if size is None or x_t.shape[0] == size:
            return self._predict(x_t, t)
        outs = []
        for xs, ts in zip(x_t.split(size), t.split(size)):
            n = xs.shape[0]
            if n < size:  # pad with zero rows (and timestep 0) to the one compiled shape
                xs = torch.cat([xs, xs.new_zeros((size - n, *xs.shape[1:]))])
                ts = torch.cat([ts, ts.new_zeros(size - n)])
            outs.append(self._predict(xs, ts)[:n])
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _predict(self, x_t: Tensor, t: Tensor) -> Tensor:
        grad = torch.is_grad_enabled()
        graphs = self.flags["cuda_graphs"] and not grad
        call = self._grad_call if grad else self._call
        if self.channels_last:
            x_t = x_t.contiguous(memory_format=torch.channels_last)
        if self.autocast_dtype is not None:
            with torch.autocast("cuda", dtype=self.autocast_dtype):
                out = call(x_t, t).float()
        else:
            out = call(x_t, t)
        if graphs:
            return out.clone()  # a graph's output buffer is overwritten by its next replay
        return out.contiguous()


def accelerate(eps_model: EpsModel, *, compile: bool = False, channels_last: bool = False,
               autocast: str | None = None, cuda_graphs: bool = False) -> EpsModel:
    """The ε-model with the chosen speed-ups; with every flag off, the model itself (no wrapper)."""
    if not (compile or channels_last or autocast or cuda_graphs):
        return eps_model
    return AcceleratedEps(eps_model, compile=compile, channels_last=channels_last, autocast=autocast,
                          cuda_graphs=cuda_graphs)

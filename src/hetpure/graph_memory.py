"""How much memory the autograd graph of an exact-gradient attack holds, to choose checkpointing by a budget.

Differentiating the defence's own sampler keeps, for every ε-model call, the activations autograd saves for
the backward pass. Per-step checkpointing (:func:`hetpure.purify.sample_heterogeneous` with
``use_checkpoint``) keeps only one step's and recomputes each step in the backward pass: about one more
forward pass per call, for memory independent of S. When the whole graph fits, keeping it is faster, and the
gradients are the same bit for bit (the noise of every step is drawn before the step and replayed), so the
records do not depend on the choice. :func:`saved_bytes_per_call` measures what one ε-model call saves per
image (with ``torch.autograd.graph.saved_tensors_hooks``); :func:`use_checkpointing` compares the whole
graph of one differentiated chunk with ``attack.memory_budget_gb``.
"""

from __future__ import annotations

import torch
from torch import nn

_CACHE: dict[tuple[int, tuple[int, ...], str, str], int] = {}


def saved_bytes_per_call(eps_model: nn.Module, shape: tuple[int, int, int], device: torch.device | str = "cpu",
                         dtype: torch.dtype = torch.float32) -> int:
    """Bytes autograd saves for the backward pass of one ε-model call on one (C, H, W) image (cached)."""
    key = (id(eps_model), tuple(shape), str(device), str(dtype))
    if key in _CACHE:
        return _CACHE[key]
    total = 0
    seen: set[int] = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in seen:  # views of one storage count once
            seen.add(ptr)
            total += storage.nbytes()
        return t

    x = torch.zeros(1, *shape, device=device, dtype=dtype, requires_grad=True)
    t = torch.full((1,), 100.0, device=device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.enable_grad():
        eps_model(x, t)
    _CACHE[key] = total
    return total


def graph_bytes(eps_model: nn.Module, shape: tuple[int, int, int], calls: int, images: int,
                device: torch.device | str = "cpu") -> int:
    """Estimated bytes of the whole graph of ``calls`` ε-model calls on a chunk of ``images`` images."""
    return saved_bytes_per_call(eps_model, shape, device) * calls * images


def use_checkpointing(mode: str, budget_gb: float, eps_model: nn.Module, shape: tuple[int, int, int], calls: int,
                      images: int, device: torch.device | str = "cpu") -> bool:
    """``attack.checkpoint``: ``always`` / ``never``, or ``auto``: checkpoint only when the whole graph of one
    differentiated chunk (``images`` = the attack's batch × EOT chunk) would exceed ``budget_gb``."""
    if mode in ("always", "never"):
        return mode == "always"
    return graph_bytes(eps_model, shape, calls, images, device) > budget_gb * 2**30

"""torch.distributed context for ``torchrun --nproc_per_node=N -m hetpure evaluate ...``.

Work is sharded by batches (batch b goes to rank b mod world_size); each rank appends its own records
file and rank 0 merges them. No communication happens except barriers around the merge.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist

from .errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """A torch device from a config string, with a clear error when CUDA/MPS is not available."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"run.device {name!r} is not a device name (use cpu, cuda or cuda:N)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"run.device is {name!r} but CUDA is not available here; use run.device=cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("run.device is 'mps' but MPS is not available here; use run.device=cpu")
    return device


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device_name: str) -> DistContext:
        """Single process unless launched by torchrun (WORLD_SIZE > 1): then gloo on CPU, nccl on CUDA."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        device = resolve_device(device_name)
        if world <= 1:
            return cls(device=device)
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        owns = False
        if not tdist.is_initialized():
            tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            owns = True
        return cls(rank, world, local_rank, device, owns)

    def barrier(self) -> None:
        if self.world_size > 1:
            tdist.barrier()

    def close(self) -> None:
        if self.owns_group and tdist.is_initialized():
            tdist.destroy_process_group()

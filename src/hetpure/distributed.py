"""torch.distributed context for ``torchrun --nproc_per_node=N -m hetpure evaluate ...``.

Work is sharded by batches (batch b goes to rank b mod world_size); each rank appends its own records
file and rank 0 merges them. No tensor communication happens: only barriers around the merge, on a CPU
(gloo) group, because rank 0 alone merges, runs the sanity checks and writes the summary while the other
ranks wait (hours at the paper's budget). Hence:

- the collective timeout is long and configurable: ``HETPURE_DIST_TIMEOUT_MINUTES`` (default 1440, one
  day) instead of torch's 10 minutes;
- each barrier carries a status: a rank that fails (an exception anywhere in :func:`teardown_on_exit`)
  reports the failure at the others' next barrier, so they stop with an error instead of hanging, and
  every rank tears the process group down in a ``finally``;
- ``run.out`` must be one folder that every rank sees (shared storage on multi-node runs):
  :meth:`DistContext.check_shared_folder` refuses a node-local folder up front.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, ParamSpec, TypeVar

import torch
import torch.distributed as tdist

from .errors import ConfigError, HetpureError

TIMEOUT_ENV = "HETPURE_DIST_TIMEOUT_MINUTES"
DEFAULT_TIMEOUT_MINUTES = 24 * 60

P = ParamSpec("P")
R = TypeVar("R")


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


def collective_timeout(minutes: float | None = None) -> datetime.timedelta:
    """The timeout of hetpure's barriers: ``minutes``, else ``$HETPURE_DIST_TIMEOUT_MINUTES``, else one day."""
    if minutes is None:
        raw = os.environ.get(TIMEOUT_ENV)
        try:
            minutes = float(raw) if raw else DEFAULT_TIMEOUT_MINUTES
        except ValueError as exc:
            raise ConfigError(f"{TIMEOUT_ENV} must be a number of minutes, got {raw!r}") from exc
    if not minutes > 0:
        raise ConfigError(f"the collective timeout must be > 0 minutes, got {minutes}")
    return datetime.timedelta(minutes=minutes)


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False
    group: Any = None  # the gloo group of the barriers (None: the default group)
    closed: bool = field(default=False, repr=False)
    stopped: bool = field(default=False, repr=False)  # every rank already knows the run stops

    active: ClassVar[DistContext | None] = None  # the context of the running evaluation, for teardown

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device_name: str, timeout_minutes: float | None = None) -> DistContext:
        """Single process unless launched by torchrun (WORLD_SIZE > 1): then a gloo process group with a long
        timeout for the barriers (CUDA ranks use ``cuda:LOCAL_RANK``; no NCCL collective is needed)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        device = resolve_device(device_name)
        if world <= 1:
            return cls(device=device)
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        timeout = collective_timeout(timeout_minutes)
        owns, group = False, None
        if not tdist.is_initialized():
            tdist.init_process_group("gloo", timeout=timeout)
            owns = True
        elif tdist.get_backend() != "gloo":  # someone else's (e.g. NCCL) group: barriers on a gloo one
            group = tdist.new_group(backend="gloo", timeout=timeout)
        ctx = cls(rank, world, local_rank, device, owns, group)
        DistContext.active = ctx
        return ctx

    def _exchange(self, failed: bool = False, problem: bool = False, token: int = 0) -> tuple[bool, bool, int]:
        """The one collective hetpure uses (so a failure report always matches the others' next call): a
        max-reduce of (failed, problem, token) over the ranks."""
        values = torch.tensor([int(failed), int(problem), token], dtype=torch.int64)
        tdist.all_reduce(values, op=tdist.ReduceOp.MAX, group=self.group)
        failed_any, problem_any, token_max = (int(v) for v in values.tolist())
        if failed_any and not failed:
            self.stopped = True
            raise HetpureError(f"rank {self.rank}: another rank failed (its log has the error); stopping too")
        return bool(failed_any), bool(problem_any), token_max

    def barrier(self) -> None:
        """Wait for every rank; raise when another rank reported a failure instead of arriving."""
        if self.world_size > 1:
            self._exchange()

    def report_failure(self) -> None:
        """Called on a failing rank: the other ranks' next barrier sees the failure and raises."""
        if self.world_size > 1 and not (self.closed or self.stopped):
            self.stopped = True
            try:
                self._exchange(failed=True)
            except Exception:  # noqa: BLE001 - the group may already be broken; the original error matters
                pass

    def check_shared_folder(self, out: Path) -> None:
        """Refuse a ``run.out`` that the ranks do not all see (a node-local folder on a multi-node run).

        Rank 0 writes a marker with a fresh token; every rank must read it back. Records written to a folder
        rank 0 cannot see never reach its merge, and the summary would silently count node 0's images only.
        """
        if self.world_size <= 1:
            return
        token = int.from_bytes(os.urandom(6), "big") + 1 if self.is_main else 0
        token = self._exchange(token=token)[2]
        marker = out / f".hetpure-shared-{token}"
        if self.is_main:
            marker.write_text(str(token))
        self.barrier()
        try:
            seen = marker.read_text() == str(token)
        except OSError:
            seen = False
        problem = self._exchange(problem=not seen)[1]
        if self.is_main:
            marker.unlink(missing_ok=True)
        if problem:
            self.stopped = True
            raise HetpureError(
                f"run.out {out} is not shared by all ranks (some rank cannot read the file rank 0 wrote there), "
                "so their records would never reach rank 0's merge and the summary would count node 0 only. "
                "Fix: put run.out on storage every node mounts (NFS, Lustre, a shared volume), or run one "
                "evaluation per node, each on its own data subset"
            )

    def check_same_images(self, indices: list[int]) -> None:
        """Refuse a run whose ranks would evaluate different images: each rank chose its images itself (the
        survivors of ``data.survivors_of`` runs, the finished images of a rescored source), and a listed run
        that another process is still writing can give ranks that read it at different moments different sets,
        whose batches would then not fit together."""
        if self.world_size <= 1:
            return
        mine = int.from_bytes(hashlib.sha256(repr(list(indices)).encode()).digest()[:6], "big") + 1
        largest = self._exchange(token=mine)[2]
        if self._exchange(problem=mine != largest)[1]:
            self.stopped = True
            raise HetpureError(
                "the ranks chose different images to evaluate (data.survivors_of or attack.source: a listed run "
                "changed while the ranks read it, e.g. another process is still writing it). Fix: wait until "
                "the listed runs are finished, then rerun the same command (it resumes)"
            )

    def check_merged(self, merged: int, expected: int, out: Path) -> None:
        """Rank 0, after the merge: every image of the run must have its record (else say how to fix it)."""
        if merged != expected:
            raise HetpureError(
                f"the merge in {out} found {merged} of the run's {expected} records: the other ranks' "
                "records.rank*.jsonl are not in this folder (run.out not shared between nodes?). Fix: put "
                "run.out on storage every node mounts, or copy every node's records.rank*.jsonl into it and "
                "rerun the same command (it resumes, merges and summarises)"
            )

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if DistContext.active is self:
            DistContext.active = None
        if self.group is not None and tdist.is_initialized():
            tdist.destroy_process_group(self.group)
        if self.owns_group and tdist.is_initialized():
            tdist.destroy_process_group()


def teardown_on_exit(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorate an entry point that creates a :class:`DistContext`: on an exception, report it to the other
    ranks (their next barrier raises instead of hanging); in every case, tear the process group down."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except BaseException:
            if DistContext.active is not None:
                DistContext.active.report_failure()
            raise
        finally:
            if DistContext.active is not None:
                DistContext.active.close()

    return wrapper

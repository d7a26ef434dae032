"""Shared helpers for the benchmark scripts: locating ../shared and timing."""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    root = Path(os.environ.get("HETPURE_SHARED", REPO.parent / "shared"))
    if not root.is_absolute():
        root = (REPO / root).resolve()
    if not root.is_dir():
        sys.exit(f"benchmarks read models and data from ../shared; {root} is missing (set HETPURE_SHARED)")
    os.environ["HETPURE_SHARED"] = str(root)  # run folders then record $HETPURE_SHARED/… instead of this machine's path
    return root


def best_time(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> float:
    """Best wall-clock seconds of ``repeats`` calls after ``warmup`` calls (keep one warm-up also for one timed
    call: a timed first call measures CUDA context set-up, cuDNN autotuning or compilation, not the work)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def print_table(headers: list[str], rows: list[list[object]]) -> None:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")


# --- device helpers (GPU readiness): the same numbers on a CPU and on a CUDA device ------------


def add_backend_flags(parser: argparse.ArgumentParser) -> None:
    """``--cudnn-benchmark`` and ``--tf32``: CUDA backend modes a benchmark can be run with (off by default)."""
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="CUDA: torch.backends.cudnn.benchmark (autotuned convolutions for fixed shapes)")
    parser.add_argument("--tf32", action="store_true",
                        help="CUDA: TF32 matmuls and convolutions (Ampere or newer; changes the numbers slightly)")


def apply_backend_flags(args: argparse.Namespace) -> str:
    """Set the backend modes of :func:`add_backend_flags`; returns them as words for a table's header."""
    import torch

    torch.backends.cudnn.benchmark = bool(args.cudnn_benchmark)
    if args.tf32:
        if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
            torch.backends.cuda.matmul.fp32_precision = "tf32"
            torch.backends.cudnn.conv.fp32_precision = "tf32"
        else:  # torch before the fp32_precision API
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
    return f"cudnn.benchmark {'on' if args.cudnn_benchmark else 'off'}, TF32 {'on' if args.tf32 else 'off'}"


def synchronize(device: object) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so that wall-clock times are the work's."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: object) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_cuda_mb(device: object) -> float | None:
    """Peak CUDA memory allocated by tensors since the last :func:`reset_peak_memory` (None on a CPU)."""
    import torch

    if torch.device(device).type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def fmt_mb(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"

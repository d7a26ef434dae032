"""Seconds and peak memory per attack iteration through the heterogeneous purifier, by gradient mode.

Each case runs in its own process, so peak resident memory is per case. "added" is the peak minus the
resident memory after the models were loaded: the memory the attack iteration itself needs.
Target: with checkpointing, added peak memory for S = 100 ≤ 1.5 × that for S = 10.

``--resampling`` prints the resampling ablation instead: U = 0, 1, 3, 10 single forward steps
against RePaint-style multi-step resampling (r round trips per stage-1 step), for the exact gradient
through the S = 100 defence without checkpointing (so memory shows the sampler's whole graph).

    python bench/attack_cost.py [--batch 8] [--eot 1] [--resampling] [--device cpu|cuda]

On CUDA the tables add the peak memory allocated by tensors during the iteration and the part of it added
to what the loaded models hold ("added CUDA MB"); timings wait for the device (synchronize).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CASES = [
    ("surrogate S=10 (defence S=100)", "surrogate", 100),
    ("exact, checkpointed, S=10", "exact-ckpt", 10),
    ("exact, checkpointed, S=100", "exact-ckpt", 100),
    ("exact, no checkpointing, S=10", "exact-plain", 10),
    ("exact, no checkpointing, S=100", "exact-plain", 100),
]


def current_rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


RESAMPLING_CASES = [
    ("U=0", 0, 1), ("U=1", 1, 1), ("U=3 (paper)", 3, 1), ("U=10", 10, 1),
    ("RePaint r=3", 0, 3), ("RePaint r=10", 0, 10),
]


def run_case(mode: str, ddim_steps: int, batch: int, eot: int, resample_steps: int = 3,
             repaint_jumps: int = 1, device: str = "cpu") -> dict:
    import torch
    from _common import peak_cuda_mb, peak_rss_mb, reset_peak_memory, shared_dir, synchronize

    import hetpure
    from hetpure.attacks import PGD, defended_model

    torch.manual_seed(0)
    shared = shared_dir()
    dev = torch.device(device)
    eps = hetpure.DiffusersEps.from_pretrained(shared / "models/ddpm-cifar10-tiny").to(dev).requires_grad_(False)
    clf = hetpure.load_classifier("cifar_resnet20", shared / "models/resnet20-cifar10/model.safetensors")
    clf = clf.to(dev).requires_grad_(False)  # frozen, as in an evaluation
    cfg = hetpure.PurifyConfig(t_s=0.1, t_l=0.2, tau=0.9, ddim_steps=ddim_steps, resample_steps=resample_steps,
                               repaint_jumps=repaint_jumps)
    pur = hetpure.HeterogeneousPurifier(eps, clf, cfg)
    if mode == "surrogate":
        model = defended_model(pur, clf, "surrogate", 10)
    elif mode == "exact-ckpt":
        model = defended_model(pur, clf, "exact")
    else:
        model = pur.as_module(use_checkpoint=False)
    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(dev)
    y = torch.randint(0, 10, (batch,), generator=torch.Generator().manual_seed(1)).to(dev)
    attack = PGD(steps=1, eot=eot)
    synchronize(dev)
    base = current_rss_mb()
    base_cuda = torch.cuda.memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
    reset_peak_memory(dev)
    start = time.perf_counter()
    attack(model, x, y)
    synchronize(dev)
    seconds = time.perf_counter() - start
    peak, peak_cuda = peak_rss_mb(), peak_cuda_mb(dev)
    return {"seconds": seconds, "peak_mb": peak, "added_mb": peak - base, "eps_calls": model.eps_calls(),
            "peak_cuda_mb": peak_cuda, "added_cuda_mb": None if peak_cuda is None else peak_cuda - base_cuda}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--eot", type=int, default=1)
    parser.add_argument("--resampling", action="store_true", help="the U / RePaint ablation table")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--ddim-steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--resample-steps", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("--repaint-jumps", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.ddim_steps, args.batch, args.eot, args.resample_steps,
                                  args.repaint_jumps, args.device)))
        return
    from _common import fmt_mb, print_table

    cuda_headers = ["peak CUDA MB", "added CUDA MB"] if args.device.startswith("cuda") else []

    def cuda_cells(m: dict) -> list[str]:
        return [fmt_mb(m["peak_cuda_mb"]), fmt_mb(m["added_cuda_mb"])] if cuda_headers else []

    def measure(*case_args: str) -> dict:
        # glibc keeps freed heap pages resident, so peak RSS would count memory already released; serve large
        # blocks with mmap (returned to the OS on free) so that RSS follows the live tensors.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
        proc = subprocess.run(
            [sys.executable, __file__, "--batch", str(args.batch), "--eot", str(args.eot), "--device", args.device,
             *case_args],
            capture_output=True, text=True, cwd=Path(__file__).parent, env=env,
        )
        if proc.returncode != 0:
            sys.exit(proc.stderr)
        return json.loads(proc.stdout.strip().splitlines()[-1])

    if args.resampling:
        rows = []
        for label, u, r in RESAMPLING_CASES:
            m = measure("--case", "exact-plain", "--ddim-steps", "100", "--resample-steps", str(u),
                        "--repaint-jumps", str(r))
            rows.append([label, m["eps_calls"], f"{m['seconds']:.2f}", f"{m['peak_mb']:.0f}", f"{m['added_mb']:.0f}",
                         *cuda_cells(m)])
        print(f"resampling ablation: one PGD iteration, exact gradient through the S = 100 defence without "
              f"checkpointing, batch {args.batch}, EOT {args.eot}, shared CIFAR-10 DDPM + ResNet-20, {args.device}")
        print_table(["stage-1 resampling", "ε calls differentiated", "seconds", "peak RSS MB", "added MB",
                     *cuda_headers], rows)
        return

    rows, added = [], {}
    for label, mode, steps in CASES:
        r = measure("--case", mode, "--ddim-steps", str(steps))
        added[(mode, steps)] = r["added_mb"]
        rows.append([label, r["eps_calls"], f"{r['seconds']:.2f}", f"{r['peak_mb']:.0f}", f"{r['added_mb']:.0f}",
                     *cuda_cells(r)])
        if cuda_headers:  # on a GPU the memory that matters is the device's
            added[(mode, steps)] = r["added_cuda_mb"]
    print(f"one PGD iteration, batch {args.batch}, EOT {args.eot}, shared CIFAR-10 DDPM + ResNet-20, {args.device}")
    print_table(["gradient", "ε calls differentiated", "seconds", "peak RSS MB", "added MB", *cuda_headers], rows)
    ratio = added[("exact-ckpt", 100)] / max(added[("exact-ckpt", 10)], 1.0)
    print(f"checkpointed added memory S=100 / S=10: {ratio:.2f} (target <= 1.5: {'ok' if ratio <= 1.5 else 'ABOVE'})")


if __name__ == "__main__":
    main()

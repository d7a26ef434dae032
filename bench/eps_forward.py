"""Forward time and peak resident memory of the ADM and NCSN++ ε-models.

Each case runs in its own subprocess, so "peak RSS" is that case's own high-water mark (Python, torch,
the model and one forward pass under ``torch.no_grad()``). Full-size networks get random weights.

    python bench/eps_forward.py                 # tiny + full size (ADM 256² batch 1 takes a while on CPU)
    python bench/eps_forward.py --quick         # tiny models and full NCSN++ only
    python bench/eps_forward.py --with-load     # also: save a random full-size checkpoint to a temp dir,
                                                # then load_eps_model + one forward (the real-use peak)
    python bench/eps_forward.py --device cuda --dtype bf16   # on a GPU (peak = torch.cuda max allocated)
    python bench/eps_forward.py --device cuda --cudnn-benchmark --tf32   # CUDA backend modes

The ADM budget: one 256² image purified on CPU in ≤ 8 GB resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import REPO, add_backend_flags, apply_backend_flags, best_time, peak_rss_mb, print_table

TINY_ADM = {
    "image_size": 16,
    "num_channels": 32,
    "num_res_blocks": 1,
    "channel_mult": "1,1",
    "attention_resolutions": "8",
    "num_head_channels": 8,
}
TINY_NCSNPP = {"model": {"nf": 8, "num_res_blocks": 2}}

# name -> (kind, config, image size, batch, repeats, needs --with-load)
CASES: dict[str, tuple[str, dict | None, int, int, int, bool]] = {
    "adm-tiny": ("adm", TINY_ADM, 16, 2, 5, False),
    "ncsnpp-tiny": ("ncsnpp", TINY_NCSNPP, 32, 2, 5, False),
    "ncsnpp-full-b1": ("ncsnpp", None, 32, 1, 3, False),
    "ncsnpp-full-b8": ("ncsnpp", None, 32, 8, 2, False),
    "adm-full-b1": ("adm", None, 256, 1, 1, False),
    "ncsnpp-full-load": ("ncsnpp", None, 32, 1, 1, True),
    "adm-full-load": ("adm", None, 256, 1, 1, True),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(name: str, device_name: str, dtype: str | None, workdir: str) -> dict[str, object]:
    """Build (or load) one model and time its forward pass; returns the numbers as a dict."""
    from hetpure.models import build_eps_model, load_eps_model

    kind, config, size, batch, repeats, with_load = CASES[name]
    device = torch.device(device_name)
    start = time.perf_counter()
    if with_load:
        # The checkpoint was written by the parent process (see write_checkpoint) in the original layout.
        path = Path(workdir) / f"{kind}.pt"
        model = load_eps_model(kind, path, config=config, dtype=dtype, device=device)
    else:
        torch.manual_seed(0)
        model = build_eps_model(kind, config, dtype=dtype, device=device)
    build_s = time.perf_counter() - start
    x = torch.randn(batch, 3, size, size, device=device)
    t = torch.full((batch,), 500.0, device=device)

    def call() -> None:
        model(x, t)
        _sync(device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.no_grad():  # one warm-up call also when repeats is 1: the first call is not the forward's time
        seconds = best_time(call, repeats=repeats, warmup=1)
    peak_gpu = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {
        "case": name,
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "input": f"{batch}x3x{size}x{size}",
        "build_s": build_s,
        "forward_s": seconds,
        "peak_rss_mb": peak_rss_mb(),
        "peak_gpu_mb": peak_gpu,
        "weights": getattr(model, "loaded_weights", None) or "random",
    }


def write_checkpoint(kind: str, workdir: Path) -> Path:
    """A random full-size checkpoint in the original layout: ADM a plain state dict; NCSN++ score_sde's dict."""
    from hetpure.models import build_eps_model

    torch.manual_seed(0)
    net = build_eps_model(kind).net
    state = net.state_dict()
    path = workdir / f"{kind}.pt"
    if kind == "adm":
        torch.save(state, path)
    else:
        shadow = [p.detach().clone() for p in net.parameters()]
        torch.save(
            {
                "model": {"module." + k: v for k, v in state.items()},
                "ema": {"decay": 0.9999, "num_updates": 1, "shadow_params": shadow},
                "optimizer": {"state": {}, "param_groups": []},
                "step": 1,
            },
            path,
        )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="skip the full-size ADM")
    parser.add_argument("--with-load", action="store_true", help="also time load_eps_model from a file")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="e.g. bf16 or fp16 (default float32)")
    add_backend_flags(parser)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()

    backend = apply_backend_flags(args)
    if args.case:  # child process: one case, JSON on stdout
        print(json.dumps(run_case(args.case, args.device, args.dtype, args.workdir)))
        return

    names = [n for n, c in CASES.items() if not c[5] or args.with_load]
    if args.quick:
        names = [n for n in names if not n.startswith("adm-full")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="hetpure-bench-") as tmp:
        for name in names:
            kind, *_, with_load = CASES[name]
            if with_load:
                write_checkpoint(kind, Path(tmp))
            cmd = [sys.executable, __file__, "--case", name, "--device", args.device, "--workdir", tmp]
            if args.dtype:
                cmd += ["--dtype", args.dtype]
            cmd += ["--cudnn-benchmark"] * args.cudnn_benchmark + ["--tf32"] * args.tf32
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=os.environ.copy())
            if proc.returncode != 0:
                rows.append([name, "-", "-", "-", "-", "FAILED: " + proc.stderr.strip().splitlines()[-1], "-", "-"])
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            gpu = "-" if r["peak_gpu_mb"] is None else f"{r['peak_gpu_mb']:.0f}"
            rows.append([
                r["case"], f"{r['params_M']:.1f}", r["input"], r["weights"], f"{r['build_s']:.2f}",
                f"{1000 * r['forward_s']:.1f}", f"{r['peak_rss_mb']:.0f}", gpu,
            ])
            if with_load:
                (Path(tmp) / f"{kind}.pt").unlink()
    print(
        f"device {args.device} ({backend}), dtype {args.dtype or 'float32'}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}"
    )
    print_table(
        ["case", "params (M)", "input", "weights", "build/load s", "forward ms", "peak RSS MB", "peak GPU MB"],
        rows,
    )


if __name__ == "__main__":
    main()

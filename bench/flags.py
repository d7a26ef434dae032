"""The optional ε-model speed-ups, each against the plain model: ms per image and agreement.

For every flag set this prints the ε-model's forward time (no grad, the defence's cost), its
forward + backward time (the exact-gradient attack's cost), the first call (compilation), and the
largest |ε − ε_plain|. On a CPU only ``channels_last`` and ``compile`` apply; on CUDA the table adds
``autocast`` bf16/fp16 and ``cuda_graphs``. A flag earns a default-on place only if this table shows a
clear gain on the machine in question (docs/performance.md holds the measured tables).

    python bench/flags.py [--batch 32] [--repeats 3] [--threads 1] [--device cpu|cuda] [--cudnn-benchmark] [--tf32]

On CUDA the table adds the peak memory allocated by tensors (forward + backward). ``autocast=fp16`` is timed
for comparison only: hetpure refuses float16 on gradient paths (attacks), since its input gradients underflow.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import (
    add_backend_flags,
    apply_backend_flags,
    best_time,
    fmt_mb,
    peak_cuda_mb,
    print_table,
    reset_peak_memory,
    shared_dir,
)

import hetpure
from hetpure.models.fast import accelerate

CPU_FLAGS: list[dict[str, object]] = [{}, {"channels_last": True}, {"compile": True},
                                      {"channels_last": True, "compile": True}]
CUDA_FLAGS: list[dict[str, object]] = [{"autocast": "bf16"}, {"autocast": "fp16"},
                                       {"autocast": "bf16", "channels_last": True}, {"cuda_graphs": True}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-compile", action="store_true", help="skip the flag sets that compile (quick runs)")
    parser.add_argument("--compile-only", action="store_true", help="only the plain model and the compiling sets")
    add_backend_flags(parser)
    args = parser.parse_args()
    backend = apply_backend_flags(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    path = shared_dir() / "models/ddpm-cifar10-tiny"
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32, generator=gen).to(dev)
    t = torch.full((args.batch,), 150.0, device=dev)
    plain = hetpure.DiffusersEps.from_pretrained(path).to(dev).eval()
    with torch.no_grad():
        reference = plain(x, t)

    rows = []
    base_fwd = base_bwd = None
    for flags in CPU_FLAGS + (CUDA_FLAGS if dev.type == "cuda" else []):
        compiles = bool(flags.get("compile") or flags.get("cuda_graphs"))
        if (args.no_compile and compiles) or (args.compile_only and flags and not compiles):
            continue
        net = hetpure.DiffusersEps.from_pretrained(path).to(dev).eval().requires_grad_(False)  # as in evaluation
        model = accelerate(net, **flags)
        start = time.perf_counter()
        with torch.no_grad():
            out = model(x, t)
        sync()
        first = time.perf_counter() - start
        with torch.no_grad():
            fwd = best_time(lambda m=model: (m(x, t), sync()), args.repeats)
        xr = x.clone().requires_grad_(True)

        def forward_backward(m: torch.nn.Module = model, xr: torch.Tensor = xr) -> None:
            xr.grad = None
            m(xr, t).square().sum().backward()
            sync()

        reset_peak_memory(dev)
        bwd = best_time(forward_backward, args.repeats)
        base_fwd, base_bwd = base_fwd or fwd, base_bwd or bwd
        name = ", ".join(f"{k}={v}" if v is not True else k for k, v in flags.items()) or "plain"
        rows.append([name, f"{first:.1f}", f"{1000 * fwd / args.batch:.1f}", f"{base_fwd / fwd:.2f}",
                     f"{1000 * bwd / args.batch:.1f}", f"{base_bwd / bwd:.2f}",
                     f"{(out.float() - reference).abs().max().item():.1e}", fmt_mb(peak_cuda_mb(dev))])
    print(f"device {dev} ({backend}), threads {torch.get_num_threads()}, batch {args.batch}, "
          f"torch {torch.__version__}")
    print_table(["flags", "first call s", "fwd ms/img", "fwd speed-up", "fwd+bwd ms/img", "fwd+bwd speed-up",
                 "max |Δε|", "fwd+bwd peak CUDA MB"], rows)


if __name__ == "__main__":
    main()

"""The optional ε-model speed-ups (issue 9), each against the plain model: ms per image and agreement.

For every flag set this prints the ε-model's forward time (no grad, the defence's cost), its
forward + backward time (the exact-gradient attack's cost), the first call (compilation), and the
largest |ε − ε_plain|. On a CPU only ``channels_last`` and ``compile`` apply; on CUDA the table adds
``autocast`` bf16/fp16 and ``cuda_graphs``. A flag earns a default-on place only if this table shows a
clear gain on the machine in question (docs/performance.md holds the measured tables).

    python bench/flags.py [--batch 32] [--repeats 3] [--threads 1] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import best_time, print_table, shared_dir

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
    args = parser.parse_args()
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
        model = accelerate(hetpure.DiffusersEps.from_pretrained(path).to(dev).eval(), **flags)
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

        bwd = best_time(forward_backward, args.repeats)
        base_fwd, base_bwd = base_fwd or fwd, base_bwd or bwd
        name = ", ".join(f"{k}={v}" if v is not True else k for k, v in flags.items()) or "plain"
        rows.append([name, f"{first:.1f}", f"{1000 * fwd / args.batch:.1f}", f"{base_fwd / fwd:.2f}",
                     f"{1000 * bwd / args.batch:.1f}", f"{base_bwd / bwd:.2f}",
                     f"{(out.float() - reference).abs().max().item():.1e}"])
    print(f"device {dev}, threads {torch.get_num_threads()}, batch {args.batch}, torch {torch.__version__}")
    print_table(["flags", "first call s", "fwd ms/img", "fwd speed-up", "fwd+bwd ms/img", "fwd+bwd speed-up",
                 "max |Δε|"], rows)


if __name__ == "__main__":
    main()

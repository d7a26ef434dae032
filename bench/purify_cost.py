"""Per-image purification time at batch 32 against the ε-model-call floor.

floor = (ε-model calls of one purification) × (time of one ε-model call at that batch).
Target: measured ≤ 1.05 × floor. Uses the shared CIFAR-10 DDPM and ResNet-20.

    python bench/purify_cost.py [--batch 32] [--ddim-steps 100] [--repeats 3] [--device cpu|cuda]

Timings wait for the device (synchronize); on CUDA the table adds each purifier's peak tensor memory.
"""

from __future__ import annotations

import argparse

import torch
from _common import best_time, fmt_mb, peak_cuda_mb, print_table, reset_peak_memory, shared_dir, synchronize

import hetpure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--ddim-steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    shared = shared_dir()
    eps = hetpure.DiffusersEps.from_pretrained(shared / "models/ddpm-cifar10-tiny").to(dev)
    clf = hetpure.load_classifier("cifar_resnet20", shared / "models/resnet20-cifar10/model.safetensors").to(dev)
    x = torch.rand(args.batch, 3, 32, 32).to(dev)
    t = torch.full((args.batch,), 150.0, device=dev)
    xt = torch.randn(args.batch, 3, 32, 32).to(dev)
    with torch.no_grad():
        call = best_time(lambda: (eps(xt, t), synchronize(dev)), args.repeats)
        rows = []
        configs = [
            ("heterogeneous", hetpure.HeterogeneousPurifier(
                eps, clf, hetpure.PurifyConfig(t_s=0.1, t_l=0.2, tau=0.9, ddim_steps=args.ddim_steps))),
            ("heterogeneous U=0", hetpure.HeterogeneousPurifier(
                eps, clf, hetpure.PurifyConfig(t_s=0.1, t_l=0.2, tau=0.9, resample_steps=0,
                                               ddim_steps=args.ddim_steps))),
            ("uniform ddim t*=0.2", hetpure.UniformPurifier(
                eps, clf, hetpure.PurifyConfig(t_star=0.2, ddim_steps=args.ddim_steps))),
        ]
        for name, pur in configs:
            g = torch.Generator(device=dev).manual_seed(0)
            reset_peak_memory(dev)
            seconds = best_time(lambda pur=pur, g=g: (pur.purify(x, generator=g), synchronize(dev)), args.repeats)
            floor = pur.eps_calls() * call
            rows.append([name, pur.eps_calls(), f"{1000 * seconds / args.batch:.2f}",
                         f"{1000 * floor / args.batch:.2f}", f"{seconds / floor:.3f}",
                         "ok" if seconds <= 1.05 * floor else "ABOVE TARGET", fmt_mb(peak_cuda_mb(dev))])
    print(f"device {dev}, batch {args.batch}, ε-model call {1000 * call:.1f} ms ({1000 * call / args.batch:.2f} "
          f"ms/image), threads {torch.get_num_threads()}")
    print_table(["purifier", "ε calls", "ms/image", "floor ms/image", "ratio", "target ≤ 1.05", "peak CUDA MB"],
                rows)


if __name__ == "__main__":
    main()

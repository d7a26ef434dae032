"""hetpure against the official algorithm's loop: images/s for purify, predict (R votes) and one attack iteration.

The "official loop" is re-created here from the published description of the authors' code: one
purification per vote, run one after another; the mask is recomputed for every purification; the
schedule's coefficients are rebuilt from numpy (float64 cumprod, then torch.tensor) at every sampler step;
EOT samples of the attack gradient are separate forward/backward passes. hetpure batches the R votes (or
EOT samples) into one B·R batch, computes the mask once per image and keeps coefficients as Python floats.
Both run the same heterogeneous sampler (t_s 0.1, t_l 0.2, τ 0.9, U 3) with the same ε-model.

floor = ε-model calls × (time of one ε-model call at the batch the method uses) / images.

    python bench/speed.py [--ddim-steps 100] [--runs 8] [--batches 1 4 32] [--eot 4] [--device cpu]
                          [--max-batch 32] [--cudnn-benchmark] [--tf32]

``--max-batch`` is hetpure's ``PurifyConfig.max_batch`` (images per ε-model call when the R votes are batched;
raise it on a GPU). On CUDA every row also reports the peak memory allocated by tensors.
"""

from __future__ import annotations

import argparse

import numpy as np
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
from hetpure.attacks import PGD, cross_entropy, defended_model
from hetpure.schedule import ddim_timesteps

T_S, T_L, TAU, U = 0.1, 0.2, 0.9, 3


class OfficialLoop:
    """The sequential reference: numpy coefficients per step, one purification per vote."""

    def __init__(self, eps: hetpure.EpsModel, clf: torch.nn.Module, ddim_steps: int) -> None:
        self.eps, self.clf, self.ddim_steps = eps, clf, ddim_steps
        self.betas = np.linspace(1e-4, 2e-2, 1000, dtype=np.float64)

    def _alpha_bar(self, t: int, device: torch.device) -> torch.Tensor:
        return torch.tensor(np.cumprod(1.0 - self.betas)[t], dtype=torch.float32, device=device)

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        dev = x.device
        m = hetpure.binarize(hetpure.energy_map(self.clf, x, self.clf.mask_layers), TAU)
        x0 = x * 2 - 1
        ts = ddim_timesteps(1000, self.ddim_steps, T_L)
        a0 = self._alpha_bar(ts[0], dev)
        xt = a0.sqrt() * x0 + (1 - a0).sqrt() * torch.randn_like(x0)
        for t, s in zip(ts[:-1], ts[1:]):
            if s >= T_S * 1000:
                at = self._alpha_bar(t, dev)
                known = at.sqrt() * x0 + (1 - at).sqrt() * torch.randn_like(x0)
                xt = m * xt + (1 - m) * known
                for u in range(U):
                    beta = torch.tensor(self.betas[t + u + 1], dtype=torch.float32, device=dev)
                    xt = (1 - beta).sqrt() * xt + beta.sqrt() * torch.randn_like(xt)
                t = t + U
            at, as_ = self._alpha_bar(t, dev), self._alpha_bar(s, dev)
            e = self.eps(xt, torch.full((x.shape[0],), float(t), device=dev))
            pred_x0 = (xt - (1 - at).sqrt() * e) / at.sqrt()
            xt = as_.sqrt() * pred_x0 + (1 - as_).sqrt() * e
        return ((xt + 1) / 2).clamp(0, 1)

    def predict(self, x: torch.Tensor, runs: int) -> torch.Tensor:
        labels = []
        for _ in range(runs):
            with torch.no_grad():
                labels.append(self.clf(self.purify(x)).argmax(1))
        return torch.stack(labels).mode(0).values

    def attack_gradient(self, x: torch.Tensor, y: torch.Tensor, eot: int) -> torch.Tensor:
        grad = torch.zeros_like(x)
        for _ in range(eot):
            xr = x.clone().requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(self.clf(self.purify(xr)), y, reduction="sum")
            grad += torch.autograd.grad(loss, xr)[0]
        return grad / eot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ddim-steps", type=int, default=100)
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 32])
    parser.add_argument("--eot", type=int, default=4)
    parser.add_argument("--attack-batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-batch", type=int, default=None, help="PurifyConfig.max_batch (default 32)")
    add_backend_flags(parser)
    args = parser.parse_args()
    backend = apply_backend_flags(args)
    dev = torch.device(args.device)
    shared = shared_dir()
    eps = hetpure.DiffusersEps.from_pretrained(shared / "models/ddpm-cifar10-tiny").to(dev).eval()
    clf = hetpure.load_classifier("cifar_resnet20", shared / "models/resnet20-cifar10/model.safetensors").to(dev).eval()
    for model in (eps, clf):  # frozen, as in an evaluation: attacks need input gradients only
        model.requires_grad_(False)
    cfg = hetpure.PurifyConfig(t_s=T_S, t_l=T_L, tau=TAU, resample_steps=U, ddim_steps=args.ddim_steps, runs=args.runs)
    if args.max_batch is not None:
        cfg = cfg.replace(max_batch=args.max_batch)
    ours = hetpure.HeterogeneousPurifier(eps, clf, cfg)
    official = OfficialLoop(eps, clf, args.ddim_steps)
    if not np.allclose(official.betas, np.asarray(eps.schedule.betas)):  # the comparison must be like for like
        raise SystemExit("the shared DDPM's schedule is not linear 1e-4…2e-2; update OfficialLoop.betas")
    calls = ours.eps_calls()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    call_cache: dict[int, float] = {}

    def call_time(batch: int) -> float:
        if batch not in call_cache:
            xt, t = torch.randn(batch, 3, 32, 32, device=dev), torch.full((batch,), 150.0, device=dev)
            with torch.no_grad():
                call_cache[batch] = best_time(lambda: (eps(xt, t), sync()), args.repeats)
        return call_cache[batch]

    def timed(fn) -> float:  # noqa: ANN001
        reset_peak_memory(dev)
        return best_time(lambda: (fn(), sync()), args.repeats)

    rows = []
    g = torch.Generator(device=dev).manual_seed(0)
    for b in args.batches:
        x = torch.rand(b, 3, 32, 32, device=dev)
        with torch.no_grad():
            t_ours = timed(lambda x=x: ours.purify(x, generator=g))
            peak = peak_cuda_mb(dev)
            t_off = timed(lambda x=x: official.purify(x))
        floor = calls * call_time(b)
        rows.append([f"purify B={b}", f"{b / t_off:.2f}", f"{b / t_ours:.2f}", f"{t_off / t_ours:.2f}",
                     f"{b / floor:.2f}", fmt_mb(peak), ""])
    for b in args.batches:
        x = torch.rand(b, 3, 32, 32, device=dev)
        t_ours = timed(lambda x=x: ours.predict(x, generator=g))
        peak = peak_cuda_mb(dev)
        t_off = timed(lambda x=x: official.predict(x, args.runs))
        batch = min(b * args.runs, cfg.max_batch)
        floor = calls * args.runs * b / batch * call_time(batch)
        target = {1: 1.5, 4: 1.25}.get(b)
        verdict = "" if target is None else ("ok" if t_off / t_ours >= target else "BELOW") + f" (≥{target}×)"
        rows.append([f"predict B={b} R={args.runs}", f"{b / t_off:.2f}", f"{b / t_ours:.2f}",
                     f"{t_off / t_ours:.2f}", f"{b / floor:.2f}", fmt_mb(peak), verdict])
    b = args.attack_batch
    x, y = torch.rand(b, 3, 32, 32, device=dev), torch.arange(b, device=dev) % 10
    surrogate = hetpure.HeterogeneousPurifier(eps, clf, cfg.replace(ddim_steps=10))
    model = defended_model(ours, clf, "surrogate", 10)
    model.generator = g
    attack = PGD(steps=1, eot=args.eot)
    t_ours = timed(lambda: attack.gradient(model, x, y, cross_entropy))
    peak = peak_cuda_mb(dev)
    official.ddim_steps = 10
    t_off = timed(lambda: official.attack_gradient(x, y, args.eot))
    sur_calls = surrogate.eps_calls()
    batch = b * args.eot
    floor = 3 * sur_calls * call_time(batch)  # forward + backward ≈ 3 forward calls
    rows.append([f"attack iteration B={b} EOT {args.eot} (S=10)", f"{b / t_off:.2f}", f"{b / t_ours:.2f}",
                 f"{t_off / t_ours:.2f}", f"{b / floor:.2f}", fmt_mb(peak), "floor: fwd+bwd ≈ 3 calls"])
    print(f"device {dev} ({backend}), max_batch {cfg.max_batch}, threads {torch.get_num_threads()}, "
          f"S = {args.ddim_steps} ({calls} ε-calls per "
          f"purification), ε-call ms/image at batch: "
          + ", ".join(f"{k}: {1000 * v / k:.1f}" for k, v in sorted(call_cache.items())))
    print_table(["task", "official loop img/s", "hetpure img/s", "speed-up", "floor img/s", "hetpure peak CUDA MB",
                 "target"], rows)


if __name__ == "__main__":
    main()

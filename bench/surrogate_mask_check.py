"""Does the S = 10 attack surrogate of heterogeneous noise depend on the mask? (issue #32, item 1)

At the CIFAR-10 setting (t_s 0.1, t_l 0.2, U 3, η 0, T = 1000) the DDIM timesteps at S = 10 are 200, 100, 0.
Only the step 200 → 100 is a stage-1 step (its end, 100, is ≥ t_s·T), and its reset puts the unattended
pixels back to q(x_200 | x_0): the level every pixel already starts at. So the mask can only change *which*
of two independent draws of q(x_200 | x_0) a pixel carries, and the surrogate's output distribution (and,
with zero noise, its output and gradient) is the same for every mask. At S = 100 the stage-1 steps end at
190 … 100 and the resets at t = 190 … 110 keep the unattended pixels near t_s: the mask matters.

This script measures it on real CIFAR-10 test images with the shared tiny DDPM and ResNet-20: max |Δ| of the
purified images ([0, 1] scale) between two masks, with

* ``zero``  noise: every Gaussian draw replaced by zeros (a deterministic run);
* ``fixed`` draws: the same seeded stream of draws for both masks;
* ``tied``  draws: the same stream, except that the reset of the first stage-1 step reuses the start draw
  (so "which of the two draws" no longer differs): at S = 10 every mask must then give the same output.

It also checks that the attack's surrogate ``as_module(ddim_steps=10)`` is this computation, and compares the
input gradient of the cross-entropy through S = 10 and S = 100 for the two masks. With ``--authors PATH`` (a
local checkout of GaozhengPei/Purification; nothing is downloaded and none of its code is in this repository)
it runs the authors' ``PurificationForward.denoise`` too, with the same ε-model (through a two-argument
wrapper), the same masks (its ``get_mask`` is overridden: its hooks name WRN layers) and the same draws (its
draws all go through ``torch.randn_like``, which is patched for the call). If torchvision is not installed, a
stand-in for ``torchvision.transforms.Normalize`` (used only by the overridden ``get_mask``) lets it import.

    python bench/surrogate_mask_check.py                         # hetpure only; writes the JSON
    python bench/surrogate_mask_check.py --authors ../Purification

Writes docs/results/cifar10_surrogate_mask.json and prints the tables in Markdown. About 30 s on one core
(about a minute with ``--authors``), most of it the S = 100 runs.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

from _common import REPO, print_table, shared_dir

T_S, T_L, TAU, U = 0.1, 0.2, 0.9, 3
STEPS = (10, 100)
GRAD_IMAGES = 2
MASK_PAIRS = (("all-ones", "all-zeros"), ("real", "all-ones"), ("real", "all-zeros"))
NOISES = {10: ("zero", "fixed", "tied"), 100: ("zero", "fixed")}  # tied draws matter only at S = 10


def draws(kind: str, seed: int) -> Callable[[Any], Any]:
    """A noise callable: zeros, a seeded stream, or the seeded stream with draw 2 (the first stage-1 reset, in
    hetpure's order and in the authors') equal to draw 1 (the start x_{t_0} ~ q(x_{t_0} | x_0))."""
    import torch

    if kind == "zero":
        return torch.zeros_like
    gen = torch.Generator().manual_seed(seed)
    seen: list[Any] = []

    def noise(like: Any) -> Any:
        if kind == "tied" and len(seen) == 1:
            seen.append(seen[0])
            return seen[0].to(like)
        z = torch.randn(like.shape, generator=gen, dtype=torch.float32).to(like)
        seen.append(z)
        return z

    return noise


def short(ts: list[int]) -> str:
    return ", ".join(map(str, ts)) if len(ts) <= 4 else f"{ts[0]}, {ts[1]}, …, {ts[-2]}, {ts[-1]} ({len(ts)} entries)"


@contextlib.contextmanager
def scratch_cwd() -> Iterator[None]:
    """The authors' denoise writes ./mask.png on every call: run it in a temporary folder."""
    old = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            yield
        finally:
            os.chdir(old)


def checkout_commit(path: Path) -> str | None:
    """The commit of a git checkout (None for a plain folder)."""
    try:
        done = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip() or None


def load_authors(path: Path) -> tuple[Any, list[str]]:
    """Import the authors' purification.py from a local checkout; returns (module, notes)."""
    notes = []
    if not (path / "purification.py").is_file():
        sys.exit(f"--authors: no purification.py in {path}")
    try:
        import torchvision  # noqa: F401
    except ImportError:  # only get_mask uses it, and it is overridden below
        import torch

        class Normalize:
            def __init__(self, mean: list[float], std: list[float]) -> None:
                self.mean, self.std = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]

            def __call__(self, x: Any) -> Any:
                return (x - self.mean.to(x)) / self.std.to(x)

        tv = types.ModuleType("torchvision")
        tv.transforms = types.ModuleType("torchvision.transforms")  # type: ignore[attr-defined]
        tv.transforms.Normalize = Normalize  # type: ignore[attr-defined]
        sys.modules.update({"torchvision": tv, "torchvision.transforms": tv.transforms})  # type: ignore[attr-defined]
        notes.append("torchvision absent: a stand-in transforms.Normalize (used only by the overridden get_mask)")
    sys.path.insert(0, str(path))
    try:
        module = importlib.import_module("purification")
    finally:
        sys.path.remove(str(path))
    return module, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=3, help="CIFAR-10 test images (the first n of the seed-0 subset)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the image subset and of the fixed draws")
    parser.add_argument("--authors", type=Path, default=None,
                        help="local checkout of GaozhengPei/Purification: also run its PurificationForward")
    parser.add_argument("--out", default=str(REPO / "docs/results/cifar10_surrogate_mask.json"))
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F

    import hetpure
    from hetpure.sampling import in_stage_one
    from hetpure.schedule import ddim_timesteps

    torch.set_num_threads(1)
    shared = shared_dir()
    eps = hetpure.DiffusersEps.from_pretrained(shared / "models/ddpm-cifar10-tiny")
    clf = hetpure.load_classifier("cifar_resnet20", shared / "models/resnet20-cifar10/model.safetensors").eval()
    data = hetpure.load_dataset("imagefolder", root=shared / "data/cifar10", split="test", n=args.n, seed=args.seed)
    x = torch.stack([torch.as_tensor(data[i][0]) for i in range(len(data))]).float()
    y = torch.tensor([int(data[i][1]) for i in range(len(data))])

    def purifier(steps: int) -> hetpure.HeterogeneousPurifier:
        cfg = hetpure.PurifyConfig(t_s=T_S, t_l=T_L, tau=TAU, resample_steps=U, eta=0.0, ddim_steps=steps)
        return hetpure.HeterogeneousPurifier(eps, clf, cfg)

    with torch.no_grad():
        real = purifier(10).mask(x)
    masks = {"all-ones": torch.ones_like(real), "all-zeros": torch.zeros_like(real), "real": real}
    T = eps.num_timesteps

    def stage_one(steps: int, t_s: float = T_S, t_l: float = T_L) -> list[list[int]]:
        ts = ddim_timesteps(T, steps, t_l)
        return [[t, s] for t, s in zip(ts[:-1], ts[1:]) if in_stage_one(s, t_s, T)]

    schedule = {steps: {"timesteps": ddim_timesteps(T, steps, T_L), "stage1_steps": stage_one(steps),
                        "eps_calls": purifier(steps).eps_calls()} for steps in STEPS}
    # the mask enters a sampler's output only through a reset below the start level t_0, i.e. from a second
    # stage-1 step on (the first one starts at t_0, where every pixel already is)
    smallest = next(steps for steps in range(1, T + 1) if len(stage_one(steps)) >= 2)
    mask_enters = {"rule": "the mask can change the output only through a second stage-1 step (a reset below t_0)",
                   "smallest_S_at_this_setting": smallest,
                   "mask_free_S_up_to_100": [steps for steps in range(1, 101) if len(stage_one(steps)) < 2],
                   "timesteps_at_smallest_S": ddim_timesteps(T, smallest, T_L),
                   "imagenet_setting_S10": {"t_s": 0.2, "t_l": 0.4, "timesteps": ddim_timesteps(T, 10, 0.4),
                                            "stage1_steps": stage_one(10, 0.2, 0.4)}}

    # --- hetpure ---------------------------------------------------------------------------------------------
    outputs: dict[tuple[str, int, str, str], torch.Tensor] = {}
    with torch.no_grad():
        for steps in STEPS:
            pur = purifier(steps)
            for noise in NOISES[steps]:
                for name, m in masks.items():
                    outputs["hetpure", steps, noise, name] = pur.purify(x, mask=m, noise=draws(noise, args.seed))

    # the attack's surrogate is this computation: same generator → same logits as classifier(purify(S = 10))
    pur100 = purifier(100)
    module = pur100.as_module(ddim_steps=10)
    module.generator = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        via_module = module(x)
        direct = clf(purifier(10).purify(x, generator=torch.Generator().manual_seed(args.seed)))
        ones = clf(purifier(10).purify(x, mask=masks["all-ones"], generator=torch.Generator().manual_seed(args.seed)))
        # "almost uniform t_l": the S = 10 surrogate against uniform DDIM from t* = t_l (200 → 100 → 0), zero noise;
        # the surrogate is DDIM from 203 (the U = 3 forward steps after the reset), and with U = 0 exactly uniform
        uniform = hetpure.UniformPurifier(eps, clf, hetpure.PurifyConfig(t_star=T_L, ddim_steps=10, eta=0.0))
        uni = uniform.purify(x, noise=torch.zeros_like)
        het_u0 = hetpure.HeterogeneousPurifier(eps, clf, purifier(10).config.replace(resample_steps=0))
        vs_uniform = {"U=3": float((outputs["hetpure", 10, "zero", "real"] - uni).abs().max()),
                      "U=0": float((het_u0.purify(x, mask=real, noise=torch.zeros_like) - uni).abs().max())}
        # RePaint's round trips (the ablations' "RePaint r=3" row) reset again after a DDIM step and a re-noising,
        # so at S = 10 its surrogate does contain the mask
        repaint_cfg = purifier(10).config.replace(resample_steps=0, repaint_jumps=3)
        repaint = hetpure.HeterogeneousPurifier(eps, clf, repaint_cfg)
        repaint_diff = float((repaint.purify(x, mask=masks["all-ones"], noise=torch.zeros_like)
                              - repaint.purify(x, mask=masks["all-zeros"], noise=torch.zeros_like)).abs().max())
    surrogate = {"eps_calls": module.eps_calls(),
                 "max_abs_diff_output_vs_uniform_tl_S10_zero_noise": vs_uniform,
                 "repaint_r3_U0_S10_zero_noise_all_ones_vs_all_zeros": repaint_diff,
                 "max_abs_diff_logits_as_module_vs_purify_S10": float((via_module - direct).abs().max()),
                 "max_abs_diff_logits_real_vs_all_ones_same_generator": float((direct - ones).abs().max())}

    # input gradients of the cross-entropy through the purification (zero noise), all-ones vs all-zeros mask,
    # on the first GRAD_IMAGES images (the backward pass through S = 100 is the slowest part)
    grads = {}
    xg, yg = x[:GRAD_IMAGES], y[:GRAD_IMAGES]
    for steps in STEPS:
        pur = purifier(steps)
        g = {}
        for name in ("all-ones", "all-zeros"):
            xr = xg.clone().requires_grad_(True)
            purified = pur.purify(xr, mask=masks[name][:GRAD_IMAGES], noise=torch.zeros_like)
            loss = F.cross_entropy(clf(purified), yg, reduction="sum")
            (g[name],) = torch.autograd.grad(loss, xr)
        grads[steps] = {"images": int(xg.shape[0]), "max_abs_diff": float((g["all-ones"] - g["all-zeros"]).abs().max()),
                        "max_abs_grad": float(g["all-ones"].abs().max())}

    # --- the authors' code -----------------------------------------------------------------------------------
    authors: dict[str, Any] | None = None
    if args.authors is not None:
        theirs, notes = load_authors(args.authors.resolve())

        class Wrapped(torch.nn.Module):  # their diffusion(x, t) interface: t a float tensor of timestep indices
            def __init__(self) -> None:
                super().__init__()
                self.eps = eps

            def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                return self.eps(x_t, t)

        class GivenMask(theirs.PurificationForward):  # their get_mask hooks WRN / ResNet-50 layers
            fixed_mask: torch.Tensor

            def get_mask(self, x: torch.Tensor) -> torch.Tensor:
                return self.fixed_mask

        their_ts = {}
        for steps in STEPS:
            model = GivenMask(clf=clf, diffusion=Wrapped(), strength_a=T_L, strength_b=T_S, classifier_name="Others",
                              is_imagenet=False, forward_noise_steps=U, threshold=TAU, threshold_percent=0.15,
                              ddim_steps=steps, device=torch.device("cpu"))
            their_ts[steps] = [int(t) for t in model.timesteps]
            for noise in NOISES[steps]:
                for name, m in masks.items():
                    model.fixed_mask = m
                    patched = mock.patch.object(torch, "randn_like", draws(noise, args.seed))
                    with torch.no_grad(), scratch_cwd(), patched:
                        out = model.denoise(x * 2 - 1)
                    outputs["authors", steps, noise, name] = ((out + 1) / 2).clamp(0, 1)
        authors = {"path_given": True, "commit": checkout_commit(args.authors), "notes": notes,
                   "timesteps": {str(s): v for s, v in their_ts.items()},
                   "max_abs_diff_vs_hetpure_zero_noise": {
                       f"S={s} {name}": float((outputs["authors", s, "zero", name]
                                               - outputs["hetpure", s, "zero", name]).abs().max())
                       for s in STEPS for name in masks}}

    # --- tables and JSON -------------------------------------------------------------------------------------
    cases, rows = [], []
    for code in ("hetpure", "authors") if authors else ("hetpure",):
        for steps in STEPS:
            ts = authors["timesteps"][str(steps)] if code == "authors" else schedule[steps]["timesteps"]
            for noise in NOISES[steps]:
                for a, b in MASK_PAIRS:
                    d = (outputs[code, steps, noise, a] - outputs[code, steps, noise, b]).abs()
                    cases.append({"code": code, "S": steps, "noise": noise, "mask_a": a, "mask_b": b,
                                  "max_abs_diff": float(d.max()), "mean_abs_diff": float(d.mean())})
                    rows.append([code, steps, noise, a, b, f"{float(d.max()):.3g}", f"{float(d.mean()):.3g}",
                                 short(ts)])
    print(f"{args.n} CIFAR-10 test images (seed {args.seed}); t_s {T_S}, t_l {T_L}, τ {TAU}, U {U}, η 0; "
          f"real mask: {float(real.mean()):.1%} of the pixels at t_l. |Δ| on the purified images in [0, 1].\n")
    print_table(["code", "S", "noise", "mask A", "mask B", "max abs Δ output", "mean abs Δ", "DDIM timesteps"], rows)
    print()
    print_table(["S", "ε-calls", "stage-1 steps (t → s)",
                 f"max abs Δ ∇ₓ CE, all-ones vs all-zeros, zero noise, {GRAD_IMAGES} images", "max abs ∇ₓ CE"],
                [[s, schedule[s]["eps_calls"], ", ".join(f"{t}→{u}" for t, u in schedule[s]["stage1_steps"]),
                  f"{grads[s]['max_abs_diff']:.3g}", f"{grads[s]['max_abs_grad']:.3g}"] for s in STEPS])
    print(f"\nas_module(ddim_steps=10): {surrogate['eps_calls']} ε-calls; max |Δ| logits against "
          f"classifier(purify(x, ddim_steps=10)) with the same generator: "
          f"{surrogate['max_abs_diff_logits_as_module_vs_purify_S10']:.3g}")
    print(f"smallest S whose sampler contains the mask at t_s {T_S}, t_l {T_L}: {smallest} (timesteps "
          f"{short(mask_enters['timesteps_at_smallest_S'])}); mask-free S ≤ 100: "
          f"{mask_enters['mask_free_S_up_to_100']}; at the authors' ImageNet setting (t_s 0.2, t_l 0.4) "
          f"S = 10 has the stage-1 steps {mask_enters['imagenet_setting_S10']['stage1_steps']}")
    print(f"S = 10 heterogeneous (real mask) against uniform t* = {T_L} at S = 10, zero noise: max |Δ| output "
          f"{vs_uniform['U=3']:.3g} with U = {U}, {vs_uniform['U=0']:.3g} with U = 0")
    print(f"RePaint r = 3 (U = 0) at S = 10, zero noise, all-ones vs all-zeros: max |Δ| output {repaint_diff:.3g}")
    if authors:
        print(f"authors' code at commit {authors['commit']}; timesteps: S = 10 {short(authors['timesteps']['10'])}; "
              f"S = 100 {short(authors['timesteps']['100'])}; notes: {'; '.join(authors['notes']) or 'none'}")
        worst = max(authors["max_abs_diff_vs_hetpure_zero_noise"].values())
        print(f"authors' denoise against hetpure, zero noise, every S and mask: max |Δ| = {worst:.3g}")

    def value(code: str, steps: int, noise: str, a: str = "all-ones", b: str = "all-zeros") -> str:
        key = (code, steps, noise, a, b)
        hit = next(c for c in cases if (c["code"], c["S"], c["noise"], c["mask_a"], c["mask_b"]) == key)
        return f"{hit['max_abs_diff']:.3g}"

    print("\nSentence values (docs/method.md, docs/RESULTS.md):")
    for code in ("hetpure", "authors") if authors else ("hetpure",):
        print(f"- {code}: all-ones vs all-zeros, zero noise: max |Δ| = {value(code, 10, 'zero')} at S = 10, "
              f"{value(code, 100, 'zero')} at S = 100; same fixed draws: {value(code, 10, 'fixed')} at S = 10 "
              f"(tied reset draw: {value(code, 10, 'tied')}), {value(code, 100, 'fixed')} at S = 100; "
              f"real mask vs all-ones, same fixed draws, S = 10: {value(code, 10, 'fixed', 'real', 'all-ones')}")
    print(f"- hetpure: input gradient, all-ones vs all-zeros, zero noise ({GRAD_IMAGES} images): max |Δ| = "
          f"{grads[10]['max_abs_diff']:.3g} at S = 10, {grads[100]['max_abs_diff']:.3g} at S = 100 (largest entry "
          f"{grads[100]['max_abs_grad']:.3g}); against uniform t* = {T_L} at S = 10, zero noise: "
          f"{vs_uniform['U=3']:.3g} (U = {U}), {vs_uniform['U=0']:.3g} (U = 0)")

    record = {
        "what": "max |Δ| of purified images ([0, 1]) between two masks, heterogeneous noise",
        "made_by": "bench/surrogate_mask_check.py",
        "settings": {"t_s": T_S, "t_l": T_L, "tau": TAU, "U": U, "eta": 0.0, "T": T},
        "images": {"dataset": "$HETPURE_SHARED/data/cifar10 test", "n": args.n, "seed": args.seed,
                   "indices": [int(i) for i in data.indices]},
        "models": {"diffusion": "$HETPURE_SHARED/models/ddpm-cifar10-tiny",
                   "classifier": "$HETPURE_SHARED/models/resnet20-cifar10/model.safetensors"},
        "real_mask_fraction": float(real.mean()),
        "schedule": {str(s): v for s, v in schedule.items()},
        "mask_enters": mask_enters,
        "cases": cases,
        "input_gradient_all_ones_vs_all_zeros_zero_noise": {str(s): v for s, v in grads.items()},
        "surrogate_module": surrogate,
        "authors": authors or {"path_given": False},
        "torch": torch.__version__, "machine": platform.machine(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    print(f"\nwrote {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")


if __name__ == "__main__":
    main()

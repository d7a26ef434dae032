"""Device checks of the GPU-readiness fixes on the shared CIFAR-10 models: one table of pass/fail.

Each check exercises on the run's device what the CPU tests can only reach with stand-ins: random masks
drawn with a device generator, a CPU generator with device data, float16 refused and bfloat16 allowed on
gradient paths, chunked and checkpointed gradients (checkpoint without saved RNG states must give the same
gradient), Grad-CAM masks from a frozen classifier, and (CUDA only) CUDA graphs with padded batches under
``no_grad`` next to a differentiated pass. ``bench/gpu_check.sh`` runs it; alone:

    python bench/gpu_checks.py --device cuda      # or --device cpu (CUDA-only checks are skipped)
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import torch
from _common import print_table, shared_dir

import hetpure
import hetpure.devices as devices
from hetpure.attacks import PGD, cross_entropy, defended_model
from hetpure.errors import ConfigError
from hetpure.models.fast import accelerate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    shared = shared_dir()

    def load_eps() -> hetpure.EpsModel:
        return hetpure.DiffusersEps.from_pretrained(shared / "models/ddpm-cifar10-tiny").to(dev).eval()

    eps = load_eps()
    clf = hetpure.load_classifier("cifar_resnet20", shared / "models/resnet20-cifar10/model.safetensors").to(dev)
    clf = clf.eval().requires_grad_(False)
    eps.requires_grad_(False)
    cfg = hetpure.PurifyConfig(t_s=0.1, t_l=0.2, tau=0.9, ddim_steps=20, runs=2, max_batch=8)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(dev)
    y = torch.arange(4, device=dev)
    rows: list[list[str]] = []

    def check(name: str, fn: Callable[[], str], cuda_only: bool = False) -> None:
        if cuda_only and not cuda:
            rows.append([name, "skipped", "CUDA only"])
            return
        start = time.perf_counter()
        try:
            detail = fn()
            rows.append([name, "ok", f"{detail} ({time.perf_counter() - start:.1f} s)"])
        except Exception as exc:  # noqa: BLE001 - every failure goes into the table
            rows.append([name, "FAILED", f"{type(exc).__name__}: {str(exc)[:160]}"])

    def random_mask() -> str:
        pur = hetpure.HeterogeneousPurifier(eps, clf, cfg.replace(mask_source="random"))
        energy = hetpure.HeterogeneousPurifier(eps, clf, cfg).mask(x)
        m = pur.mask(x, generator=torch.Generator(device=dev).manual_seed(0))
        assert m.device.type == dev.type and torch.equal(m.flatten(1).sum(1), energy.flatten(1).sum(1))
        return f"mask on {m.device}, attended counts equal the energy mask's"

    def cpu_generator() -> str:
        pur = hetpure.HeterogeneousPurifier(eps, clf, cfg)
        with torch.no_grad():
            a = pur.purify(x, generator=torch.Generator().manual_seed(1))
            b = pur.purify(x, generator=torch.Generator().manual_seed(1))
        assert torch.equal(a, b) and a.device.type == dev.type
        return "a CPU generator with device data: reproducible, one device generator per call"

    def float16_refused() -> str:
        half = load_eps()
        if cuda:
            half = accelerate(half, autocast="fp16")
        else:
            half = half.half()
        try:
            defended_model(hetpure.HeterogeneousPurifier(half, clf, cfg), clf, "exact")
        except ConfigError as exc:
            assert "float16" in str(exc)
            return "ConfigError: " + str(exc)[:60] + "…"
        raise AssertionError("float16 on a gradient path was not refused")

    def bfloat16_gradient() -> str:
        low = accelerate(load_eps(), autocast="bf16")
        model = defended_model(hetpure.HeterogeneousPurifier(low, clf, cfg), clf, "surrogate", 10)
        grad, _, _ = PGD(steps=1).gradient(model, x, y, cross_entropy)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
        return f"surrogate gradient finite, {float((grad != 0).float().mean()):.2f} of its entries non-zero"

    def chunked_checkpointed() -> str:
        old = devices.LARGE_MODEL_PARAMETERS
        devices.LARGE_MODEL_PARAMETERS = 0  # treat the tiny DDPM as large: chunked by max_batch, checkpointed
        try:
            pur = hetpure.HeterogeneousPurifier(eps, clf, cfg.replace(max_batch=4))
            chunked = defended_model(pur, clf, "surrogate", 10)
        finally:
            devices.LARGE_MODEL_PARAMETERS = old
        plain = pur.as_module(ddim_steps=10, max_batch=4)  # the same chunks (same noise), not checkpointed
        grads, peaks = [], []
        for model in (chunked, plain):
            model.generator = torch.Generator(device=dev).manual_seed(2)
            if cuda:
                torch.cuda.reset_peak_memory_stats(dev)
            grads.append(PGD(steps=1, eot=4, eot_batch=4).gradient(model, x, y, cross_entropy)[0])
            peaks.append(f"{torch.cuda.max_memory_allocated(dev) / 2**20:.0f}" if cuda else "n/a")
        assert chunked.use_checkpoint and chunked.max_batch == 4
        diff = float((grads[0] - grads[1]).abs().max())
        assert diff < 1e-4, f"checkpointed gradient differs from the plain one by {diff:.1e}"
        return (f"chunks of 4: checkpointed = plain gradient (max |Δ| {diff:.1e}); peak CUDA MB {peaks[0]} "
                f"checkpointed vs {peaks[1]} not")

    def gradcam_frozen() -> str:
        pur = hetpure.HeterogeneousPurifier(eps, clf, cfg.replace(mask_source="gradcam"))
        m = pur.mask(x)
        return f"Grad-CAM mask from a frozen classifier, {float(m.mean()):.2f} attended"

    def cuda_graphs() -> str:
        fast = accelerate(load_eps().requires_grad_(False), cuda_graphs=True)
        pur = hetpure.HeterogeneousPurifier(fast, clf, cfg)
        ref = hetpure.HeterogeneousPurifier(eps, clf, cfg)
        worst = 0.0
        for b in (5, 8, 3):
            with torch.no_grad():
                a = pur.purify(x.repeat(2, 1, 1, 1)[:b], generator=torch.Generator(device=dev).manual_seed(b))
                r = ref.purify(x.repeat(2, 1, 1, 1)[:b], generator=torch.Generator(device=dev).manual_seed(b))
            worst = max(worst, float((a - r).abs().max()))
        model = pur.as_module(ddim_steps=10)
        grad, _, _ = PGD(steps=1).gradient(model, x, y, cross_entropy)
        assert torch.isfinite(grad).all() and worst < 1e-3
        return f"batches 5, 8, 3 padded to {fast.pad_batch}: max |Δ| {worst:.1e} vs eager; gradient pass eager"

    check("1 random mask on the device", random_mask)
    check("10 CPU generator, device data", cpu_generator)
    check("5 float16 refused on gradient paths", float16_refused)
    check("5 bfloat16 (autocast) gradient allowed", bfloat16_gradient, cuda_only=True)
    check("3/16 chunked + checkpointed gradient", chunked_checkpointed)
    check("8 Grad-CAM, frozen classifier", gradcam_frozen)
    check("11 CUDA graphs, padded, no_grad only", cuda_graphs, cuda_only=True)
    print(f"device {dev}, torch {torch.__version__}")
    print_table(["check (GPU readiness item)", "result", "detail"], rows)
    if any(r[1] == "FAILED" for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()

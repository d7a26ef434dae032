"""``hetpure demo``: the offline MNIST demonstration with the models embedded in the package.

It attacks held-out digits with PGD-EOT (L∞, ε = 0.3) with gradients through each purifier, and reports
clean and robust accuracy for no defence, uniform purification at t_s and at t_l, and heterogeneous
purification. Each method is one resumable ``hetpure.evaluate`` run under ``OUT/<method>``.
"""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .errors import HetpureError

# The demo's settings: chosen on the training split (see docs/demo.md for the runs behind them).
# max_batch 256: the demo's 28² UNet is cheapest per image at large batches (3.5 ms at 256, 5.0 at 16)
DEMO_PURIFY = {"t_s": 0.2, "t_l": 0.4, "tau": 0.5, "resample_steps": 3, "ddim_steps": 50, "runs": 5,
               "max_batch": 256}
DEMO_ATTACK = {"name": "pgd", "norm": "linf", "eps": 0.3, "step_size": 0.04, "steps": 20, "eot": 2,
               "gradient": "surrogate", "surrogate_ddim_steps": 10}
QUICK_ATTACK = {"steps": 3, "eot": 1}


def assets_dir() -> Path:
    """Folder of the embedded demo models (diffusion model, classifier, held-out digits)."""
    path = Path(str(resources.files("hetpure") / "assets" / "demo"))
    if not (path / "ddpm" / "config.json").exists():
        raise HetpureError(
            f"the embedded demo models are missing from {path}; reinstall hetpure (pip install -e .) "
            "or rebuild them with the commands in docs/demo.md"
        )
    return path


class HeldOutDigits(Dataset):
    """The held-out MNIST test digits shipped with the demo (1×28×28 in [0, 1], int labels)."""

    classes = [str(i) for i in range(10)]

    def __init__(self, n: int) -> None:
        from safetensors.torch import load_file

        data = load_file(str(assets_dir() / "heldout_digits.safetensors"))
        if n < 1:
            raise HetpureError(f"the demo needs at least one digit; use --n >= 1 (got {n})")
        if n > data["images"].shape[0]:
            raise HetpureError(f"the demo ships {data['images'].shape[0]} held-out digits; use --n <= that")
        self.images = data["images"][:n].float() / 255
        self.labels = data["labels"][:n].long()
        self.indices = data["indices"][:n].tolist()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.images[i], int(self.labels[i])


def load_demo_models() -> tuple[Any, torch.nn.Module]:
    """The embedded ε-model (diffusers DDPM trained on t < 400) and the MNIST CNN."""
    from .models.diffusers_eps import DiffusersEps
    from .models.registry import load_classifier

    root = assets_dir()
    eps = DiffusersEps.from_pretrained(root / "ddpm")
    classifier = load_classifier("mnist_cnn", path=root / "classifier.safetensors")
    return eps, classifier


def demo_methods() -> dict[str, dict[str, Any]]:
    p = DEMO_PURIFY
    return {
        "none": {"method": "none"},
        f"uniform t*={p['t_s']}": {"method": "uniform", "t_star": p["t_s"], "ddim_steps": p["ddim_steps"],
                                   "runs": p["runs"], "max_batch": p["max_batch"]},
        f"uniform t*={p['t_l']}": {"method": "uniform", "t_star": p["t_l"], "ddim_steps": p["ddim_steps"],
                                   "runs": p["runs"], "max_batch": p["max_batch"]},
        "heterogeneous": {"method": "heterogeneous", **p},
    }


def run_demo(out: str | Path = "hetpure-demo", n: int = 32, quick: bool = False) -> dict[str, Any]:
    """Run the demo; returns {method: summary}. Rerunning resumes finished work."""
    from .evaluation.runner import evaluate
    from .methods import purifier_from_config
    from .viz import save_grid

    out = Path(out)
    eps_model, classifier = load_demo_models()
    dataset = HeldOutDigits(n)
    attack = {**DEMO_ATTACK, **(QUICK_ATTACK if quick else {})}
    print(f"hetpure demo: {n} held-out MNIST digits, PGD-EOT L∞ ε={attack['eps']} ({attack['steps']} steps × "
          f"EOT {attack['eot']}, gradients through each purifier's {attack['surrogate_ddim_steps']}-step sampler)")
    results: dict[str, Any] = {}
    rows: dict[str, Tensor] = {}
    start = time.perf_counter()
    for label, defense in demo_methods().items():
        folder = out / label.replace(" ", "_").replace("*", "").replace("=", "")
        cfg = {
            "data": {"name": "demo-mnist-heldout", "n": n},
            "classifier": {"name": "mnist_cnn", "path": "embedded"},
            "diffusion": {"kind": "diffusers", "path": "embedded"},
            "defense": defense,
            "attack": attack,
            "run": {"batch_size": 32, "seed": 0, "out": str(folder), "worst_case_k": 3, "save_images": False},
        }
        from .evaluation.config import purify_config, resolve_config

        resolved = resolve_config(cfg)
        purifier = purifier_from_config(eps_model, classifier, defense["method"], purify_config(resolved["defense"]))
        print(f"\n== {label} ==")
        results[label] = evaluate(cfg, components=(dataset, classifier, purifier))
        rows.update(_figure_rows(label, dataset, classifier, purifier, resolved, rows))
    table = _table(results)
    print("\n" + table)
    save_grid(rows, out / "demo.png", scale=2)
    (out / "summary.md").write_text("# hetpure demo\n\n" + table + "\n\nFigure: demo.png\n")
    (out / "summary.json").write_text(json.dumps({k: {key: v[key] for key in (
        "clean_accuracy", "robust_accuracy", "robust_accuracy_worst_case", "n", "eps_calls")}
        for k, v in results.items()}, indent=2))
    print(f"\nfinished in {time.perf_counter() - start:.0f} s; outputs in {out.resolve()}: summary.md, "
          "summary.json, demo.png and one folder per method (records.jsonl, summary.md)")
    return results


def _figure_rows(label: str, dataset: HeldOutDigits, classifier: torch.nn.Module, purifier: Any,
                 cfg: dict[str, Any], rows: dict[str, Tensor]) -> dict[str, Tensor]:
    """Original / adversarial / mask / purified rows for the first 8 digits."""
    from .attacks import defended_model, make_attack
    from .evaluation.runner import _attack_kwargs

    x = dataset.images[:8]
    y = dataset.labels[:8]
    g = torch.Generator().manual_seed(0)
    a = cfg["attack"]
    attack = make_attack(a["name"], **_attack_kwargs(a, g))
    model = defended_model(purifier, classifier, a["gradient"], a["surrogate_ddim_steps"])
    if hasattr(model, "generator"):
        model.generator = g
    x_adv = attack(model, x, y)
    new: dict[str, Tensor] = {}
    if "original" not in rows:
        new["original"] = x
    new[f"adversarial ({label})"] = x_adv
    if purifier is not None:
        with torch.no_grad():
            if hasattr(purifier, "mask"):
                new["mask"] = purifier.mask(x_adv)
            new[f"purified ({label})"] = purifier.purify(x_adv, generator=torch.Generator().manual_seed(1))
    return new


def _table(results: dict[str, Any]) -> str:
    lines = [
        "| defence | clean accuracy | robust accuracy (majority vote) | robust (worst case) | ε calls / purification |",
        "|---|---|---|---|---|",
    ]
    for label, s in results.items():
        lines.append(f"| {label} | {100 * s['clean_accuracy']:.1f}% | {100 * s['robust_accuracy']:.1f}% | "
                     f"{100 * s['robust_accuracy_worst_case']:.1f}% | {s['eps_calls']['defence_per_purification']} |")
    return "\n".join(lines)

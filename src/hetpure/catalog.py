"""What is available by name (``hetpure list``), and name checks that suggest the closest valid names.

:func:`catalog` lists classifiers, datasets, ε-model kinds, defence methods, attacks and presets with one line each;
:func:`check_names` refuses an unknown name in a config (classifier, dataset, preset) with the closest
valid ones, before any model or data is loaded.
"""

from __future__ import annotations

from typing import Any

from .errors import ConfigError, HetpureError
from .evaluation.config import suggest

#: The categories of :func:`catalog`, in display order.
CATEGORIES: tuple[str, ...] = ("classifiers", "datasets", "eps-models", "methods", "attacks", "presets")

_EPS_MODELS = {
    "diffusers": "a diffusers UNet2DModel folder (config.json + weights + scheduler_config.json), "
                 "e.g. $HETPURE_SHARED/models/ddpm-cifar10-tiny",
    "adm": "guided-diffusion ADM checkpoints (OpenAI's 256x256_diffusion_uncond.pt; docs/checkpoints.md)",
    "ncsnpp": "score_sde NCSN++ VP checkpoints (DiffPure's CIFAR-10 checkpoint_8.pth; docs/checkpoints.md)",
}
_ATTACKS = {
    "none": "no attack: clean accuracy only",
    "fgsm": "one step of size ε (a smoke test, not an evaluation)",
    "pgd": "PGD-EOT on the cross-entropy, final iterate (the paper's protocol)",
    "apgd-ce": "Auto-PGD with EOT on the cross-entropy (Croce & Hein 2020)",
    "apgd-dlr": "Auto-PGD with EOT on the DLR loss (Croce & Hein 2020)",
    "mask-pgd": "PGD-EOT that puts its perturbation where heterogeneous purification adds little noise",
    "lowfreq-pgd": "PGD-EOT on a coarse grid upsampled to the image (low frequencies survive noising)",
    "diffattack": "DiffAttack (Kang et al. 2023): APGD on the classifier loss + λ × deviated-reconstruction loss "
                  "along the reverse chain",
    "diffhammer": "DiffHammer (Wang et al. 2024): N purifications, EM weights of the shared vulnerability, one grafted "
                  "backward pass, APGD steps",
}
_METHODS = {
    "none": "the bare classifier (no purification)",
    "uniform": "uniform noise from t_star, DDIM or ancestral DDPM steps (DiffPure-style discrete baseline)",
    "heterogeneous": "heterogeneous noise: attended pixels from t_l, the rest from t_s (Pei et al., CVPR 2025)",
    "diffpure": "DiffPure (Nie et al., ICML 2022): reverse VP-SDE from t_star, sde_steps Euler–Maruyama steps; "
                "attack.gradient adjoint gives its torchsde adjoint",
    "gdmp": "GDMP (Wang et al. 2022): gdmp_iterations guided DDPM chains from t_star, gdmp_guidance mse or ssim",
}
_LABEL_SETS = {"cifar10": 10, "mnist": 10, "imagenet": 1000}


def _mask_layers(name: str) -> str:
    """The default mask layers of a classifier, built on the meta device (no memory, no weights)."""
    import torch

    from .models.registry import load_classifier

    try:
        with torch.device("meta"):
            model = load_classifier(name)
    except HetpureError as exc:  # e.g. torchvision missing
        return f"mask layers: unknown here ({str(exc).split(':')[0]})"
    except Exception:  # a factory that cannot build on the meta device
        return "mask layers: unknown until loaded"
    return f"mask layers {', '.join(getattr(model, 'mask_layers', None) or ['(none)'])}"


def _classifiers() -> list[tuple[str, str]]:
    from .models.registry import describe_classifier, list_classifiers

    rows = []
    for name in list_classifiers():
        spec = describe_classifier(name)
        size = "×".join(map(str, spec.input_shape)) if spec.input_shape else "any size"
        classes = (f"{_LABEL_SETS[spec.label_set]} classes ({spec.label_set})" if spec.label_set in _LABEL_SETS
                   else "classes: from its weights")
        rows.append((name, f"{size}, {classes}, {_mask_layers(name)} — {spec.description}"))
    return rows


def _datasets() -> list[tuple[str, str]]:
    from . import data

    classes = {"cifar10": data.Cifar10Dataset, "imagefolder": data.ImageFolderDataset, "svhn": data.SvhnDataset,
               "imagenet": data.ImageNetDataset, "mnist5k": data.Mnist5kDataset}
    rows = []
    for name in data.list_datasets():
        doc = (getattr(classes.get(name), "__doc__", None) or "").strip().splitlines()
        rows.append((name, doc[0].replace("``", "") if doc else ""))
    return rows


def _eps_models() -> list[tuple[str, str]]:
    from .models.loading import EPS_MODEL_KINDS

    return [(kind, _EPS_MODELS.get(kind, "")) for kind in EPS_MODEL_KINDS]


def _methods() -> list[tuple[str, str]]:
    from .config import METHODS

    return [(name, _METHODS.get(name, "")) for name in METHODS]


def _attacks() -> list[tuple[str, str]]:
    from .attacks import ATTACKS

    return [(name, _ATTACKS.get(name, "")) for name in ("none", *ATTACKS)]


def _presets() -> list[tuple[str, str]]:
    from .presets import get_preset, list_presets

    rows = []
    for name in list_presets():
        p = get_preset(name)
        d, a = p.get("defense", {}), p.get("attack", {})
        select = f"top-p {d['top_p']}" if d.get("top_p") is not None else f"τ {d.get('tau')}"
        data = p.get("data", {})
        rows.append((name, (
            f"{data.get('name')} {data.get('split')} n={data.get('n')}, {p.get('classifier', {}).get('name')} + "
            f"{p.get('diffusion', {}).get('kind')}; t_s {d.get('t_s')} / t_l {d.get('t_l')}, {select}, "
            f"U {d.get('resample_steps')}, S {d.get('ddim_steps')}, R {d.get('runs')}, max_batch {d.get('max_batch')}; "
            f"attack {a.get('name')} {a.get('steps')}×EOT {a.get('eot')}, ε {a.get('eps', 0):.4g}"
        )))
    return rows


_BUILDERS = {"classifiers": _classifiers, "datasets": _datasets, "eps-models": _eps_models, "methods": _methods,
             "attacks": _attacks, "presets": _presets}


def catalog(category: str | None = None) -> dict[str, list[tuple[str, str]]]:
    """``{category: [(name, one-line description), ...]}`` for one category of :data:`CATEGORIES`, or all."""
    if category is None:
        return {c: _BUILDERS[c]() for c in CATEGORIES}
    if category not in _BUILDERS:
        raise ConfigError(f"unknown list {category!r}{suggest(category, list(CATEGORIES))}; "
                           f"choose one of {', '.join(CATEGORIES)}")
    return {category: _BUILDERS[category]()}


def format_catalog(entries: dict[str, list[tuple[str, str]]]) -> str:
    """The listing as text: a heading per category, then ``name  description`` lines."""
    lines: list[str] = []
    for category, rows in entries.items():
        if lines:
            lines.append("")
        lines.append(f"{category}:")
        width = max((len(name) for name, _ in rows), default=0)
        lines += [f"  {name.ljust(width)}  {text}".rstrip() for name, text in rows]
    return "\n".join(lines)


def _check(kind: str, name: Any, valid: list[str], fix: str) -> None:
    if name is not None and name not in valid:
        raise ConfigError(f"unknown {kind} {name!r}{suggest(str(name), valid)}; available: {', '.join(valid)}; "
                          f"{fix}")


def check_preset(config: dict[str, Any]) -> None:
    """Refuse an unknown top-level ``preset`` of a raw config, suggesting the closest preset names."""
    from .presets import list_presets

    if isinstance(config, dict) and config.get("preset") is not None:
        _check("preset", str(config["preset"]), list_presets(), "see `hetpure list presets`")


def check_names(cfg: dict[str, Any], data: bool = True) -> None:
    """Refuse unknown classifier and (when ``data``) dataset names of a resolved config, with suggestions."""
    from .data import list_datasets
    from .models.registry import list_classifiers

    _check("classifier", cfg["classifier"]["name"], list_classifiers(), "see `hetpure list classifiers`")
    if data:
        name = cfg["data"]["name"]
        _check("dataset", None if name is None else str(name).lower(), list_datasets(),
               "see `hetpure list datasets`")

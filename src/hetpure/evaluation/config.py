"""The evaluation config's schema: one pydantic (v2) model per section, strict types, ranges, and errors that
name the key and the fix in the spelling the user typed (``--set attack.eps=0.0313725``).

Strict means: booleans are booleans (``"false"`` is refused, never read as true), integers are integers
(``1.5`` and ``true`` are refused), numbers are numbers (``"8/255"`` is refused). Whole numbers are
accepted where a float is expected. :func:`validate_config` checks a merged config before any model work and
returns it with normalised types; :func:`config_reference_markdown` renders the reference table that
docs/evaluation.md holds.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from ..config import PurifyConfig
from ..errors import ConfigError
from ..yamlio import YAML11_BOOLEANS
from .identity import expand_path

_STRICT = ConfigDict(extra="forbid", strict=True)
Unit = float


class DataSection(BaseModel):
    model_config = _STRICT
    name: str | None = Field(None, description="cifar10, imagefolder, svhn, imagenet or mnist5k (required)")
    root: str | None = Field(None, description="folder of the data (`$HETPURE_SHARED/…` allowed)")
    split: str = Field("test", description="split folder or name")
    n: int | None = Field(None, ge=1, description="a seeded random subset of n images (all when null)")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of the subset draw")
    download: bool = Field(False, description="fetch the dataset when missing (needs the internet)")
    options: dict[str, Any] | None = Field(None, description="dataset keyword options (resize, mode, …)")
    survivors_of: list[str] | None = Field(
        None, description="attack only the images still robust in every listed run folder (same data and defence)")
    survivors_clean: Literal["each", "first"] = Field(
        "each", description="survivors_of: each listed run's own clean evaluation, or the first full run's "
                            "(combine's rule)")


class ClassifierSection(BaseModel):
    model_config = _STRICT
    name: str | None = Field(None, description="a classifier of `hetpure list classifiers` (required)")
    path: str | None = Field(None, description="weights file (safetensors or torch)")
    trust_pickle: bool = Field(False, description="allow full unpickling of a torch file (runs its code)")
    mask_layers: list[str] | None = Field(None, description="layers whose activation energy builds the mask")
    options: dict[str, Any] | None = Field(None, description="classifier keyword options")


class DiffusionSection(BaseModel):
    model_config = _STRICT
    kind: Literal["diffusers", "adm", "ncsnpp"] = Field("diffusers", description="ε-model family")
    path: str | None = Field(None, description="checkpoint file or diffusers folder")
    config: str | dict[str, Any] | None = Field(None, description="architecture (mapping or JSON/YAML file)")
    dtype: Literal["float32", "fp32", "float", "float16", "fp16", "half", "bfloat16", "bf16"] | None = Field(
        None, description="ε-model dtype")
    trust_pickle: bool = Field(False, description="allow full unpickling of a torch checkpoint")
    accelerate: dict[str, Any] | None = Field(None, description="speed-up flags, e.g. {channels_last: true}")


class DefenseSection(BaseModel):
    model_config = _STRICT
    method: Literal["none", "uniform", "heterogeneous", "diffpure", "gdmp"] = Field(
        "heterogeneous", description="the defence (diffpure, gdmp: the peers, from t_star)")
    t_s: Unit = Field(0.1, ge=0, le=1, description="noise level of unattended pixels (fraction of T)")
    t_l: Unit = Field(0.2, ge=0, le=1, description="noise level of attended pixels")
    tau: Unit | None = Field(0.9, ge=0, le=1, description="mask threshold on the energy map")
    top_p: Unit | None = Field(None, gt=0, le=1, description="mask the top p fraction instead (wins over tau)")
    resample_steps: int = Field(3, ge=0, description="U: single forward steps after each mixing")
    repaint_jumps: int = Field(1, ge=1, description="RePaint round trips per step (1 = the paper)")
    ddim_steps: int = Field(500, ge=1, description="S: nominal DDIM steps")
    eta: float = Field(0.0, ge=0, description="DDIM η")
    runs: int = Field(20, ge=1, description="R: purifications per majority vote")
    t_star: Unit | None = Field(None, gt=0, le=1, description="uniform, diffpure and gdmp noise level")
    sampler: Literal["ddim", "ddpm"] = Field("ddim", description="uniform sampler")
    levels: Literal["binary", "graded"] = Field("binary", description="binary mask or graded start levels")
    tau_lo: Unit | None = Field(None, ge=0, le=1, description="graded: energy at which levels start to rise")
    tau_hi: Unit | None = Field(None, ge=0, le=1, description="graded: energy of full t_l")
    mask_source: Literal["energy", "gradcam", "random", "all", "none"] = Field("energy", description="mask")
    max_batch: int = Field(32, ge=1, description="images per ε-model call when R runs are batched")
    resize: bool = Field(False, description="resize images to the diffusion model's size and back")
    sde_steps: int = Field(100, ge=1, description="diffpure: Euler–Maruyama steps from t_star (DiffPure: 100)")
    gdmp_guidance: Literal["mse", "ssim"] = Field("mse", description="gdmp: distance the guidance reduces")
    gdmp_scale: float = Field(28687.5, ge=0, description="gdmp: guidance scale s per image (docs/method.md)")
    gdmp_iterations: int = Field(4, ge=1, description="gdmp: purification iterations (GDMP: 4)")


class AttackSection(BaseModel):
    model_config = _STRICT
    name: Literal["none", "fgsm", "pgd", "apgd-ce", "apgd-dlr", "mask-pgd", "lowfreq-pgd", "diffattack", "diffhammer",
                  "saved"] = Field(
        "pgd", description="the attack (saved: replay a run folder's saved x_adv, as `hetpure rescore` does)")
    norm: Literal["linf", "l2"] = Field("linf", description="threat model")
    eps: float | None = Field(None, gt=0, description="radius on [0, 1] images (L∞ 8/255 = 0.0313725)")
    step_size: float | None = Field(None, gt=0, description="step (default from eps)")
    steps: int = Field(40, ge=1, description="iterations")
    eot: int = Field(1, ge=1, description="EOT samples per gradient")
    gradient: Literal["surrogate", "exact", "bpda", "adjoint"] = Field(
        "surrogate", description="how gradients flow (adjoint: diffpure only, torchsde)")
    surrogate_ddim_steps: int = Field(10, ge=1, description="S of the surrogate the attack differentiates")
    random_start: bool = Field(False, description="start at a random point of the ball")
    eot_batch: int = Field(256, ge=1, description="images per differentiated chunk")
    mask_mode: Literal["restrict", "weight"] = Field("restrict", description="mask-pgd mode")
    attention_weight: float = Field(0.0, ge=0, description="mask-pgd: weight of the attention term")
    grid: int = Field(8, ge=1, description="lowfreq-pgd: perturbation grid")
    upsample: Literal["bilinear", "nearest"] = Field("bilinear", description="lowfreq-pgd upsampling")
    keep: Literal["last", "best", "first_broken"] = Field(
        "last", description="pgd, apgd-*, diffattack, diffhammer: the attack's own rule, its highest-loss iterate, or "
        "the first iterate a fresh defended evaluation gets wrong (MEFA)")
    keep_every: int = Field(1, ge=1, description="first_broken: judge every k-th iterate (and the last)")
    diffattack_weight: float = Field(1.0, ge=0, description="diffattack: λ of the deviated-reconstruction loss")
    diffattack_every: int = Field(1, ge=1, description="diffattack: the loss at every k-th reverse state")
    diffattack_loss: Literal["ce", "dlr"] = Field("ce", description="diffattack: classifier loss")
    diffhammer_samples: int = Field(10, ge=1, description="diffhammer: N purifications per iteration")
    diffhammer_k: float = Field(5.0, ge=0, description="diffhammer: sharpness k of the EM weights σ(k·…)")
    diffhammer_em_steps: int = Field(5, ge=0, description="diffhammer: EM iterations per attack iteration")
    diffhammer_loss: Literal["cw", "ce", "dlr"] = Field("cw", description="diffhammer: classifier loss (cw: margin)")
    through: dict[str, Any] | None = Field(None, description="another pipeline to attack (defense keys)")
    checkpoint: Literal["auto", "always", "never"] = Field(
        "auto", description="exact gradient: per-step checkpointing (auto: only when the graph exceeds the budget)")
    memory_budget_gb: float = Field(8.0, gt=0, description="auto: largest autograd graph kept whole (GB)")
    source: str | None = Field(None, description="saved: the run folder whose adversarial examples are replayed")
    slot: int = Field(0, ge=0, description="saved: which attack of the source run's ensemble (0 = the first)")

    @field_validator("eps")
    @classmethod
    def _radius(cls, eps: float | None, info: ValidationInfo) -> float | None:
        if eps is not None and info.data.get("norm") == "linf" and eps > 1:
            raise ValueError(
                f"{eps:g} is an L∞ radius above 1 on [0, 1] images; it looks like 0–255 units: for "
                f"{eps:g}/255 write --set attack.eps={eps / 255:.7f}"
            )
        return eps


class RunSection(BaseModel):
    model_config = _STRICT
    batch_size: int = Field(16, ge=1, description="images per batch (one records append each)")
    device: str = Field("cpu", description="cpu, cuda, cuda:1, …")
    seed: int = Field(0, ge=-(2**63), le=2**64 - 1, description="seed of every random stream")
    out: str = Field("runs/eval", description="output folder")
    worst_case_k: int = Field(10, ge=1, description="K defended evaluations of each adversarial image")
    save_images: bool = Field(True, description="write examples.png")
    sanity: bool = Field(False, description="run the Carlini et al. sanity checks")
    sanity_n: int = Field(16, ge=1, description="probe images of the sanity checks")
    strict: bool = Field(False, description="fail when a sanity check fails")
    progress: bool = Field(True, description="progress bar")
    ties: Literal["wrong", "lowest"] = Field(
        "wrong", description="a majority vote whose top count the true label shares: wrong, or the lowest label")
    ensemble: Literal["survivors", "all"] = Field(
        "survivors", description="a list of attacks: each later attack runs on the images still robust, or on all")
    save_adversarial: bool = Field(True, description="save each batch's x_adv (safetensors shards) for rescore")
    eot_diagnostic: bool = Field(True, description="measure the agreement of two halves of the EOT gradient")
    dist_timeout_minutes: float | None = Field(
        None, gt=0, description="torchrun: barrier timeout (null: $HETPURE_DIST_TIMEOUT_MINUTES, else 1440)")


SECTIONS: dict[str, type[BaseModel]] = {
    "data": DataSection, "classifier": ClassifierSection, "diffusion": DiffusionSection,
    "defense": DefenseSection, "attack": AttackSection, "run": RunSection,
}


def defaults() -> dict[str, dict[str, Any]]:
    """Every section's defaults as plain dicts."""
    return {name: model().model_dump() for name, model in SECTIONS.items()}


def suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(str(word), choices, n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


_RANGE_FIX = {"greater_than_equal": "ge", "less_than_equal": "le", "greater_than": "gt", "less_than": "lt"}


def _message(section: str, err: dict[str, Any], label: str | None = None) -> str:
    loc = ".".join(str(p) for p in (label or section, *err["loc"]))
    value, kind = err.get("input"), err["type"]
    shown = "nothing" if value is None else repr(value)
    if kind == "bool_type":
        yaml11 = isinstance(value, str) and value.strip().lower() in YAML11_BOOLEANS
        why = (" (YAML 1.1's yes/no/on/off are text here: only true and false are booleans)" if yaml11
               else " (a string: quotes make YAML text)" if isinstance(value, str) else "")
        return f"{loc} must be the boolean true or false, got {shown}{why}; fix: --set {loc}=true (or false)"
    if kind == "int_type":
        return f"{loc} must be a whole number, got {shown}; fix: --set {loc}=<integer>"
    if kind == "float_type":
        hint = ""
        if isinstance(value, str) and "/" in value:
            try:
                a, b = (float(v) for v in value.split("/"))
                hint = f" = {a / b:.7f}"
            except ValueError:
                pass
        return f"{loc} must be a number, got {shown}; fix: --set {loc}=<number>{hint and f' (here{hint})'}"
    if kind == "literal_error":
        return f"{loc}: {err['msg'].replace('Input should be', 'must be')}, got {shown}"
    if kind == "dict_type":
        return f"{loc} must be a mapping (e.g. {{key: value}}), got {shown}"
    if kind == "extra_forbidden":
        allowed = sorted(SECTIONS[section].model_fields) if section in SECTIONS else []
        return f"unknown key {loc}{suggest(str(err['loc'][-1]), allowed)}; allowed keys of {section}: {allowed}"
    if kind == "value_error":
        return f"{loc}: {err['msg'].removeprefix('Value error, ')}"
    if kind in _RANGE_FIX:
        bound = (err.get("ctx") or {}).get(_RANGE_FIX[kind])
        fix = f"; fix: --set {loc}={bound}" if kind in ("greater_than_equal", "less_than_equal") else (
            f"; fix: --set {loc}=<a value {'above' if kind == 'greater_than' else 'below'} {bound}>")
        return f"{loc}: {err['msg'].replace('Input should be', 'must be')}, got {shown}{fix}"
    return f"{loc}: {err['msg'].replace('Input should be', 'must be')}, got {shown}"


def validate_section(section: str, values: dict[str, Any], label: str | None = None) -> dict[str, Any]:
    """One section, validated and normalised; :class:`ConfigError` naming every bad key (as ``label.key``)."""
    try:
        return SECTIONS[section].model_validate(values).model_dump()
    except ValidationError as exc:
        raise ConfigError("; ".join(_message(section, e, label) for e in exc.errors())) from exc


def validate_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Validate every section of a merged config (see :func:`validate_section`); an ``attack`` list (an
    ensemble) element by element, its keys named ``attack[j].key``."""
    out: dict[str, Any] = {}
    for section, values in cfg.items():
        if section == "attack" and isinstance(values, list):
            try:
                out[section] = [validate_section(section, v, f"attack[{j}]") for j, v in enumerate(values)]
            except ConfigError as exc:  # --set cannot address one element: the fix is in the YAML
                raise ConfigError(str(exc).replace("fix: --set attack[", "fix: in the YAML, set attack[")) from exc
        else:
            out[section] = validate_section(section, values)
    return out


def attack_sections(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The attack sections of a resolved config in ensemble order: ``[attack]`` for a single attack mapping.

    >>> attack_sections({"attack": {"name": "pgd"}}), len(attack_sections({"attack": [{"name": "pgd"}] * 2}))
    ([{'name': 'pgd'}], 2)
    """
    a = cfg["attack"]
    return list(a) if isinstance(a, list) else [a]


def is_ensemble(cfg: dict[str, Any]) -> bool:
    """Whether the config's ``attack`` is a list of attack sections (an ensemble run)."""
    return isinstance(cfg["attack"], list)


def _type_name(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")
    return text.replace("Literal", "one of ").replace("NoneType", "null").replace(" | ", " or ")


def config_reference_markdown() -> str:
    """The config reference (section, key, type, default, meaning) as a Markdown table, from the schema."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for section, model in SECTIONS.items():
        for key, field in model.model_fields.items():
            default = field.default
            shown = "null" if default is None else str(default).lower() if isinstance(default, bool) else default
            lines.append(f"| `{section}.{key}` | {_type_name(field.annotation)} | `{shown}` | "
                         f"{field.description or ''} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Merging: defaults ← preset ← config ← --set overrides
# --------------------------------------------------------------------------------------------------

DEFAULTS: dict[str, dict[str, Any]] = defaults()
PATH_KEYS = (("data", "root"), ("classifier", "path"), ("diffusion", "path"), ("diffusion", "config"))


def parse_set(assignments: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Parse ``section.key=value`` overrides (values as YAML scalars, read by :func:`hetpure.yamlio.load_yaml`:
    only ``true``/``false`` are booleans, a key written twice in a mapping value is refused) into a nested dict."""
    from ..yamlio import load_yaml

    out: dict[str, dict[str, Any]] = {}
    for item in assignments:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        dotted, raw = item.split("=", 1)
        section, key = dotted.split(".", 1)
        out.setdefault(section, {})[key] = load_yaml(raw, f"--set {item}") if raw != "" else None
    return out


def resolve_config(config: dict[str, Any], overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Merge a user config (and overrides) over the defaults and validate it against the schema.

    Unknown sections or keys, wrong types and out-of-range values are :class:`ConfigError` naming the key and
    the fix, raised before any model work. A top-level ``preset: <name>`` (see :mod:`hetpure.presets`) is
    merged first, under the config's sections. ``$HETPURE_SHARED/…`` in a path is expanded.
    """
    if not isinstance(config, dict):
        raise ConfigError("an evaluation config must be a mapping of sections (data, classifier, ...)")
    resolved = copy.deepcopy(DEFAULTS)
    config = dict(config)
    sources: list[dict[str, Any]] = []
    if config.get("preset") is not None:
        from ..presets import get_preset

        sources.append(get_preset(str(config["preset"])))
    config.pop("preset", None)
    for source in (*sources, config, overrides or {}):
        for section, values in source.items():
            if section not in DEFAULTS:
                raise ConfigError(f"unknown config section {section!r}{suggest(section, list(DEFAULTS))}; "
                                  f"allowed: {sorted(DEFAULTS)}")
            if values is None:
                continue
            if section == "attack" and (isinstance(values, list) or isinstance(resolved["attack"], list)):
                resolved["attack"] = _merge_attacks(resolved["attack"], values)
                continue
            if not isinstance(values, dict):
                raise ConfigError(f"config section {section!r} must be a mapping, got {type(values).__name__}")
            _merge_keys(resolved[section], section, values, section)
            if section == "defense" and "tau" in values and "top_p" not in values:
                resolved["defense"]["top_p"] = None  # a later τ replaces an earlier top-p (which would win)
    resolved = validate_config(resolved)
    for a in attack_sections(resolved):
        a["through"] = _resolve_through(a["through"], resolved["defense"])
        if isinstance(a["source"], str):
            a["source"] = expand_path(a["source"])
    for section, key in PATH_KEYS:
        if isinstance(resolved[section][key], str):
            resolved[section][key] = expand_path(resolved[section][key])
    if resolved["data"]["survivors_of"] is not None:
        resolved["data"]["survivors_of"] = [expand_path(f) for f in resolved["data"]["survivors_of"]]
    if isinstance(resolved["run"]["out"], str):
        resolved["run"]["out"] = expand_path(resolved["run"]["out"])
    _check_consistency(resolved)
    return resolved


def _merge_keys(target: dict[str, Any], section: str, values: dict[str, Any], label: str) -> None:
    for key, value in values.items():
        if key not in DEFAULTS[section]:
            raise ConfigError(
                f"unknown key {label}.{key}{suggest(str(key), list(DEFAULTS[section]))}; "
                f"allowed keys of {section}: {sorted(DEFAULTS[section])}"
            )
        target[key] = value


def _merge_attacks(current: Any, values: Any) -> list[dict[str, Any]]:
    """``attack`` given as a list (an ensemble: each element merged over the defaults), or a mapping merged over
    every element of an earlier list (so ``--set attack.eot=8`` changes every attack of an ensemble)."""
    if isinstance(values, list):
        if not values:
            raise ConfigError("attack is an empty list; give one attack mapping or a list of them, "
                              "e.g. attack: [{name: pgd}, {name: apgd-dlr}]")
        merged = []
        for j, item in enumerate(values):
            if not isinstance(item, dict):
                raise ConfigError(f"attack[{j}] must be a mapping of attack keys (name, eps, …), "
                                  f"got {type(item).__name__}")
            element = copy.deepcopy(DEFAULTS["attack"])
            _merge_keys(element, "attack", item, f"attack[{j}]")
            merged.append(element)
        return merged
    if not isinstance(values, dict):
        raise ConfigError(f"config section 'attack' must be a mapping or a list of mappings, got "
                          f"{type(values).__name__}")
    for j, element in enumerate(current):
        _merge_keys(element, "attack", values, f"attack[{j}]")
    return current


def _resolve_through(through: Any, defense: dict[str, Any]) -> dict[str, Any] | None:
    """The pipeline the attack differentiates: ``attack.through`` merged over the defence (None = the defence).

    ``attack.through`` takes the keys of ``defense``; a key it does not name keeps the defence's value, so
    ``through: {method: heterogeneous}`` attacks the heterogeneous twin of a uniform defence. A through
    pipeline equal to the defence is the ordinary (non-transfer) evaluation and resolves to None.
    """
    if through is None:
        return None
    unknown = sorted(set(through) - set(DEFAULTS["defense"]))
    if unknown:
        raise ConfigError(f"unknown key attack.through.{unknown[0]}{suggest(unknown[0], list(DEFAULTS['defense']))}"
                          f"; allowed keys: {sorted(DEFAULTS['defense'])}")
    merged = {**defense, **through}
    if "tau" in through and "top_p" not in through:
        merged["top_p"] = None
    try:
        merged = validate_section("defense", merged)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("defense.", "attack.through.")) from exc
    return None if merged == defense else merged


def _check_consistency(cfg: dict[str, Any]) -> None:
    """Rules between keys (types and ranges are the schema's)."""
    if not cfg["data"]["name"]:
        raise ConfigError("data.name is required (cifar10, imagefolder, svhn, imagenet, mnist5k); "
                          "fix: --set data.name=imagefolder")
    if not cfg["classifier"]["name"]:
        raise ConfigError("classifier.name is required (see `hetpure list classifiers`); "
                          "fix: --set classifier.name=cifar_resnet20")
    throughs = [("attack.through", a["through"]) for a in attack_sections(cfg)]
    for prefix, section in (("defense", cfg["defense"]), *throughs):
        method = None if section is None else section["method"]
        if method not in (None, "none") and not cfg["diffusion"]["path"]:
            raise ConfigError(f"diffusion.path is required for a purification pipeline ({prefix}.method {method}); "
                              "fix: --set diffusion.path=<checkpoint file or diffusers folder>")
        if method == "uniform" and section["t_star"] is None:
            raise ConfigError(f"{prefix}.method uniform needs {prefix}.t_star; fix: --set {prefix}.t_star=0.1")
        if method == "heterogeneous" and section["t_s"] > section["t_l"]:
            raise ConfigError(f"{prefix}.t_s ({section['t_s']}) must not exceed {prefix}.t_l ({section['t_l']})")
        if method in ("diffpure", "gdmp") and section["t_star"] is None:
            raise ConfigError(f"{prefix}.method {method} needs {prefix}.t_star; fix: --set {prefix}.t_star="
                              f"{0.1 if method == 'diffpure' else 0.036} (the authors' CIFAR-10 setting)")
    _check_adjoint(cfg)
    if not cfg["run"]["out"]:
        raise ConfigError("run.out (the output folder) is required; fix: --out DIR")


def _check_adjoint(cfg: dict[str, Any]) -> None:
    """``attack.gradient: adjoint`` is DiffPure's adjoint SDE: only for an attacked diffpure pipeline, with torchsde."""
    for a in attack_sections(cfg):
        _check_adjoint_one(a, cfg["defense"])


def _check_adjoint_one(a: dict[str, Any], defense: dict[str, Any]) -> None:
    if a["gradient"] != "adjoint":
        return
    attacked = a["through"] or defense
    if attacked["method"] != "diffpure":
        where = "attack.through" if a["through"] else "defense"
        raise ConfigError(f"attack.gradient adjoint solves DiffPure's adjoint SDE, so it needs {where}.method "
                          f"diffpure (got {attacked['method']}); fix: --set attack.gradient=exact")
    import importlib.util

    if importlib.util.find_spec("torchsde") is None:
        raise ConfigError("attack.gradient adjoint needs torchsde, which is not installed; fix: pip install "
                          "'hetpure[sde]' (or --set attack.gradient=exact)")


def purify_config(defense: dict[str, Any]) -> PurifyConfig:
    """The :class:`~hetpure.purify.PurifyConfig` of a resolved ``defense`` section."""
    return PurifyConfig.from_dict({k: v for k, v in defense.items() if k != "method"})


def write_docs_reference(doc: str = "docs/evaluation.md") -> None:
    """Replace the generated block of ``doc`` with :func:`config_reference_markdown`."""
    from pathlib import Path

    start, end = "<!-- config-reference:start -->", "<!-- config-reference:end -->"
    path = Path(doc)
    head, rest = path.read_text().split(start, 1)
    tail = rest.split(end, 1)[1]
    path.write_text(f"{head}{start}\n{config_reference_markdown()}\n{end}{tail}")


if __name__ == "__main__":  # python -m hetpure.evaluation.config --write-docs
    import sys

    if "--write-docs" in sys.argv:
        write_docs_reference()
    else:
        print(config_reference_markdown())

"""Run identity: what a run computes, never where it ran.

The identity of an evaluation run is a JSON-able dict of everything that changes a number in its records:
the dataset's identity (name, split, seed, options and a fingerprint of its contents), each checkpoint's
content digest (SHA-256), every defence, attack and run setting that enters the computation, and the
device *type* (CPU and CUDA generators give different streams for one seed). It holds no path, no output
folder, no device index and no display option, so a run made on one machine resumes, extends and
re-summarises on any other. ``settings_hash`` is the first 16 hex digits of its SHA-256.

File digests are cached (``$HETPURE_CACHE`` or ``~/.cache/hetpure/digests.json``) per absolute path, size and
modification time, so a 2 GB checkpoint is read once.

Paths written into run folders go through :func:`portable_path`: ``$HETPURE_SHARED/…`` for files under the
shared folder, otherwise relative to the folder the file is written into.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: Version of the identity layout; part of the identity, so a new layout never reuses old records silently.
IDENTITY_FORMAT = 2
#: Keys of each section that never change a number (paths, output, display, trust flags).
NOT_IN_IDENTITY: dict[str, tuple[str, ...]] = {
    "data": ("root", "n", "download", "survivors_of", "survivors_clean"),  # in the survivors_of identity instead
    "classifier": ("path", "trust_pickle"),
    "diffusion": ("path", "config", "trust_pickle"),
    "attack": ("checkpoint", "memory_budget_gb"),  # same gradients bit for bit, either way
    "run": ("out", "progress", "save_images", "sanity", "sanity_n", "strict", "device", "dist_timeout_minutes",
            "save_adversarial", "eot_diagnostic"),
}
#: Run keys that enter the identity only of an ensemble run (``attack`` a list): they choose the images each later
#: attack runs on. Counting rules applied by the summary (``run.ties`` for a single attack) change no record.
ENSEMBLE_KEYS = ("ties", "ensemble")
SHARED_VAR = "HETPURE_SHARED"
#: Defence keys that only these methods read. Under any other method they cannot change a number, so a defence
#: section (and ``attack.through``) leaves them out, which also keeps the identity of every run made before
#: the keys existed.
METHOD_KEYS: dict[str, tuple[str, ...]] = {
    "sde_steps": ("diffpure",),
    "gdmp_guidance": ("gdmp",), "gdmp_scale": ("gdmp",), "gdmp_iterations": ("gdmp",),
}
#: The attacks that take ``attack.keep`` (their constructors have a ``keep`` parameter; a test checks it).
KEEPING_ATTACKS = ("pgd", "apgd-ce", "apgd-dlr", "diffattack", "diffhammer")
#: Attack keys that only these attacks read, as :data:`METHOD_KEYS` for defences: under any other attack they cannot
#: change a number, so the attack section leaves them out, which also keeps the identity of every run made before
#: the keys existed. ``keep`` enters only when it is not the default ``last`` (today's behaviour), ``keep_every``
#: only with ``keep: first_broken``.
ATTACK_KEYS: dict[str, tuple[str, ...]] = {
    "keep": KEEPING_ATTACKS, "keep_every": KEEPING_ATTACKS,
    "diffattack_weight": ("diffattack",), "diffattack_every": ("diffattack",), "diffattack_loss": ("diffattack",),
    "diffhammer_samples": ("diffhammer",), "diffhammer_k": ("diffhammer",), "diffhammer_em_steps": ("diffhammer",),
    "diffhammer_loss": ("diffhammer",),
}


# --------------------------------------------------------------------------------------------------
# Content digests
# --------------------------------------------------------------------------------------------------


def _cache_file() -> Path:
    env = os.environ.get("HETPURE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "hetpure" / "digests.json"


def _load_cache() -> dict[str, str]:
    try:
        data = json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _store_cache(key: str, digest: str) -> None:
    cache = _load_cache()
    cache[key] = digest
    file = _cache_file()
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f"{file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, sort_keys=True))
        os.replace(tmp, file)
    except OSError:  # a read-only home only costs re-hashing next time
        pass


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes, cached per (absolute path, size, mtime)."""
    p = Path(path).resolve()
    st = p.stat()
    key = f"{p}|{st.st_size}|{st.st_mtime_ns}"
    cached = _load_cache().get(key)
    if cached:
        return cached
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    _store_cache(key, digest)
    return digest


def files_digest(files: Iterable[tuple[str, Path]]) -> str:
    """SHA-256 over (name, content digest) pairs: the identity of a set of files, whatever their location.

    The whole list is cached under one key (names, sizes and mtimes), so a 10,000-file image folder is read
    once per machine.
    """
    items = [(name, Path(f)) for name, f in files]
    cwd = os.getcwd()  # absolute paths without a resolve() per file: 50,000 files are stat-ed in well under 1 s
    signature = hashlib.sha256(
        "\n".join(f"{name}|{os.path.join(cwd, f)}|{st.st_size}|{st.st_mtime_ns}"
                   for name, f in items for st in (os.stat(f),)).encode()
    ).hexdigest()
    key = f"files:{signature}"
    cached = _load_cache().get(key)
    if cached:
        return cached
    h = hashlib.sha256()
    for name, f in items:
        fh = hashlib.sha256(Path(f).read_bytes()).hexdigest()
        h.update(f"{name}\0{fh}\n".encode())
    digest = h.hexdigest()
    _store_cache(key, digest)
    return digest


def path_digest(path: str | Path | None) -> str | None:
    """Content digest of a checkpoint file, or of every file in a checkpoint folder (names relative to it)."""
    if path is None:
        return None
    p = Path(path).expanduser()
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
        return files_digest((f.relative_to(p).as_posix(), f) for f in files)
    if p.is_file():
        return file_digest(p)
    return None  # a missing file is reported by the loader, with its fix


def module_digest(module: nn.Module) -> str:
    """SHA-256 of a module's parameters and buffers (names, dtypes, shapes, bytes): for in-memory models."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def dataset_fingerprint(dataset: Any) -> str:
    """Content fingerprint of a dataset split: its files (image folders) or its arrays (in-memory sets).

    Covers the whole split, not the subset, since the seeded subset is drawn from the whole split.
    """
    samples = getattr(dataset, "samples", None)
    folder = getattr(dataset, "folder", None)
    if samples is not None and folder is not None:
        root = Path(folder)
        classes = list(getattr(dataset, "classes", []))
        files = [(f"{classes[label] if label < len(classes) else label}/{Path(p).relative_to(root).as_posix()}",
                  Path(p)) for p, label in samples]
        return files_digest(files)
    images, labels = getattr(dataset, "images", None), getattr(dataset, "labels", None)
    h = hashlib.sha256()
    if isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor):
        for t in (images, labels):
            t = t.detach().cpu().contiguous()
            h.update(f"{t.dtype}|{tuple(t.shape)}\n".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()
    for i in range(len(dataset)):  # any other map-style dataset: its items
        x, y = dataset[i][:2]
        t = torch.as_tensor(x).detach().cpu().float().contiguous()
        h.update(t.numpy().tobytes())
        h.update(f"|{int(y)}\n".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# Identity and its hash
# --------------------------------------------------------------------------------------------------


def run_identity(cfg: dict[str, Any], data_fingerprint: str, classifier_digest: str | None,
                 diffusion_digest: str | None, diffusion_config_digest: str | None = None) -> dict[str, Any]:
    """The identity of a resolved evaluation config (see the module docstring)."""
    a = cfg["attack"]  # only the keys its attack reads (ATTACK_KEYS)
    cfg = {**cfg, "attack": [attack_identity(s) for s in a] if isinstance(a, list) else attack_identity(a)}
    ident: dict[str, Any] = {"format": IDENTITY_FORMAT}
    for section, values in cfg.items():
        if section == "preset":
            continue
        drop = NOT_IN_IDENTITY.get(section, ())
        if isinstance(values, list):  # an attack ensemble: each section below
            continue
        ident[section] = {k: v for k, v in values.items() if k not in drop}
    ident["defense"] = defense_identity(ident["defense"])
    ensemble = isinstance(cfg["attack"], list)
    sections = [dict(a) for a in cfg["attack"]] if ensemble else [ident["attack"]]
    for a in sections:
        for key in NOT_IN_IDENTITY["attack"]:
            a.pop(key, None)
        a.pop("source", None)  # a path: a saved attack's identity holds its source run's hash instead
        if a.get("name") != "saved":
            a.pop("slot", None)
        if a.get("through") is None:
            a.pop("through", None)
        else:
            a["through"] = defense_identity(a["through"])
    ident["attack"] = sections if ensemble else sections[0]
    if not ensemble:  # a single attack: today's identity (ties and ensemble only choose whom later attacks run on)
        for key in ENSEMBLE_KEYS:
            ident["run"].pop(key, None)
    ident["data"]["fingerprint"] = data_fingerprint
    ident["classifier"]["digest"] = classifier_digest
    throughs = [a.get("through") or {} for a in (cfg["attack"] if ensemble else [cfg["attack"]])]
    if cfg["defense"]["method"] == "none" and all(t.get("method", "none") == "none" for t in throughs):
        ident.pop("diffusion")  # no purification anywhere: the diffusion model cannot change a number
    else:
        ident["diffusion"]["digest"] = diffusion_digest
        if diffusion_config_digest is not None:
            ident["diffusion"]["config_digest"] = diffusion_config_digest
    ident["run"]["device_type"] = torch.device(str(cfg["run"]["device"])).type
    return ident


def defense_identity(defense: dict[str, Any]) -> dict[str, Any]:
    """A defence section without the keys its method does not read (:data:`METHOD_KEYS`)."""
    method = defense.get("method")
    return {k: v for k, v in defense.items() if method in METHOD_KEYS.get(k, (method,))}


def attack_identity(attack: dict[str, Any]) -> dict[str, Any]:
    """An attack section without the keys its attack does not read (:data:`ATTACK_KEYS`), ``keep`` only when it is
    not ``last`` and ``keep_every`` only with ``first_broken``.

    >>> attack_identity({"name": "pgd", "steps": 10, "keep": "last", "keep_every": 1, "diffattack_weight": 1.0})
    {'name': 'pgd', 'steps': 10}
    >>> attack_identity({"name": "diffattack", "keep": "first_broken", "keep_every": 5, "diffattack_weight": 2.0})
    {'name': 'diffattack', 'keep': 'first_broken', 'keep_every': 5, 'diffattack_weight': 2.0}
    """
    name = attack.get("name")
    out = {k: v for k, v in attack.items() if name in ATTACK_KEYS.get(k, (name,))}
    if out.get("keep", "last") == "last":
        out.pop("keep", None)
    if out.get("keep") != "first_broken":
        out.pop("keep_every", None)
    return out


def identity_hash(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (lists and scalars are leaves)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def identity_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Lines ``key: old → new`` for every key whose value differs (missing keys shown as 'absent')."""
    a, b = flatten(old), flatten(new)
    lines = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, "absent"), b.get(key, "absent")
        if va != vb:
            lines.append(f"{key}: {va!r} → {vb!r}")
    return lines


# --------------------------------------------------------------------------------------------------
# Portable paths
# --------------------------------------------------------------------------------------------------


def shared_root() -> Path | None:
    env = os.environ.get(SHARED_VAR)
    return Path(env).expanduser().resolve() if env else None


def portable_path(path: str | Path | None, base: str | Path) -> str | None:
    """A path that means the same on any machine: ``$HETPURE_SHARED/rel`` under the shared folder, else
    relative to ``base`` (the folder of the file it is written into). A relative input is taken relative to
    the working directory, as every command reads it, so a run folder's config reads the same from anywhere."""
    if path is None:
        return None
    text = str(path)
    if text.startswith("$"):
        return text
    p = Path(text).expanduser()
    shared = shared_root()
    resolved = p.resolve()
    if shared is not None and resolved.is_relative_to(shared):
        return f"${SHARED_VAR}/{resolved.relative_to(shared).as_posix()}"
    return os.path.relpath(resolved, Path(base).resolve())


def expand_path(path: str | None, base: str | Path | None = None) -> str | None:
    """Inverse of :func:`portable_path`: expand ``$HETPURE_SHARED`` (clear error when unset) and ``~``;
    a relative path is taken relative to ``base`` when given."""
    if path is None:
        return None
    text = str(path)
    if text.startswith(f"${SHARED_VAR}") or text.startswith(f"${{{SHARED_VAR}}}"):
        shared = shared_root()
        if shared is None:
            from ..errors import ConfigError

            raise ConfigError(f"{text} refers to ${SHARED_VAR}, which is not set; export {SHARED_VAR}=<the shared "
                              "folder> (e.g. ../shared)")
        rest = text.split("}", 1)[1] if text.startswith("${") else text[len(SHARED_VAR) + 1:]
        return str(shared / rest.lstrip("/"))
    p = Path(text).expanduser()
    if base is not None and not p.is_absolute():
        p = Path(base) / p
    return str(p)


def portable_config(cfg: dict[str, Any], base: str | Path) -> dict[str, Any]:
    """A copy of a resolved config with every path made portable (``run.out`` becomes ``.`` when it is
    ``base`` itself)."""
    out = json.loads(json.dumps(cfg, default=str))
    for section, key in (("data", "root"), ("classifier", "path"), ("diffusion", "path"), ("diffusion", "config")):
        if section in out and isinstance(out[section].get(key), str):
            out[section][key] = portable_path(out[section][key], base)
    if isinstance((out.get("data") or {}).get("survivors_of"), list):
        out["data"]["survivors_of"] = [portable_path(f, base) for f in out["data"]["survivors_of"]]
    attacks = out.get("attack")
    for a in attacks if isinstance(attacks, list) else [attacks] if isinstance(attacks, dict) else []:
        if isinstance(a.get("source"), str):  # a saved attack's source run folder
            a["source"] = portable_path(a["source"], base)
    if "run" in out and out["run"].get("out") is not None:
        run_out = Path(str(out["run"]["out"])).expanduser()
        out["run"]["out"] = "." if run_out.resolve() == Path(base).resolve() else portable_path(run_out, base)
    return out

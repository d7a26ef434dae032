"""Safe checkpoint loading: safetensors first, torch pickles only through ``weights_only=True``.

Rules (also in ``docs/models-and-data.md``):

* ``.safetensors`` files are read with :mod:`safetensors` (no code can run while reading them). A file is
  recognised as safetensors by its content, whatever its suffix.
* ``.pt`` / ``.pth`` / ``.th`` / ``.bin`` / ``.ckpt`` files are read with ``torch.load(weights_only=True)``,
  which only rebuilds tensors, containers and plain Python values. A file that needs full unpickling
  (it references arbitrary classes or functions) is refused with :class:`~hetpure.errors.CheckpointError`
  unless ``trust_pickle=True``: unpickling can run any code the file's author chose. Only the boolean
  ``True`` allows it: any other value that is not ``False`` (``"false"``, ``"no"``, ``1``, ``None``) is an
  :class:`~hetpure.errors.InputTypeError` (a ``TypeError``), raised before the file is opened.
* Common wrappers are unwrapped (see :func:`load_state_dict_file`); prefixes such as ``module.`` are
  stripped by :func:`load_into` when that makes the keys match the module.
"""

from __future__ import annotations

import difflib
import json
import pickle
import re
import struct
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import CheckpointError, InputTypeError, describe_missing

__all__ = [
    "PICKLE_SUFFIXES",
    "WRAPPER_KEYS",
    "check_trust_pickle",
    "load_ema_shadow_params",
    "load_into",
    "load_state_dict_file",
    "match_state_dict_keys",
    "read_checkpoint",
]

#: File suffixes read with ``torch.load(weights_only=True)``.
PICKLE_SUFFIXES: tuple[str, ...] = (".pt", ".pth", ".th", ".bin", ".ckpt", ".tar")

#: Keys of checkpoint dicts that wrap the actual state dict, tried in this order.
WRAPPER_KEYS: tuple[str, ...] = ("state_dict", "model_state_dict", "ema", "model")

_MAX_LISTED = 12


def _looks_like_safetensors(path: Path) -> bool:
    """Whether ``path`` starts with a safetensors header (u64 length, then a JSON object)."""
    try:
        with path.open("rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= 100_000_000 and head[8:9] == b"{"


def _looks_like_torch_file(path: Path) -> bool:
    """Whether ``path`` is a torch zip archive or a legacy pickle stream."""
    if zipfile.is_zipfile(path):
        return True
    with path.open("rb") as f:
        return f.read(1) == b"\x80"  # pickle protocol 2+ opcode


def check_trust_pickle(value: object, name: str = "trust_pickle") -> bool:
    """``value`` if it is the boolean ``True`` or ``False``; anything else is an :class:`InputTypeError`.

    Truthiness is not enough: ``trust_pickle="false"`` (a string) is truthy, and full unpickling runs the
    file's code, so only the boolean ``True`` may allow it.

    Example:
        >>> from hetpure.models.checkpoint import check_trust_pickle
        >>> check_trust_pickle(False)
        False
        >>> check_trust_pickle("no")
        Traceback (most recent call last):
            ...
        hetpure.errors.InputTypeError: trust_pickle must be the boolean True or False, got 'no' (type str); ...
    """
    if value is True or value is False:
        return value
    raise InputTypeError(
        f"{name} must be the boolean True or False, got {value!r} (type {type(value).__name__}); full unpickling "
        f"runs the file's code, so only {name}=True allows it. Fix: pass {name}=False, or {name}=True only "
        "for a file from a source you trust"
    )


def _check_path(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        why = describe_missing(p)
        if why == "does not exist":
            raise CheckpointError(
                f"checkpoint file not found: {p}. Check the path (or download the weights first)."
            )
        raise CheckpointError(f"checkpoint file {p} {why}")
    if p.is_dir():
        raise CheckpointError(
            f"checkpoint path {p} is a folder; pass the weights file inside it "
            "(e.g. model.safetensors or a .pt/.pth file)"
        )
    return p


def _torch_load(p: Path, trust_pickle: bool) -> Any:
    """``torch.load`` with ``weights_only=True``; full unpickling only when ``trust_pickle`` is the boolean True."""
    trusted = check_trust_pickle(trust_pickle)
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if trusted is not True:
            found = re.search(r"GLOBAL ([\w.]+)", str(exc))
            detail = f": it references {found.group(1)}" if found else ""
            raise CheckpointError(
                f"refusing to load {p}: it is a pickle that needs more than tensors to load "
                f"(torch.load(weights_only=True) failed{detail}). "
                "Unpickling such a file can run arbitrary code chosen by whoever made it. "
                "Convert it to safetensors, or, only if you trust its source, pass trust_pickle=True "
                "(CLI: --set classifier.trust_pickle=true for the classifier's weights, "
                "--set diffusion.trust_pickle=true for the diffusion model's)."
            ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"could not read checkpoint {p} as a torch file: {exc}") from exc
    try:
        return torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:  # any failure of a trusted unpickle is reported the same way
        raise CheckpointError(f"could not unpickle {p} even with trust_pickle=True: {exc}") from exc


def _is_tensor_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    )


def _unwrap(obj: Any, p: Path, warn: bool = True) -> tuple[dict[str, Tensor], bool]:
    """Find the state dict inside a loaded checkpoint object; also whether score_sde EMA shadow parameters
    are stored beside it (a warning says so when ``warn``)."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if _is_tensor_dict(obj):
        return dict(obj), False
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{p} holds a {type(obj).__name__}, not a state dict (a mapping of names to tensors)"
        )
    for key in WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, nn.Module):
            inner = inner.state_dict()
        if _is_tensor_dict(inner):
            shadow = key == "model" and isinstance(obj.get("ema"), Mapping) and "shadow_params" in obj["ema"]
            if shadow and warn:
                warnings.warn(
                    f"{p} also holds EMA shadow parameters (score_sde format) that are NOT in the returned "
                    "state dict; call hetpure.models.checkpoint.load_ema_shadow_params(module, path) after "
                    "loading to use the EMA weights",
                    stacklevel=4,
                )
            return dict(inner), shadow
    # Mixed mapping: keep the tensors if that is most of it (e.g. a state dict plus an "epoch" int).
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, Tensor)}
    if tensors and len(tensors) >= len(obj) - 4:
        return tensors, False
    keys = ", ".join(repr(k) for k in list(obj)[:10])
    raise CheckpointError(
        f"could not find a state dict in {p}: its top-level keys are {keys}; expected a mapping of names "
        f"to tensors or a wrapper with one of the keys {', '.join(WRAPPER_KEYS)}. Extract the weights "
        "yourself and pass the resulting dict to load_into()"
    )


def load_state_dict_file(path: str | Path, trust_pickle: bool = False) -> dict[str, Tensor]:
    """The state dict of a checkpoint file (see :func:`read_checkpoint`, which also says whether score_sde EMA
    weights are stored beside it; this function warns about them instead).

    Example:
        >>> import hetpure
        >>> from hetpure.demo import assets_dir
        >>> sd = hetpure.load_state_dict_file(assets_dir() / "classifier.safetensors")  # the demo's MNIST CNN
        >>> len(sd), sorted(sd)[0], tuple(sd["fc.bias"].shape)
        (38, 'fc.bias', (10,))
    """
    return read_checkpoint(path, trust_pickle, warn=True)[0]


def read_checkpoint(path: str | Path, trust_pickle: bool = False,
                    warn: bool = False) -> tuple[dict[str, Tensor], bool]:
    """Read a state dict (parameter name -> tensor, on CPU) from a checkpoint file, and whether the file also
    holds score_sde EMA shadow parameters (returned as data, so callers never parse a warning).

    Formats: safetensors (recognised by content), and torch files (``.pt``, ``.pth``, ``.th``,
    ``.bin``, ``.ckpt``, ``.tar`` or any torch zip/pickle) read with ``torch.load(weights_only=True)``.

    Wrappers: if the file holds a dict that is not itself a name -> tensor mapping, the first of the keys
    ``state_dict``, ``model_state_dict``, ``ema``, ``model`` whose value is such a mapping is used
    (EMA weights before raw ones, since they are what inference uses). A score_sde-style file whose
    ``ema`` entry is a list of ``shadow_params`` returns ``model`` and warns; see
    :func:`load_ema_shadow_params`. Keys are returned as stored; prefix stripping happens in
    :func:`load_into`.

    Args:
        path: the checkpoint file.
        trust_pickle: allow full unpickling of torch files that ``weights_only=True`` cannot read. This
            can execute arbitrary code from the file: only for files from a source you trust.

    Raises:
        CheckpointError: missing file, unreadable or unsafe file, or no state dict inside.
        InputTypeError: ``trust_pickle`` is not a boolean (checked before the file is opened).
    """
    check_trust_pickle(trust_pickle)
    p = _check_path(path)
    if _looks_like_safetensors(p):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            sd = load_file(str(p), device="cpu")
        except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{p} looks like a safetensors file but could not be read: {exc}") from exc
        if not sd:
            raise CheckpointError(f"{p} is a safetensors file with no tensors in it")
        return sd, False
    if p.suffix.lower() == ".safetensors":
        raise CheckpointError(
            f"{p} has a .safetensors suffix but is not a valid safetensors file (truncated?)"
        )
    if p.suffix.lower() in PICKLE_SUFFIXES or _looks_like_torch_file(p):
        return _unwrap(_torch_load(p, trust_pickle), p, warn)
    raise CheckpointError(
        f"unknown checkpoint format: {p}. Supported: .safetensors, and torch files "
        f"({', '.join(PICKLE_SUFFIXES)}) saved with torch.save"
    )


def load_ema_shadow_params(module: nn.Module, path: str | Path, trust_pickle: bool = False) -> None:
    """Copy score_sde-style EMA weights (``ckpt["ema"]["shadow_params"]``) into ``module``'s parameters.

    The shadow parameters are a list in ``module.parameters()`` order; their count and every shape must
    match, else :class:`CheckpointError` (nothing is copied then).
    """
    check_trust_pickle(trust_pickle)
    p = _check_path(path)
    obj = _torch_load(p, trust_pickle)
    ema = obj.get("ema") if isinstance(obj, Mapping) else None
    shadow = ema.get("shadow_params") if isinstance(ema, Mapping) else None
    if not isinstance(shadow, (list, tuple)) or not all(isinstance(t, Tensor) for t in shadow):
        raise CheckpointError(f"{p} has no ema.shadow_params list of tensors (not a score_sde checkpoint?)")
    params = list(module.parameters())
    if len(params) != len(shadow):
        raise CheckpointError(
            f"{p} has {len(shadow)} EMA shadow parameters but the module has {len(params)} parameters; "
            "the architecture or its config does not match the checkpoint"
        )
    names = [n for n, _ in module.named_parameters()]
    bad = [
        f"{n}: checkpoint {tuple(s.shape)} vs model {tuple(q.shape)}"
        for n, s, q in zip(names, shadow, params, strict=True)
        if s.shape != q.shape
    ]
    if bad:
        raise CheckpointError(
            f"EMA shadow parameters of {p} do not fit the module:\n  " + "\n  ".join(bad[:10])
        )
    with torch.no_grad():
        for s, q in zip(shadow, params, strict=True):
            q.copy_(s)


def _dotted_prefixes(keys: list[str]) -> list[str]:
    """The dotted prefixes (``"a."``, ``"a.b."``, ...) shared by every key, shortest first."""
    if not keys:
        return []
    first = keys[0].split(".")[:-1]
    out: list[str] = []
    for i in range(1, len(first) + 1):
        pre = ".".join(first[:i]) + "."
        if all(k.startswith(pre) for k in keys):
            out.append(pre)
        else:
            break
    return out


def match_state_dict_keys(state_dict: Mapping[str, Tensor], expected: list[str]) -> dict[str, Tensor]:
    """Rename ``state_dict`` keys to the module's convention when a shared prefix explains the difference.

    Tries stripping any dotted prefix shared by all checkpoint keys (``module.``, ``model.``, ``module.0.``,
    ...) and adding one shared by all expected keys, and keeps the variant that matches the most expected
    keys (the unchanged dict on ties). Does not raise; :func:`load_into` reports what still differs.
    """
    keys = list(state_dict)
    exp = set(expected)
    strip_options = [""] + _dotted_prefixes(keys)
    add_options = [""] + _dotted_prefixes(list(expected))
    best = (sum(k in exp for k in keys), "", "")
    for strip in strip_options:
        for add in add_options:
            hits = sum((add + k[len(strip) :]) in exp for k in keys)
            if hits > best[0]:
                best = (hits, strip, add)
    _, strip, add = best
    if not strip and not add:
        return dict(state_dict)
    return {add + k[len(strip) :]: v for k, v in state_dict.items()}


def _natural(key: str) -> list[tuple[int, int | str]]:
    """Sort key that orders ``layer2`` before ``layer10``."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", key) if part]


def _key_list(title: str, keys: list[str], candidates: list[str]) -> str:
    """Keys grouped by module (``layer1.3.bn1.{weight, bias}``), in natural order, with close matches."""
    groups: dict[str, list[str]] = {}
    for k in sorted(keys, key=_natural):
        module, _, leaf = k.rpartition(".")
        groups.setdefault(module, []).append(leaf)
    lines = [f"{title} ({len(keys)}):"]
    for module, leaves in list(groups.items())[:_MAX_LISTED]:
        if len(leaves) == 1:
            full = f"{module}.{leaves[0]}" if module else leaves[0]
            close = difflib.get_close_matches(full, candidates, n=1, cutoff=0.75)
            lines.append(f"  {full}" + (f"   (closest on the other side: {close[0]})" if close else ""))
        else:
            lines.append(f"  {module}.{{{', '.join(leaves)}}}")
    if len(groups) > _MAX_LISTED:
        rest = sum(len(v) for v in list(groups.values())[_MAX_LISTED:])
        lines.append(f"  ... and {rest} more in {len(groups) - _MAX_LISTED} more modules")
    return "\n".join(lines)


def load_into(module: nn.Module, state_dict: Mapping[str, Tensor], strict: bool = True) -> nn.Module:
    """Load ``state_dict`` into ``module`` with a readable report of every mismatch.

    Prefixes shared by all checkpoint keys (``module.``, ``model.``, ``module.0.``, ...) are stripped,
    and one shared by all module keys added, when that makes more keys match (see
    :func:`match_state_dict_keys`). BatchNorm ``num_batches_tracked`` counters missing from old checkpoints
    are filled in as torch does. Shapes are checked before anything is copied.

    Args:
        module: the model to fill (its parameters are updated in place).
        state_dict: name -> tensor, e.g. from :func:`load_state_dict_file`.
        strict: if true, any missing or unexpected key is an error; if false, only shape mismatches are.

    Returns:
        ``module``, for chaining.

    Raises:
        CheckpointError: listing missing keys, unexpected keys and shape mismatches (with the closest
            name on the other side for each), so that a wrong architecture or config is easy to spot.
    """
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(f"expected a mapping of names to tensors, got {type(state_dict).__name__}")
    non_tensor = [k for k, v in state_dict.items() if not isinstance(v, Tensor)]
    if non_tensor:
        raise CheckpointError(
            f"state dict entries that are not tensors: {', '.join(map(str, non_tensor[:10]))}"
        )
    own = module.state_dict()
    sd = match_state_dict_keys(state_dict, list(own))
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    shapes = [
        f"  {k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    problems: list[str] = []
    if shapes:
        problems.append(f"shape mismatches ({len(shapes)}):\n" + "\n".join(shapes[:_MAX_LISTED]))
        if len(shapes) > _MAX_LISTED:
            problems.append(f"  ... and {len(shapes) - _MAX_LISTED} more")
    if strict and missing:
        problems.append(_key_list("missing from the checkpoint", missing, unexpected))
    if strict and unexpected:
        problems.append(_key_list("unexpected in the checkpoint", unexpected, missing))
    if problems:
        raise CheckpointError(
            f"checkpoint does not fit {type(module).__name__} "
            f"({len(sd)} checkpoint tensors, {len(own)} model tensors):\n"
            + "\n".join(problems)
            + "\nCheck that the architecture and its config (depth, width, classes) match the checkpoint."
        )
    try:
        module.load_state_dict(sd, strict=strict)
    except RuntimeError as exc:  # pragma: no cover - every known cause is reported above
        raise CheckpointError(f"loading the checkpoint into {type(module).__name__} failed: {exc}") from exc
    return module

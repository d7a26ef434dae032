"""Purify a folder of images, and the defended prediction of each image (``hetpure purify`` / ``hetpure predict``).

Both read the same YAML config as ``hetpure evaluate`` (sections classifier, diffusion, defense and run; the
data and attack sections are not used). Images are found with :func:`hetpure.images.find_images` and
checked (readable, large enough for the classifier, resizable) before any model is loaded.

:func:`purify_images` writes, mirroring the input's relative paths, ``<name>.png`` (the purified image at
the input's size), ``<name>.mask.png`` (the level weights: black = t_s, white = t_l, graded levels grey)
and one ``purify.jsonl`` line per file as each batch finishes; a rerun with the same settings skips the
files already done. :func:`predict_images` gives the majority vote of ``defense.runs`` purifications of
each image next to the undefended prediction.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .catalog import check_names, check_preset
from .errors import ConfigError, HetpureError
from .evaluation.config import resolve_config
from .evaluation.records import RunLock, append_records, make_folder, write_json_atomic
from .images import ImageFile, check_images_fit, find_images, read_image, resize_image, write_image, write_mask

__all__ = ["PREDICTION_FIELDS", "format_predictions", "predict_images", "purify_images", "resolve_model_config"]

#: Columns of a prediction row (``votes`` is the count per class).
PREDICTION_FIELDS = ("file", "prediction", "class", "vote_share", "votes", "runs", "undefended_prediction",
                     "undefended_class", "note")
LOG_NAME = "purify.jsonl"
#: How ``hetpure purify`` users name its output folder (the fix in messages about it).
OUTDIR = "output folder (purify's OUTDIR argument)"


def resolve_model_config(config: dict[str, Any], overrides: dict[str, dict[str, Any]] | None = None
                         ) -> dict[str, Any]:
    """Resolve an evaluate-style config for purify and predict: the data section is optional (the images
    come from the input path), unknown names suggest the closest valid ones."""
    if not isinstance(config, dict):
        raise ConfigError("the config must be a mapping of sections (classifier, diffusion, defense, run)")
    config = copy.deepcopy(config)
    data = dict(config.get("data") or {})
    if not data.get("name") and not ((overrides or {}).get("data") or {}).get("name"):
        data["name"] = "imagefolder"  # placeholder: no dataset is read
    config["data"] = data
    check_preset(config)
    cfg = resolve_config(config, overrides)
    check_names(cfg, data=False)
    return cfg


@dataclass
class _Inputs:
    """The checked input files and how they are fed to the models."""

    files: list[ImageFile]
    channels: int
    size: tuple[int, int] | None  # (H, W) the classifier takes; None: each image at its own size
    class_names: list[str] | None


def _prepare(cfg: dict[str, Any], source: str | Path, exclude: str | Path | None = None) -> _Inputs:
    """Find and check the input images against the classifier (no model is loaded)."""
    from .evaluation.components import model_class_names
    from .models.registry import describe_classifier

    name = cfg["classifier"]["name"]
    spec = describe_classifier(name)
    files = find_images(source, exclude)
    size = tuple(spec.input_shape[1:]) if spec.input_shape else None
    files = check_images_fit(files, size, f"classifier {name}", resize=cfg["defense"]["resize"])
    channels = spec.input_shape[0] if spec.input_shape else 3
    return _Inputs(files, channels, size, model_class_names(name))  # type: ignore[arg-type]


def _device(name: str) -> torch.device:
    from .devices import check_run_device

    return check_run_device(name)


def _load(cfg: dict[str, Any], inputs: _Inputs, device: torch.device) -> tuple[nn.Module, Any]:
    """Classifier and purifier of the config, frozen; refuse a diffusion size the images cannot take."""
    from .devices import freeze
    from .evaluation.components import build_models

    classifier, purifier = build_models(cfg, device)
    freeze(classifier, purifier)
    size = getattr(getattr(purifier, "eps_model", None), "image_size", None)
    if size is not None and inputs.size is not None and inputs.size != (size, size) and not cfg["defense"]["resize"]:
        h, w = inputs.size
        raise ConfigError(f"classifier {cfg['classifier']['name']} takes {h}×{w} images but the diffusion model "
                          f"works at {size}×{size}; fix: --set defense.resize=true (resize for diffusion and back)")
    return classifier, purifier


def _batches(files: list[ImageFile], size: int) -> Iterator[list[ImageFile]]:
    for i in range(0, len(files), size):
        yield files[i : i + size]


def _read_batch(files: list[ImageFile], inputs: _Inputs, device: torch.device) -> tuple[list[Tensor], list[str | None]]:
    """Images at the models' size (grouped by size when the classifier takes any), and conversion notes."""
    images, notes = [], []
    for f in files:
        x, note = read_image(f.path, inputs.channels)
        if inputs.size is not None and tuple(x.shape[-2:]) != inputs.size:
            x = resize_image(x, inputs.size)
            note = "; ".join(filter(None, [note, f"resized from {f.size[0]}×{f.size[1]} to "
                                                 f"{inputs.size[0]}×{inputs.size[1]} and back"]))
        images.append(x.to(device))
        notes.append(note)
    return images, notes


def _groups(images: list[Tensor]) -> list[list[int]]:
    """Positions of images of one size (one group when the models' size is fixed)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, x in enumerate(images):
        groups.setdefault(tuple(x.shape), []).append(i)
    return list(groups.values())


def _generator(seed: int, files: list[ImageFile]) -> torch.Generator:
    """A generator seeded by run.seed and the batch's files: reruns of the same files draw the same noise."""
    digest = hashlib.sha256((str(seed) + "\0" + "\0".join(f.relative for f in files)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") % 2**63)


def _settings_key(cfg: dict[str, Any]) -> str:
    """What a purified file depends on: the models' contents, the defence and the seed (never a path)."""
    from .evaluation.identity import defense_identity, path_digest

    c, d = cfg["classifier"], cfg["diffusion"]
    ident = {
        "classifier": {k: c[k] for k in ("name", "options", "mask_layers")} | {"digest": path_digest(c["path"])},
        "diffusion": {k: d[k] for k in ("kind", "dtype", "accelerate")} | {"digest": path_digest(d["path"])},
        "defense": defense_identity(cfg["defense"]), "seed": cfg["run"]["seed"], "batch_size": cfg["run"]["batch_size"],
        "device_type": torch.device(cfg["run"]["device"]).type,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _progress(total: int, initial: int, enabled: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, unit="image")


# --------------------------------------------------------------------------------------------------
# purify
# --------------------------------------------------------------------------------------------------


def _read_log(path: Path) -> list[dict[str, Any]]:
    """The lines of purify.jsonl; a torn last line (a kill mid-append) is cut off so that appends go on."""
    if not path.exists():
        return []
    data = path.read_bytes()
    rows, keep = [], 0
    for line in data.split(b"\n"):
        end = keep + len(line)
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as exc:
                if end < len(data):
                    raise HetpureError(f"{path}: line {len(rows) + 1} is not JSON; move the file aside and rerun "
                                       "(the purified images already written are kept)") from exc
                with open(path, "r+b") as fh:  # the torn tail of an interrupted append
                    fh.truncate(keep)
                return rows
        keep = end + 1
    if data and not data.endswith(b"\n"):
        with open(path, "ab") as fh:
            fh.write(b"\n")
    return rows


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _done(out: Path, log: list[dict[str, Any]], key: str) -> set[str]:
    """The input files whose outputs on disk are this setting's: the newest line of each file decides (a run
    with other settings in between rewrote the images), and the files must still be the ones that line
    describes (their SHA-256, when the line records it: an interrupted later run may have replaced them)."""
    newest: dict[str, dict[str, Any]] = {}
    for row in log:
        if isinstance(row, dict) and "file" in row:
            newest[row["file"]] = row

    def intact(name: str | None, digest: str | None) -> bool:
        if name is None:
            return True
        path = out / name
        return path.is_file() and (digest is None or _sha256(path) == digest)

    return {file for file, r in newest.items() if r.get("settings") == key and "image" in r
            and intact(r["image"], r.get("image_sha256")) and intact(r.get("mask"), r.get("mask_sha256"))}


def _check_names(files: list[ImageFile]) -> None:
    """Two inputs that would be written under one name (``a.jpg`` and ``a.png``) are refused."""
    seen: dict[str, str] = {}
    for f in files:
        if f.stem in seen:
            raise HetpureError(f"{seen[f.stem]} and {f.relative} would both be written as {f.stem}.png; rename one")
        seen[f.stem] = f.relative


def purify_images(config: dict[str, Any], source: str | Path, out: str | Path,
                  overrides: dict[str, dict[str, Any]] | None = None, progress: bool | None = None) -> dict[str, Any]:
    """Purify an image file or a folder of images (recursively) into ``out``; returns a summary.

    Writes ``out/<relative name>.png`` at the input's size, ``out/<relative name>.mask.png`` (heterogeneous
    defences: the level weights as grey levels) and one ``out/purify.jsonl`` line per file (file, outputs,
    size, mask fraction, ε-model calls, seconds, conversion note, settings key, SHA-256 of the outputs) as each
    batch finishes. A rerun skips a file when its newest line has the same settings key and its outputs on disk
    are still the files that line describes (a run with other settings in between is redone, not skipped).
    ``out/purify_config.json`` holds the resolved config of the last run that wrote files (paths made portable).
    """
    cfg = resolve_model_config(config, overrides)
    if cfg["defense"]["method"] == "none":
        raise ConfigError("defense.method none purifies nothing; fix: --set defense.method=heterogeneous "
                          "(or uniform with defense.t_star)")
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise HetpureError(f"output {out} is a file; give a folder (it is created when missing)")
    inputs = _prepare(cfg, source, exclude=out)
    _check_names(inputs.files)
    device = _device(cfg["run"]["device"])
    key = _settings_key(cfg)
    make_folder(out, OUTDIR)
    with RunLock(out, OUTDIR):
        log = out / LOG_NAME
        done = _done(out, _read_log(log), key)
        todo = [f for f in inputs.files if f.relative not in done]
        if todo:
            write_json_atomic(out / "purify_config.json", {"settings": key, "config": _portable(cfg, out)})
        summary = {"files": len(inputs.files), "skipped": len(inputs.files) - len(todo), "written": 0,
                   "out": str(out), "log": str(log), "notes": {}}
        if not todo:
            return summary
        classifier, purifier = _load(cfg, inputs, device)
        bar = _progress(len(inputs.files), summary["skipped"], cfg["run"]["progress"] if progress is None
                        else progress, "purify")
        calls = purifier.eps_calls()
        heterogeneous = hasattr(purifier, "level_weights")
        for batch in _batches(todo, cfg["run"]["batch_size"]):
            start = time.perf_counter()
            images, notes = _read_batch(batch, inputs, device)
            generator = _generator(cfg["run"]["seed"], batch)
            pure: dict[int, Tensor] = {}
            weights: dict[int, Tensor] = {}
            for group in _groups(images):
                x = torch.stack([images[i] for i in group])
                w = purifier.level_weights(x, generator) if heterogeneous else None
                with torch.no_grad():
                    y = purifier.purify(x, mask=w, generator=generator)
                for j, i in enumerate(group):
                    pure[i] = y[j]
                    if w is not None:
                        weights[i] = w[j]
            seconds = (time.perf_counter() - start) / len(batch)
            rows = []
            for i, f in enumerate(batch):
                image, mask = f"{f.stem}.png", f"{f.stem}.mask.png" if i in weights else None
                write_image(resize_image(pure[i].cpu(), f.size), out / image)
                if mask is not None:
                    write_mask(weights[i], out / mask, f.size)
                digests = {"image_sha256": _sha256(out / image),
                           "mask_sha256": _sha256(out / mask) if mask is not None else None}
                rows.append({"file": f.relative, "image": image, "mask": mask, "size": list(f.size), **digests,
                             "mask_fraction": round(float(weights[i].mean()), 6) if i in weights else None,
                             "eps_calls": calls, "seconds": round(seconds, 4), "note": notes[i], "settings": key})
                if notes[i]:
                    summary["notes"][f.relative] = notes[i]
            append_records(log, rows)  # after the images: a line means its files are complete
            summary["written"] += len(batch)
            bar.update(len(batch))
        bar.close()
    return summary


def _portable(cfg: dict[str, Any], base: Path) -> dict[str, Any]:
    from .evaluation.identity import portable_config

    return portable_config(cfg, base)


# --------------------------------------------------------------------------------------------------
# predict
# --------------------------------------------------------------------------------------------------


class _RowWriter:
    """Prediction rows to a JSONL or CSV file, flushed after each batch (an interrupted run keeps its rows)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._fh = None
        self._csv: Any = None
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "w", newline="")  # noqa: SIM115 - closed in close()
        if path.suffix.lower() == ".csv":
            self._csv = csv.DictWriter(self._fh, fieldnames=list(PREDICTION_FIELDS))
            self._csv.writeheader()

    def write(self, rows: list[dict[str, Any]]) -> None:
        if self._fh is None:
            return
        for row in rows:
            if self._csv is not None:
                self._csv.writerow({**row, "votes": " ".join(map(str, row["votes"])),
                                    "note": row.get("note") or ""})
            else:
                self._fh.write(json.dumps(row) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


def check_output_file(path: str | Path | None) -> Path | None:
    """``--out`` of predict: a ``.jsonl`` or ``.csv`` file (the suffix picks the format)."""
    if path is None:
        return None
    p = Path(path).expanduser()
    if p.suffix.lower() not in (".jsonl", ".csv"):
        raise HetpureError(f"--out {path}: the suffix picks the format; use a .jsonl or a .csv file")
    if p.is_dir():
        raise HetpureError(f"--out {path} is a folder; give a file name ending in .jsonl or .csv")
    return p


def predict_images(config: dict[str, Any], source: str | Path, out_file: str | Path | None = None,
                   overrides: dict[str, dict[str, Any]] | None = None, progress: bool | None = None
                   ) -> list[dict[str, Any]]:
    """The defended prediction of each image (majority vote of ``defense.runs`` purifications).

    Each row: ``file``, ``prediction`` (class index), ``class`` (name, when the classifier's classes are
    known), ``votes`` (count per class), ``vote_share`` of the winner, ``runs``, ``undefended_prediction`` and
    ``undefended_class`` (the bare classifier), ``note`` (mode conversion, resizing). With ``out_file`` the
    rows are also written as JSONL or CSV (by its suffix) as each batch finishes.
    """
    out = check_output_file(out_file)
    cfg = resolve_model_config(config, overrides)
    inputs = _prepare(cfg, source)
    device = _device(cfg["run"]["device"])
    classifier, purifier = _load(cfg, inputs, device)
    names = inputs.class_names
    runs = cfg["defense"]["runs"] if purifier is not None else 1
    writer = _RowWriter(out)
    bar = _progress(len(inputs.files), 0, cfg["run"]["progress"] if progress is None else progress, "predict")
    results: list[dict[str, Any]] = []
    try:
        for batch in _batches(inputs.files, cfg["run"]["batch_size"]):
            images, notes = _read_batch(batch, inputs, device)
            generator = _generator(cfg["run"]["seed"], batch)
            rows: list[dict[str, Any] | None] = [None] * len(batch)
            for group in _groups(images):
                x = torch.stack([images[i] for i in group])
                with torch.no_grad():
                    plain = classifier(x).argmax(1)
                if purifier is not None:
                    labels, classes = purifier.run_labels(x, runs, generator)
                    counts = torch.nn.functional.one_hot(labels.long(), classes).sum(0)
                else:
                    with torch.no_grad():
                        classes = int(classifier(x[:1]).shape[1])
                    counts = torch.nn.functional.one_hot(plain, classes)
                for j, i in enumerate(group):
                    votes = [int(v) for v in counts[j].tolist()]
                    pred, base = max(range(len(votes)), key=lambda c: (votes[c], -c)), int(plain[j])
                    rows[i] = {"file": batch[i].relative, "prediction": pred, "class": _name(names, pred),
                               "vote_share": votes[pred] / runs, "votes": votes, "runs": runs,
                               "undefended_prediction": base, "undefended_class": _name(names, base),
                               "note": notes[i]}
            done = [r for r in rows if r is not None]
            writer.write(done)
            results += done
            bar.update(len(batch))
    finally:
        writer.close()
        bar.close()
    return results


def _name(names: list[str] | None, label: int) -> str | None:
    return names[label] if names is not None and 0 <= label < len(names) else None


def format_predictions(rows: list[dict[str, Any]], limit: int = 20) -> str:
    """A short table of prediction rows (the first ``limit``) and one line on agreement."""
    def label(index: int, name: str | None) -> str:
        return f"{index} {name}" if name else str(index)

    table = [("file", "defended (vote share)", "undefended")]
    table += [(r["file"], f"{label(r['prediction'], r['class'])} ({r['vote_share']:.0%} of {r['runs']})",
               label(r["undefended_prediction"], r["undefended_class"])) for r in rows[:limit]]
    widths = [max(len(row[c]) for row in table) for c in range(3)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    if len(rows) > limit:
        lines.append(f"… {len(rows) - limit} more")
    agree = sum(r["prediction"] == r["undefended_prediction"] for r in rows)
    lines.append(f"{len(rows)} image(s); the defended and the undefended prediction agree on {agree}")
    return "\n".join(lines)

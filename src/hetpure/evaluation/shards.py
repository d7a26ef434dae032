"""Saved adversarial examples: one safetensors shard per batch beside the records, checked by content digest.

A shard ``adversarial/batch-<b>-<digest>.safetensors`` holds, for each attack ``j`` of the run (one for a single
attack), the float32 adversarial images exactly as they were scored (``x_adv.<j>``, not quantised) and the
dataset indices they belong to (``index.<j>``); an attack that skipped every image of the batch has none.
It is written before the batch's records (temporary file, fsync, ``os.replace``), under the run folder's
lock, and every record of the batch names the shard and its SHA-256. A shard whose bytes do not match the
digest in the records (torn, altered, replaced) is refused, never read.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import RecordsError

FOLDER = "adversarial"


def shard_name(batch: int, digest: str) -> str:
    """The shard of batch ``batch`` with content ``digest``, relative to the run folder. The digest is part of the
    name, so a batch recomputed with other images (a grown run) never overwrites what older records name."""
    return f"{FOLDER}/batch-{batch:06d}-{digest[:16]}.safetensors"


def write_shard(out: Path, batch: int, examples: list[tuple[Tensor, list[int]]],
                metadata: dict[str, str] | None = None) -> tuple[str, str]:
    """Write one batch's adversarial examples atomically; returns (relative name, SHA-256 of the file).

    ``examples[j]`` = (x_adv of attack j for the images it attacked (N, C, H, W), their dataset indices).
    """
    from safetensors.torch import save

    tensors: dict[str, Tensor] = {}
    for j, (x_adv, indices) in enumerate(examples):
        if len(indices) == 0:
            continue
        tensors[f"x_adv.{j}"] = x_adv.detach().to("cpu", torch.float32).contiguous()
        tensors[f"index.{j}"] = torch.tensor(indices, dtype=torch.int64)
    # one metadata key: safetensors keeps metadata in a hash map, so several keys come out in varying order
    payload = save(tensors, metadata={"hetpure": json.dumps(metadata or {}, sort_keys=True)})
    digest = hashlib.sha256(payload).hexdigest()
    name = shard_name(batch, digest)
    path = out / name
    if path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == digest:
        return name, digest  # the same examples, already whole (a batch recomputed after a kill)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return name, digest


def read_shard(out: Path, name: str, digest: str) -> dict[int, dict[int, Tensor]]:
    """A shard's examples as ``{attack j: {dataset index: x_adv (C, H, W)}}``, after checking its digest.

    Raises :class:`RecordsError` naming the file when it is missing, torn or altered.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = out / name
    fix = ("the saved adversarial examples cannot be trusted; rerun the source run into a new folder (or move "
           "its records of this batch aside so the batch is recomputed)")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RecordsError(f"{path}: adversarial shard missing or unreadable ({exc.strerror}); {fix}") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise RecordsError(f"{path}: content digest {actual[:16]}… does not match the records' {digest[:16]}… "
                           f"(torn or altered); {fix}")
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:  # a matching digest of an unreadable file
        raise RecordsError(f"{path}: not a safetensors file ({exc}); {fix}") from exc
    examples: dict[int, dict[int, Tensor]] = {}
    for key, value in tensors.items():
        if not key.startswith("x_adv."):
            continue
        j = int(key.split(".", 1)[1])
        indices = tensors[f"index.{j}"].tolist()
        examples[j] = {int(i): value[row] for row, i in enumerate(indices)}
    return examples


def shard_index(out: Path, records: list[dict[str, Any]]) -> dict[int, tuple[str, str]]:
    """Per dataset index, the (shard name, SHA-256) its record names; records without a shard are refused,
    naming the fix."""
    index: dict[int, tuple[str, str]] = {}
    for r in records:
        if "adversarial_shard" not in r:
            raise RecordsError(f"{out}: record of image {r['index']} has no saved adversarial example (a run made "
                               "with run.save_adversarial false, or before hetpure saved them); rerun it with "
                               "--set run.save_adversarial=true into a new folder")
        index[int(r["index"])] = (r["adversarial_shard"], r["adversarial_shard_sha256"])
    return index


def load_adversarial(out: Path, records: list[dict[str, Any]],
                     indices: set[int] | None = None) -> dict[int, dict[int, Tensor]]:
    """The saved examples of ``records`` (of the dataset ``indices`` among them, default all):
    ``{dataset index: {attack j: x_adv}}``; each shard needed read once and checked against the digest its
    records name. An image's example comes only from the shard its own record names: a grown run's recomputed
    last batch writes a new shard that also holds fresh examples of the batch's older images, whose records
    still name the old shard."""
    index = shard_index(out, records)
    wanted = set(index) if indices is None else set(indices) & set(index)
    found: dict[int, dict[int, Tensor]] = {}
    for name, digest in sorted({index[i] for i in wanted}):
        mine = {i for i in wanted if index[i] == (name, digest)}
        for j, images in read_shard(out, name, digest).items():
            for i in mine & set(images):
                found.setdefault(i, {})[j] = images[i]
    return found

"""Move run folders made before portable run identities to the current identity, recomputing nothing.

A run folder of hetpure ≤ 0.1 records a ``settings_hash`` that covered absolute paths (the data root, the
checkpoints, the output folder), so it resumed only on the machine that made it. :func:`migrate_run` reads
its ``config.json``, maps its absolute paths to where the files are now (``path_map``, by default every
``…/shared/…`` path to ``$HETPURE_SHARED/…``), computes the current identity from the files' contents
(:func:`hetpure.evaluate.identity_of`) and rewrites, atomically: each record of the old hash with the new
hash, ``config.json`` (identity and portable config) and ``summary.json`` / ``summary.md`` (portable
config, new hash). Records of other hashes are left as they are. Idempotent: a folder whose config already
holds an identity is reported as current.

``python scripts/migrate_runs.py docs/results/records`` migrates every run folder under a tree.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from .identity import IDENTITY_FORMAT, portable_config
from .records import read_records, write_json_atomic

_SHARED_PART = re.compile(r"^/.*?/shared/(.*)$")


def map_path(value: str | None, path_map: dict[str, str] | None = None) -> str | None:
    """An old absolute path where the file is now: the first matching ``path_map`` prefix, else
    ``…/shared/rest`` → ``$HETPURE_SHARED/rest``; other values unchanged."""
    if not isinstance(value, str):
        return value
    for old, new in (path_map or {}).items():
        if value == old or value.startswith(old.rstrip("/") + "/"):
            return new.rstrip("/") + value[len(old.rstrip("/")):]
    m = _SHARED_PART.match(value)
    return f"$HETPURE_SHARED/{m.group(1)}" if m else value


def _mapped_config(cfg: dict[str, Any], folder: Path, path_map: dict[str, str] | None) -> dict[str, Any]:
    cfg = json.loads(json.dumps(cfg))
    for section, key in (("data", "root"), ("classifier", "path"), ("diffusion", "path"), ("diffusion", "config")):
        if section in cfg and key in cfg[section]:
            cfg[section][key] = map_path(cfg[section][key], path_map)
    cfg.setdefault("run", {})["out"] = str(folder)
    return cfg


def _rewrite_records(path: Path, old: str, new: str) -> int:
    records = read_records(path)
    changed = 0
    for r in records:
        if r.get("settings_hash") == old:
            r["settings_hash"] = new
            changed += 1
    if changed:
        tmp = path.with_name(f".{path.name}.migrate.tmp")
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
        os.replace(tmp, path)
    return changed


def migrate_run(folder: str | Path, path_map: dict[str, str] | None = None) -> dict[str, Any]:
    """Migrate one run folder; returns ``{folder, status, old_hash, new_hash, records}``."""
    from .runner import identity_of, resolve_config
    from .runner import summary_markdown as _summary_markdown

    folder = Path(folder)
    config_file = folder / "config.json"
    stored = json.loads(config_file.read_text())
    old = stored.get("settings_hash")
    if stored.get("identity", {}).get("format") == IDENTITY_FORMAT:
        return {"folder": str(folder), "status": "current", "old_hash": old, "new_hash": old, "records": 0}
    cfg = resolve_config(_mapped_config(stored["config"], folder, path_map))
    identity = identity_of(cfg)
    from .identity import identity_hash

    new = identity_hash(identity)
    changed = sum(_rewrite_records(p, old, new) for p in sorted(folder.glob("records*.jsonl")))
    write_json_atomic(config_file, {"settings_hash": new, "identity": identity,
                                    "config": portable_config(cfg, folder)})
    summary_file = folder / "summary.json"
    if summary_file.exists():
        summary = json.loads(summary_file.read_text())
        if summary.get("settings_hash") == old:
            summary["settings_hash"] = new
        summary["config"] = portable_config(resolve_config(_mapped_config(summary["config"], folder, path_map)),
                                            folder)
        write_json_atomic(summary_file, summary)
        (folder / "summary.md").write_text(_summary_markdown(summary))
    return {"folder": str(folder), "status": "migrated", "old_hash": old, "new_hash": new, "records": changed}


def migrate_tree(root: str | Path, path_map: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Migrate every run folder (a folder holding ``config.json``) under ``root``."""
    return [migrate_run(c.parent, path_map) for c in sorted(Path(root).rglob("config.json"))]

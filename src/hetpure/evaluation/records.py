"""Records of a run folder: one JSON line per sample, appended atomically, read without side effects.

* :func:`read_records` never writes. A last line without its newline is kept when it parses (a complete
  record whose newline is missing) and ignored when it does not (a torn append, or another process's
  append in flight); a corrupt line before the last is an error naming the file and line.
* :func:`append_records` writes all lines of a batch with one ``write`` on an ``O_APPEND`` descriptor, then
  fsyncs: a kill loses at most that batch, and concurrent appends never interleave.
* :class:`RunLock` (``filelock``) makes one process at a time the writer of a run folder; only the holder
  repairs a torn tail (:func:`repair_tail`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import RecordsError

LOCK_NAME = ".hetpure.lock"


def _parse(path: Path, data: bytes) -> tuple[list[dict[str, Any]], int]:
    """(records, byte length of the trusted prefix)."""
    records: list[dict[str, Any]] = []
    lines = data.split(b"\n")
    offset = 0
    for number, raw in enumerate(lines, 1):
        last = number == len(lines)
        if not raw.strip():
            offset += len(raw) + (0 if last else 1)
            continue
        try:
            record = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            if last:  # a torn tail: not a record yet
                return records, offset
            raise RecordsError(
                f"{path}, line {number}: not a JSON record ({exc}); the file is left as it is — move the bad "
                "line out (or the whole file, to recompute its samples) and rerun"
            ) from exc
        if not isinstance(record, dict) or "index" not in record:
            raise RecordsError(f"{path}, line {number}: a record must be a JSON object with an 'index'")
        records.append(record)
        offset += len(raw) + (0 if last else 1)
    return records, offset


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSONL file ([] when it does not exist); never modifies the file."""
    p = Path(path)
    if not p.exists():
        return []
    return _parse(p, p.read_bytes())[0]


def repair_tail(path: str | Path) -> int:
    """Cut a torn last line, or add the newline a complete last record lacks; call only under :class:`RunLock`.

    Returns the number of bytes removed."""
    p = Path(path)
    if not p.exists():
        return 0
    data = p.read_bytes()
    _, keep = _parse(p, data)
    if keep < len(data):
        with open(p, "r+b") as fh:
            fh.truncate(keep)
    elif data and not data.endswith(b"\n"):
        append_lines(p, b"\n")
    return len(data) - keep


def append_lines(path: Path, payload: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(payload)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def append_records(path: str | Path, records: list[dict[str, Any]]) -> None:
    """Append whole lines in one write, synced, so a kill loses at most this batch."""
    if records:
        append_lines(Path(path), "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode())


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and ``os.replace``: readers see the old or the new file, whole."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


#: How ``hetpure evaluate`` users name the run folder (the fix in messages about it).
RUN_OUT = "run.out (--out DIR)"


def make_folder(folder: str | Path, named: str = RUN_OUT) -> Path:
    """Create ``folder`` (and its parents) if needed; a folder that cannot be created is a :class:`RecordsError`
    naming the fix in the user's spelling ``named`` (``run.out (--out DIR)``, purify's ``OUTDIR``)."""
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RecordsError(f"cannot create the output folder {path}: {exc.strerror or exc}; fix: make its parent "
                           f"writable, or give another {named}") from exc
    return path


class RunLock:
    """Exclusive writer lock of a run folder (a ``filelock.FileLock`` on ``<folder>/.hetpure.lock``).

    A second run into the same folder is refused at once with the fix, instead of writing every record twice;
    a folder this process cannot write into (read-only, another user's) is refused with the fix too. ``named``
    is how the user names the folder (``run.out (--out DIR)``, or purify's ``OUTDIR`` argument).
    """

    def __init__(self, folder: str | Path, named: str = RUN_OUT) -> None:
        from filelock import FileLock

        self.folder = Path(folder)
        self.named = named
        self._lock = FileLock(str(self.folder / LOCK_NAME))

    def __enter__(self) -> RunLock:
        from filelock import Timeout

        try:
            self._lock.acquire(timeout=0)
        except Timeout as exc:
            raise RecordsError(
                f"another hetpure run is writing into {self.folder} (lock {LOCK_NAME} held); wait for it to "
                f"finish, or give this run another {self.named}"
            ) from exc
        except OSError as exc:  # a read-only or unwritable folder: filelock cannot create its lock file
            raise RecordsError(
                f"cannot write into {self.folder}: {exc.strerror or exc}; fix: make the folder writable "
                f"(chmod u+w), or give this run another {self.named}"
            ) from exc
        if not os.access(self.folder, os.W_OK):  # a lock file that already existed does not prove we can write
            self._lock.release()
            raise RecordsError(
                f"cannot write into {self.folder}: permission denied; fix: make the folder writable (chmod u+w), "
                f"or give this run another {self.named}"
            )
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

"""Files that several processes share: written whole or not at all, read without trusting a half-written end.

The studio and its child processes talk through files in the child's folder (status.json, events.jsonl,
exit.json). A JSON file is written to a temporary name in the same folder and renamed, so a reader never
sees half of it; an event log is appended one line at a time, and a reader skips a line still being written.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
# the same as text, for errors that reach us as a message (safetensors' Rust errors, SQLite's "disk is full")
DISK_FULL_TEXTS = ("no space left", "file too large", "disk quota", "os error 28", "os error 27", "os error 122",
                   "database or disk is full")


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        return True
    return any(t in str(exc).lower() for t in DISK_FULL_TEXTS)


@contextlib.contextmanager
def disk_full_says(what: str, where: Path | str):
    """Turn a full disk (or a file-size or quota limit) while doing `what` into a ResourceError that says so."""
    from studio.core.errors import ResourceError

    try:
        yield
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        raise ResourceError(
            f"The disk filled up while {what} ({str(exc).strip().splitlines()[-1][:160]}); nothing was saved.",
            f"Free space on the drive of {where}, or move the workspace (--home / STUDIO_HOME) to a larger one.",
        ) from exc


def write_json_atomic(path: Path, data: Any) -> None:
    """Write to a temporary file in the same folder, then rename: a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, or {} when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete line of a JSON-lines file; a half-written last line (the writer is busy) is skipped."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def new_folder(parent: Path, prefix: str) -> Path:
    """A new, empty folder `parent/PREFIX-YYYYmmdd-HHMMSS-xxxx`, its name the id of what lives in it. The id
    is taken by creating the folder, so two ids made in the same second never collide."""
    parent.mkdir(parents=True, exist_ok=True)
    while True:
        folder = parent / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue

"""Studio-wide settings: one JSON value per key in the `settings` table (the Ray address, the MLflow tracking
URI, the publish targets experts may use). Reading is for anyone; a change goes through
`accounts.change_setting`, which checks the admin's permission and records it. This module sits below
access.py (whose `require` reads a setting), so it imports neither access nor audit.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from studio.core.db import now

if TYPE_CHECKING:
    from studio.core.workspace import Workspace


def read(ws: Workspace, key: str, default: Any = None) -> Any:
    """The value stored under `key`; `default` when none is (or the workspace predates the table)."""
    with ws.db() as db:
        if "settings" not in db.table_names():
            return default
        rows = list(db["settings"].rows_where("key = ?", [key], select="value_json"))
    return json.loads(rows[0]["value_json"]) if rows else default


def write(ws: Workspace, key: str, value: Any) -> None:
    """Store `value` under `key` (None clears it). Unchecked: actions call accounts.change_setting."""
    with ws.db() as db:
        db["settings"].upsert({"key": key, "value_json": json.dumps(value), "updated_at": now()}, pk="key")


def configured(ws: Workspace, key: str, env: str, *, where: str,
               normalize: Callable[[str], str]) -> tuple[str | None, str]:
    """(the value in use, where it comes from): the stored setting (said as `where`), else the environment
    variable `env` (normalized, said as its name); (None, "") when neither is set."""
    value = read(ws, key)
    if value:
        return value, where
    value = os.environ.get(env, "").strip()
    return (normalize(value), env) if value else (None, "")

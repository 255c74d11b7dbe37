"""The audit log: who did what, when, from where — one SQLite row per action that changes something.

`record` takes the actor from access.current(), so a core action records itself without being told who
asked. Details are small JSON objects; a value that looks like a secret (a key whose name says token,
password, secret or key) is never written.
"""

from __future__ import annotations

import json

from studio.core.access import current
from studio.core.db import now

_SECRET_WORDS = ("token", "password", "secret", "api_key", "apikey", "authorization")


def record(ws, action: str, target: str = "", /, **detail) -> None:
    actor = current()
    clean = {k: ("(hidden)" if any(w in k.lower() for w in _SECRET_WORDS) else v) for k, v in detail.items()}
    with ws.db() as db:
        db["audit"].insert({
            "at": now(), "actor": actor.name, "role": actor.role, "origin": actor.origin, "action": action,
            "target": target or "", "detail_json": json.dumps(clean, default=str, sort_keys=True),
        })


def events(ws, *, limit: int = 200, actor: str | None = None, action: str | None = None) -> list[dict]:
    """The newest events first; `action` matches a prefix ("users" gives every users.* event)."""
    where, args = [], []
    if actor:
        where.append("actor = ?")
        args.append(actor)
    if action:
        where.append("action LIKE ?")
        args.append(action.rstrip(".*") + "%")
    with ws.db() as db:
        rows = db["audit"].rows_where(" AND ".join(where) or None, args, order_by="id desc", limit=limit)
        return [{**{k: v for k, v in row.items() if k != "detail_json"},
                 "detail": json.loads(row["detail_json"] or "{}")} for row in rows]

"""Accounts: users with a role, their passwords as argon2id hashes (argon2-cffi), and the settings an
admin controls (`change_setting`: every studio-wide setting changes through it, checked and audited; they are
stored by settings.py). Who is acting and what each role may do is in access.py."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from studio.core import audit, settings
from studio.core.access import EXPERT_TARGETS_KEY, ROLES, Actor, acting_as, current, require
from studio.core.db import now
from studio.core.errors import Conflict, InvalidInput, NotFound

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_PASSWORD = 8


# --- users -----------------------------------------------------------------------------------------

def _hasher():
    from argon2 import PasswordHasher

    return PasswordHasher()


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise InvalidInput(f"The password is {len(password)} characters long; at least {MIN_PASSWORD} are needed.",
                           "Choose a longer password (a few words work well).")


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise InvalidInput(f"'{role}' is not a role.", f"Use one of: {', '.join(ROLES)}.")


def add_user(ws, name: str, password: str, role: str = "expert") -> dict:
    actor = require(ws, "users.manage")
    if not _NAME.match(name or ""):
        raise InvalidInput(f"'{name}' cannot be a user name.",
                           "Use letters, digits, '.', '_', '-' or '@' (at most 64), starting with a letter or digit.")
    _check_role(role)
    _check_password(password)
    with ws.db() as db:
        if db["users"].count_where("name = ?", [name]):
            raise Conflict(f"A user named '{name}' exists.", f"Change the password with: studio users passwd {name}")
        db["users"].insert({"name": name, "password_hash": _hasher().hash(password), "role": role,
                            "created_at": now(), "created_by": actor.name, "updated_at": now()})
    _audit(ws, "users.add", name, role=role)
    return get_user(ws, name)


def get_user(ws, name: str) -> dict:
    with ws.db() as db:
        rows = list(db["users"].rows_where("name = ?", [name]))
    if not rows:
        raise NotFound(f"There is no user named '{name}'.", "See the users with: studio users list")
    return _public(rows[0])


def list_users(ws) -> list[dict]:
    with ws.db() as db:
        return [_public(r) for r in db["users"].rows_where(order_by="name")]


def has_users(ws) -> bool:
    with ws.db() as db:
        return db["users"].count > 0


def remove_user(ws, name: str) -> None:
    require(ws, "users.manage")
    user = get_user(ws, name)
    if user["role"] == "admin" and _admins(ws) == 1:
        raise Conflict(f"'{name}' is the last admin; without one nobody could manage the studio.",
                       "Add another admin first: studio users add NAME --role admin")
    with ws.db() as db:
        db["users"].delete(name)
    _audit(ws, "users.remove", name)


def set_password(ws, name: str, password: str) -> None:
    actor = current()
    if actor.name != name:  # one's own password needs no admin
        require(ws, "users.manage")
    get_user(ws, name)
    _check_password(password)
    with ws.db() as db:
        db["users"].update(name, {"password_hash": _hasher().hash(password), "updated_at": now()})
    _audit(ws, "users.passwd", name)


def set_role(ws, name: str, role: str) -> dict:
    require(ws, "users.manage")
    _check_role(role)
    user = get_user(ws, name)
    if user["role"] == "admin" and role != "admin" and _admins(ws) == 1:
        raise Conflict(f"'{name}' is the last admin.", "Make another user admin first.")
    with ws.db() as db:
        db["users"].update(name, {"role": role, "updated_at": now()})
    _audit(ws, "users.role", name, role=role, was=user["role"])
    return get_user(ws, name)


def authenticate(ws, name: str, password: str) -> Actor | None:
    """The user's Actor when the password is right; None otherwise (and the attempt is audited)."""
    from argon2.exceptions import InvalidHashError, VerificationError

    with ws.db() as db:
        rows = list(db["users"].rows_where("name = ?", [name]))
    if rows:
        try:
            _hasher().verify(rows[0]["password_hash"], password)
            return Actor(name, rows[0]["role"], "web")
        except (VerificationError, InvalidHashError):
            pass
    with acting_as(Actor(name or "?", "none", "web")):
        _audit(ws, "login.failed", name or "")
    return None


def role_of(ws, name: str) -> str | None:
    with ws.db() as db:
        rows = list(db["users"].rows_where("name = ?", [name], select="role"))
    return rows[0]["role"] if rows else None


def _admins(ws) -> int:
    with ws.db() as db:
        return db["users"].count_where("role = 'admin'")


def _public(row: dict) -> dict:
    return {k: row.get(k) for k in ("name", "role", "created_at", "created_by", "updated_at")}


# --- settings an admin controls ----------------------------------------------------------------------

def change_setting(ws, key: str, value: Any, *, action: str | None = None,
                   check: Callable[[Any], object] | None = None, **detail) -> Any:
    """Store a studio-wide setting (None clears it): admins only; `check(value)` first, so a value that does not
    work is refused, not stored; audited as `action` (settings.KEY by default) with `detail`."""
    require(ws, "settings.change")
    if value is not None and check is not None:
        check(value)
    settings.write(ws, key, value)
    _audit(ws, action or f"settings.{key}", "", **detail)
    return value


def allow_targets(ws, targets: list[str], known: list[str]) -> list[str]:
    def known_only(chosen: list[str]) -> None:
        unknown = [t for t in chosen if t not in known]
        if unknown:
            raise InvalidInput(f"Unknown publish target(s): {', '.join(unknown)}.",
                               f"Known targets: {', '.join(known)}.")

    return change_setting(ws, EXPERT_TARGETS_KEY, targets, action="settings.expert_targets", check=known_only,
                          targets=targets)


def _audit(ws, action: str, target: str, **detail) -> None:
    audit.record(ws, action, target, **detail)

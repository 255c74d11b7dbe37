"""Guarded status changes. Each kind of registry row (run, endpoint, export, deployment) names its allowed
transitions once, in a `Machine`, and every change of its status goes through that machine.

A change is one conditional UPDATE (`... WHERE id = ? AND status IN (the states it may come from)`) whose
row count is checked, so two writers racing for the same row (a cancel and the scheduler's claim, two
starts, a reconcile and a finishing publish) never overwrite each other: exactly one wins, and the other
learns the state the row is really in. `move` raises Conflict for a refused change; `try_move` answers
False, for reconcilers to whom losing such a race is normal.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from studio.core.errors import Conflict, NotFound

if TYPE_CHECKING:
    from studio.core.workspace import Workspace

_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


def _column(name: str) -> str:
    if not _NAME.match(name):  # column names come from code, never from a user; refuse anything else
        raise ValueError(f"not a column name: {name!r}")
    return f"[{name}]"


@dataclass(frozen=True)
class Machine:
    table: str
    noun: str  # "Run", "Endpoint": how an error names a row
    transitions: dict[str, tuple[str, ...]]  # state -> the states it may become
    listing: str = ""  # where the user sees these rows: the fix of a refused change points there
    hints: dict[str, str] = field(default_factory=dict)  # target state -> the fix when a change to it is refused

    @property
    def states(self) -> set[str]:
        return set(self.transitions) | {s for targets in self.transitions.values() for s in targets}

    def sources(self, to: str, expect: Iterable[str] | None = None) -> tuple[str, ...]:
        """The states a row may be in to become `to` (narrowed to `expect`)."""
        found = tuple(s for s, targets in self.transitions.items() if to in targets)
        if expect is not None:
            wanted = set(expect)
            unknown = wanted - self.states
            if unknown:
                raise ValueError(f"{self.noun}: unknown states {sorted(unknown)}")
            found = tuple(s for s in found if s in wanted)
        if not found:
            raise ValueError(f"{self.noun}: nothing may become '{to}'" + (f" from {sorted(expect)}" if expect else ""))
        return found

    # --------------------------------------------------------------------------------- changes

    def try_move(self, ws: Workspace, row_id: str, to: str, *, expect: Iterable[str] | None = None,
                  unchanged: dict[str, Any] | None = None, **fields: Any) -> bool:
        """Set status = `to` (and `fields`) if the row is in a state that may become `to`; False if not.

        `unchanged`: columns that must still hold these values (None: NULL), when the decision was taken on
        a snapshot of the row, e.g. "its process, pid 123, is dead" must not fail a row that has a new pid."""
        return self._update(ws, row_id, self.sources(to, expect), {"status": to, **fields}, unchanged)

    def move(self, ws: Workspace, row_id: str, to: str, *, expect: Iterable[str] | None = None,
             unchanged: dict[str, Any] | None = None, **fields: Any) -> None:
        """As try_move, but a refused change raises Conflict naming the state the row is in (NotFound if gone)."""
        if not self.try_move(ws, row_id, to, expect=expect, unchanged=unchanged, **fields):
            current = self.current(ws, row_id)
            raise Conflict(f"{self.noun} '{row_id}' is {current}, so it cannot become {to}.",
                           self.hints.get(to) or f"Look at its current state{self.listing} and try again.")

    def update_while(self, ws: Workspace, row_id: str, states: Iterable[str], **fields: Any) -> bool:
        """Set `fields` (not the status) only while the row is in one of `states`; False if it is not."""
        if "status" in fields:
            raise ValueError("a status changes through move(), where its transition is checked")
        return self._update(ws, row_id, tuple(states), fields)

    def delete_when(self, ws: Workspace, row_id: str, states: Iterable[str]) -> None:
        """Delete the row if it is in one of `states`; else Conflict naming the state it is in."""
        states = tuple(states)
        marks = ", ".join("?" for _ in states)
        with ws.db() as db:
            cursor = db.conn.execute(f"DELETE FROM {_column(self.table)} WHERE id = ? AND status IN ({marks})",
                                     [row_id, *states])
            deleted = cursor.rowcount
        if deleted != 1:
            current = self.current(ws, row_id)
            raise Conflict(f"{self.noun} '{row_id}' is {current}, so it cannot be deleted now.",
                           self.hints.get("deleted") or f"Stop it first{self.listing}.")

    def current(self, ws: Workspace, row_id: str) -> str:
        with ws.db() as db:
            row = db.conn.execute(f"SELECT status FROM {_column(self.table)} WHERE id = ?", [row_id]).fetchone()
        if row is None:
            raise NotFound(f"There is no {self.noun.lower()} '{row_id}'.", f"It may have been deleted{self.listing}.")
        return row[0]

    def _update(self, ws: Workspace, row_id: str, states: tuple[str, ...], fields: dict[str, Any],
                unchanged: dict[str, Any] | None = None) -> bool:
        assignments = ", ".join(f"{_column(k)} = ?" for k in fields)
        marks = ", ".join("?" for _ in states)
        sql = f"UPDATE {_column(self.table)} SET {assignments} WHERE id = ? AND status IN ({marks})"
        args = [*fields.values(), row_id, *states]
        for column, value in (unchanged or {}).items():
            sql += f" AND {_column(column)} IS ?"  # IS: NULL matches NULL
            args.append(value)
        with ws.db() as db:
            changed = db.conn.execute(sql, args).rowcount
        return changed == 1

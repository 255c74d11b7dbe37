"""Runs in the registry: what a run is, how its status may change, and the user's actions on it
(resume, delete). Submitting is in submit.py; cancel and the queue's own moves are in scheduler.py.

A run goes queued → running → succeeded | failed | cancelled, and a failed or cancelled run may be
queued again (resume). Every status change goes through `transition`, a conditional update checked
against RUN_STATES: a cancel and the scheduler's claim of the same run can race, and exactly one wins.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from studio.core import access, audit
from studio.core.db import now
from studio.core.errors import Conflict, NotFound
from studio.core.states import Machine
from studio.core.timetext import short
from studio.training.folder import RunFolder
from studio.training.launchers.base import CPU_SLOT, Attempt, Handle

if TYPE_CHECKING:
    from studio.core.workspace import Workspace

ACTIVE = ("queued", "running")
RUN_STATES = Machine(
    table="runs", noun="Run", listing=" (`studio runs list`, or the Runs tab)",
    transitions={
        "queued": ("running", "cancelled"),  # the scheduler claims it, or the user cancels it first
        "running": ("succeeded", "failed", "cancelled"),  # its process ended (or could not start)
        "failed": ("queued",),  # resume
        "cancelled": ("queued",),  # resume
        "succeeded": (),  # final: re-run makes a new run
    },
    hints={"queued": "Another action changed the run meanwhile; look at it again before resuming.",
           "deleted": "Cancel it first, then delete it."},
)


class Run(BaseModel):
    id: str
    name: str = ""
    dataset_id: str = ""
    base_model: str = ""
    preset: str = ""
    status: str
    created_at: str
    queued_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    pid: int | None = None
    proc_start: float | None = None
    launcher: str | None = None
    launch_ref: str | None = None
    gpu: int | None = None
    devices: str | None = None  # "0,1": every GPU a run of several processes holds (gpu is the first)
    error: str | None = None
    fix: str | None = None
    notice: str | None = None
    step: int | None = None
    max_steps: int | None = None
    loss: float | None = None
    eval_loss: float | None = None
    cancel_requested_at: str | None = None
    attempts: int | None = None
    path: str
    config: dict[str, Any] = {}
    created_by: str | None = None  # the account that started it (the machine's user from the CLI)

    @classmethod
    def from_row(cls, row: dict) -> Run:
        row = dict(row)
        row["config"] = json.loads(row.pop("config_json", None) or "{}")
        return cls.model_validate({k: v for k, v in row.items() if v is not None})

    @property
    def folder(self) -> RunFolder:
        return RunFolder(Path(self.path))

    @property
    def label(self) -> str:
        """How a list names it: what it is, how it was trained, when it ended and its last loss, then its id
        (two runs of one model on one dataset are told apart before the id)."""
        objective = self.config.get("objective", "sft")
        parts = [self.name or self.id, objective.upper() if objective != "sft" else "", self.preset,
                 short(self.finished_at or self.created_at)[5:],
                 f"loss {self.loss:.2f}" if self.loss is not None else ""]
        return " · ".join(p for p in parts if p) + f" ({self.id})"

    @property
    def progress(self) -> float:
        if self.status == "succeeded":
            return 1.0
        return min(1.0, (self.step or 0) / self.max_steps) if self.max_steps else 0.0

    def attempt(self, slot: int | None = None) -> Attempt:
        """The current (or, before launch, the next) attempt as its launcher sees it."""
        slot = self.gpu if slot is None else slot
        return Attempt(run_id=self.id, folder=self.folder, slot=CPU_SLOT if slot is None else slot,
                       number=self.attempts or 1,
                       handle=Handle(pid=self.pid, started=self.proc_start, ref=self.launch_ref),
                       devices=tuple(int(d) for d in (self.devices or "").split(",") if d.strip()))


# ------------------------------------------------------------------------------------------ reading


def get_run(ws: Workspace, run_id: str) -> Run:
    with ws.db() as db:
        rows = list(db["runs"].rows_where("id = ?", [run_id]))
    if not rows:
        raise NotFound(f"There is no run '{run_id}'.", "See `studio runs list` (or the Runs tab) for the runs.")
    return Run.from_row(rows[0])


def list_runs(ws: Workspace, status: str | None = None) -> list[Run]:
    with ws.db() as db:
        where, args = ("status = ?", [status]) if status else (None, [])
        rows = list(db["runs"].rows_where(where, args, order_by="created_at desc, rowid desc"))
    return [Run.from_row(r) for r in rows]


def queue(ws: Workspace) -> list[Run]:
    """Queued runs in the order they will start."""
    with ws.db() as db:
        rows = list(db["runs"].rows_where("status = 'queued'", order_by="queued_at, rowid"))
    return [Run.from_row(r) for r in rows]


# ------------------------------------------------------------------------------------------ changing


def transition(ws: Workspace, run_id: str, to: str, *, expect: tuple[str, ...] | None = None,
               quiet: bool = False, unchanged: dict[str, Any] | None = None, **fields: Any) -> bool:
    """The one way a run's status changes: to `to`, from a state RUN_STATES allows (narrowed to `expect`),
    with `fields` written in the same update. A refused change raises Conflict, or returns False with
    quiet=True (a reconciler that lost a race to another one). `unchanged`: see Machine.try_move."""
    if quiet:
        return RUN_STATES.try_move(ws, run_id, to, expect=expect, unchanged=unchanged, **fields)
    RUN_STATES.move(ws, run_id, to, expect=expect, unchanged=unchanged, **fields)
    return True


def record(ws: Workspace, run_id: str, *, while_in: tuple[str, ...] = ("running",), **fields: Any) -> bool:
    """Write fields that are not the status (progress, pid, a notice) while the run is still `while_in`."""
    return RUN_STATES.update_while(ws, run_id, while_in, **fields)


# ------------------------------------------------------------------------------------------ actions


def resume(ws: Workspace, run_id: str) -> Run:
    """Queue a cancelled or failed run again; its process continues from the last checkpoint (with the
    optimizer and scheduler state, the step count going on) or starts over if there is none."""
    access.require(ws, "train.resume")
    run = get_run(ws, run_id)
    if run.status in ACTIVE:
        raise Conflict(f"Run '{run_id}' is already {run.status}.", "Wait for it, or cancel it first.")
    if run.status == "succeeded":
        raise Conflict(f"Run '{run_id}' has finished successfully; there is nothing to resume.",
                       "Re-run it to train again with the same settings (Runs tab, or `studio runs rerun ID`).")
    transition(ws, run_id, "queued", expect=("failed", "cancelled"), queued_at=now(), finished_at=None, pid=None,
               proc_start=None, launch_ref=None, error=None, fix=None, cancel_requested_at=None)
    audit.record(ws, "train.resume", run_id)
    return get_run(ws, run_id)


def delete(ws: Workspace, run_id: str) -> None:
    """Delete a finished run and its folder; refused while it runs or while something refers to it."""
    access.require(ws, "train.delete")
    run = get_run(ws, run_id)
    if run.status in ACTIVE:
        raise Conflict(f"Run '{run_id}' is {run.status}.", "Cancel it first, then delete it.")
    with ws.db() as db:
        users = []
        for table in ("endpoints", "deployments", "evaluations", "exports"):
            if table in db.table_names():
                count = db.execute(f"SELECT count(*) FROM [{table}] WHERE run_id = ?", [run_id]).fetchone()[0]
                if count:
                    users.append(f"{count} {table}")
    if users:
        raise Conflict(
            f"Run '{run_id}' is still used by {', '.join(users)}.",
            "Remove those first (Chat/Evaluate/Publish tabs); a deployment must always know its run.",
        )
    RUN_STATES.delete_when(ws, run_id, ("succeeded", "failed", "cancelled"))
    shutil.rmtree(run.path, ignore_errors=True)
    audit.record(ws, "train.delete", run_id, name=run.name)

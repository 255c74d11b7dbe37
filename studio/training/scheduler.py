"""The queue's moves: claim the oldest queued run for a free device, admit it (GPU memory), hand it to its
launcher, and reconcile running runs with their processes; cancel; the background scheduler thread.

One job per device at a time (each GPU, or the CPU when there is none). The oldest queued run starts when
its device is free, claimed in one IMMEDIATE transaction, so two schedulers (the studio's background
thread and `studio runs worker`) never start the same run. The training process outlives the studio; on
every pass its launcher is asked whether it still runs, which is also how a restarted studio re-adopts it.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from studio.core import access, audit, procs
from studio.core.db import now, seconds_since
from studio.core.errors import Conflict
from studio.training import launchers
from studio.training.folder import TERMINAL_STATES
from studio.training.launchers.base import CLUSTER_SLOT, CPU_SLOT, Attempt
from studio.training.runs import ACTIVE, Run, get_run, list_runs, record, transition
from studio.training.summary import summarize

if TYPE_CHECKING:
    from studio.core.workspace import Workspace

LAUNCH_GRACE_S = 120.0  # a run claimed but without a pid for this long: its scheduler died mid-launch
CANCEL_GRACE_S = 180.0  # a cancelled run still running this long after the request is killed (a hung step)

def device_slots() -> list[int]:
    """One slot per CUDA GPU; the CPU is the single slot when there is none."""
    from studio.core.system import gpus

    found = gpus()
    return [g["index"] for g in found] if found else [CPU_SLOT]


def claim_next(ws: Workspace, slot: int, slots: list[int] | None = None) -> Run | None:
    """Atomically move the oldest queued run to running on `slot`, if nothing else runs there.

    A run of N processes on GPUs takes `slot` and the next N-1 free GPUs of `slots`; until that many are free
    it waits at the head of the queue (first in, first out: smaller runs behind it do not overtake it)."""
    with ws.db() as db:
        conn = db.conn
        conn.execute("BEGIN IMMEDIATE")  # one writer at a time: the check and the update are one step
        busy = _busy(conn)
        if slot in busy and slot != CLUSTER_SLOT:  # a cluster takes every run it is sent; it queues them itself
            conn.rollback()
            return None
        remote = [name for name, launcher in launchers.LAUNCHERS.items() if launcher.remote]
        row = conn.execute(  # a device here takes the oldest local run, CLUSTER_SLOT the oldest remote one
            f"SELECT id, config_json FROM runs WHERE status = 'queued' AND (coalesce(launcher, 'local') IN "
            f"({', '.join('?' * len(remote))})) = ? ORDER BY queued_at, rowid LIMIT 1", [*remote, slot == CLUSTER_SLOT]
        ).fetchone()
        if row is None:
            conn.rollback()
            return None
        devices = [slot]
        processes = int(json.loads(row[1] or "{}").get("processes") or 1)
        if processes > 1 and slot not in (CPU_SLOT, CLUSTER_SLOT):
            free = [s for s in (slots if slots is not None else device_slots()) if s not in busy and s != slot]
            if len(free) < processes - 1:
                conn.rollback()
                return None
            devices += free[: processes - 1]
        claimed = conn.execute(  # the guarded queued -> running of RUN_STATES, inside this transaction
            "UPDATE runs SET status = 'running', gpu = ?, devices = ?, started_at = ?, pid = NULL, proc_start = NULL, "
            "launch_ref = NULL, error = NULL, fix = NULL WHERE id = ? AND status = 'queued'",
            [slot, ",".join(map(str, devices)) if len(devices) > 1 else None, now(), row[0]],
        ).rowcount
        conn.commit()
    return get_run(ws, row[0]) if claimed == 1 else None


def _busy(conn: Any) -> set[int]:
    """Every slot a running run holds (all GPUs of a run of several processes)."""
    held: set[int] = set()
    for gpu, devices in conn.execute("SELECT gpu, devices FROM runs WHERE status = 'running'"):
        held.update(int(d) for d in (devices or "").split(",") if d.strip())
        if gpu is not None:
            held.add(int(gpu))
    return held


def admit(ws: Workspace, run: Run, slot: int) -> None:
    """On a GPU: if the run's estimated peak exceeds the free memory, unload local chat endpoints first."""
    if slot in (CPU_SLOT, CLUSTER_SLOT):
        return
    from studio.core.system import gpus
    from studio.training.fitcheck import SAFETY_MARGIN, gb

    estimate = run.folder.read_manifest().get("fit_check") or {}
    peak = estimate.get("peak_bytes")
    gpu = next((g for g in gpus() if g["index"] == slot), None)
    if not peak or gpu is None:
        return
    free = gpu["memory_free_gb"] * 1024**3
    if peak <= free * SAFETY_MARGIN:
        return
    from studio.serving.endpoints import stop_local_endpoints

    reason = f"stopped to free GPU memory for training run {run.id} (needs about {gb(peak)}, {gb(free)} was free)"
    stopped = stop_local_endpoints(ws, reason)
    notes = [run.notice] if run.notice else []
    if stopped:
        notes.append(f"Stopped chat endpoint(s) {', '.join(stopped)} to free GPU memory for this run "
                     f"(it needs about {gb(peak)}; {gb(free)} was free). Start them again from the Chat tab.")
    gpu = next((g for g in gpus() if g["index"] == slot), gpu)
    if peak > gpu["memory_free_gb"] * 1024**3 * SAFETY_MARGIN:
        notes.append(f"Only {gpu['memory_free_gb']} GB of GPU memory is free and the run needs about {gb(peak)}: "
                     "it may run out of memory. Close other programs that use the GPU.")
    record(ws, run.id, notice=" ".join(notes) or None)


def launch(ws: Workspace, run: Run, slot: int) -> Run:
    """Hand a claimed run to its launcher and record the handle; a cancel that came meanwhile is passed on."""
    launcher = launchers.get(run.launcher)
    number = (run.attempts or 0) + 1
    handle = launcher.start(Attempt(run_id=run.id, folder=run.folder, slot=slot, number=number))
    kept = record(ws, run.id, pid=handle.pid, proc_start=handle.started, launch_ref=handle.ref, attempts=number,
                  launcher=launcher.name)
    run = get_run(ws, run.id)
    if not kept or run.cancel_requested_at:  # cancelled (or failed by a reconciler) while it was being launched
        launcher.cancel(run.attempt())
    return run


def schedule(ws: Workspace) -> list[str]:
    """One scheduler pass: reconcile, then start the next queued run on every free device. Returns the
    ids started."""
    reconcile(ws)
    started = []
    slots = device_slots()
    for slot in [*slots, CLUSTER_SLOT]:
        run = claim_next(ws, slot, slots)
        if run is None:
            continue
        try:
            admit(ws, run, slot)
            launch(ws, run, slot)
        except Exception as exc:  # a run that cannot even start must not block the queue
            transition(ws, run.id, "failed", expect=("running",), quiet=True, finished_at=now(),
                       error=f"The training process could not be started: {exc}",
                       fix="Check the studio's installation (`studio doctor`), then resume the run.")
            continue
        started.append(run.id)
    return started


def reconcile(ws: Workspace) -> list[str]:
    """Bring every running run in line with its process: re-adopt live ones (refreshing progress), kill
    one that ignored a cancel for CANCEL_GRACE_S, finish dead ones from their status.json, or fail them
    with how the process ended and its last log lines. Returns the ids whose status changed."""
    changed = []
    for run in list_runs(ws, "running"):
        if run.pid is None and run.launch_ref is None:
            waited = seconds_since(run.started_at)
            if waited is not None and waited > LAUNCH_GRACE_S and transition(
                    ws, run.id, "failed", expect=("running",), quiet=True, unchanged=_handle(run), finished_at=now(),
                    error="The studio stopped while it was starting this run.", fix="Resume the run."):
                changed.append(run.id)
            continue
        launcher = launchers.get(run.launcher)
        summary = summarize(run.folder)
        if launcher.poll(run.attempt()):
            record(ws, run.id, **summary["progress"])
            waited = seconds_since(run.cancel_requested_at)
            if waited is not None and waited > CANCEL_GRACE_S:
                launcher.kill(run.attempt(), grace=CANCEL_GRACE_S)
            else:
                continue
        to, fields = _outcome(run, launcher)
        if transition(ws, run.id, to, expect=("running",), quiet=True, unchanged=_handle(run), **fields,
                      **summary["progress"]):
            changed.append(run.id)
    return changed


def _handle(run: Run) -> dict[str, Any]:
    """The columns a reconcile decision was taken on: it applies only to that very attempt."""
    return {"pid": run.pid, "launch_ref": run.launch_ref, "attempts": run.attempts}


def _outcome(run: Run, launcher: launchers.Launcher) -> tuple[str, dict[str, Any]]:
    """(the final status, the fields to record) of a run whose process has ended."""
    fields: dict[str, Any] = {"finished_at": now()}
    status = run.folder.read_status()
    ending = launcher.ending(run.attempt())
    died = None if run.cancel_requested_at else launcher.failure(run.attempt())
    if died:  # a rank of a group died: that, not what the ranks left behind saw, is why the run failed
        last = run.folder.last_checkpoint()
        return "failed", {**fields, "error": died, "fix": "Resume the run: it continues from its last checkpoint"
                          + (f" ({last.name})." if last else " (none was saved yet, so from the beginning).")}
    if status.get("state") in TERMINAL_STATES:
        return status["state"], {**fields, "error": status.get("reason"), "fix": status.get("fix")}
    if run.cancel_requested_at:  # stopped before it could save anything (starting up, or killed when hung)
        fields.update(error=None, fix=None)
        if ending.by_stop:
            note = (f"It did not stop within {CANCEL_GRACE_S:.0f} s of the cancel, so it was killed; its last "
                    "checkpoint is kept and resume continues from there.")
            fields["notice"] = " ".join(filter(None, [run.notice, note]))
        return "cancelled", fields
    last = run.folder.last_checkpoint()
    tail = procs.tail(run.folder.log, 8, skip=("it/s]",))
    return "failed", {
        **fields,
        "error": f"The training process stopped without finishing (it was killed or crashed): {ending.describe()}. "
        + ("Last log lines: " + " | ".join(tail) if tail else "It left no log."),
        "fix": (f"Resume the run: it continues from its last checkpoint ({last.name})." if last else
                "Resume the run: no checkpoint was saved yet, so it starts again from the beginning."),
    }


def cancel(ws: Workspace, run_id: str, wait: float = 0.0) -> Run:
    """Queued: cancelled at once. Running: its launcher asks the process to stop; it stops at the next
    step, saves a checkpoint and the adapter, and ends as cancelled (a process that ignores the request
    is killed after CANCEL_GRACE_S). `wait` seconds: wait for the end."""
    access.require(ws, "train.cancel")
    stamp = now()
    if transition(ws, run_id, "cancelled", expect=("queued",), quiet=True, finished_at=stamp,
                  cancel_requested_at=stamp):
        audit.record(ws, "train.cancel", run_id, was="queued")
        return get_run(ws, run_id)
    # not queued (any more): the scheduler may have claimed it a moment ago, so it may be running
    if not record(ws, run_id, cancel_requested_at=stamp):
        run = get_run(ws, run_id)
        raise Conflict(f"Run '{run_id}' is not running (it is {run.status}).", "Only queued or running runs stop.")
    audit.record(ws, "train.cancel", run_id, was="running")
    run = get_run(ws, run_id)
    if run.pid is not None or run.launch_ref is not None:  # else its launch sees the request and passes it on
        launchers.get(run.launcher).cancel(run.attempt())
    deadline = time.monotonic() + wait
    while wait and time.monotonic() < deadline:
        reconcile(ws)
        if get_run(ws, run_id).status != "running":
            break
        time.sleep(0.2)
    return get_run(ws, run_id)


# ------------------------------------------------------------------------------------------ workers


def worker(
    ws: Workspace,
    *,
    until: Callable[[], bool] | None = None,
    poll: float = 1.0,
    stop: threading.Event | None = None,
    on_tick: Callable[[], None] | None = None,
) -> None:
    """Run the queue in the foreground: schedule every `poll` seconds until `until()` is true or `stop`
    is set (`studio runs worker`, `studio train --wait`)."""
    stop = stop or threading.Event()
    while not stop.is_set():
        schedule(ws)
        if on_tick is not None:
            on_tick()
        if until is not None and until():
            return
        stop.wait(poll)


_WAKE: list[threading.Event] = []  # one per background scheduler thread of this process


def nudge() -> None:
    """Ask this process's background scheduler for a pass now rather than at its next interval (the Train tab's
    Start: the run is running within a second). Nothing happens where no scheduler thread runs."""
    for wake in _WAKE:
        wake.set()


def start_scheduler(ws: Workspace, interval: float = 2.0) -> threading.Event:
    """The studio's background scheduler thread: reconcile on start, then keep the queue moving.
    Set the returned event to stop it."""
    stop = threading.Event()
    wake = threading.Event()
    _WAKE.append(wake)
    reconcile(ws)

    def loop() -> None:
        while not stop.is_set():
            try:
                schedule(ws)
            except Exception as exc:  # keep the thread alive; the next pass retries
                print(f"scheduler: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            wake.wait(interval)  # a nudge, or the interval
            wake.clear()
        _WAKE.remove(wake)

    threading.Thread(target=loop, name="studio-scheduler", daemon=True).start()
    return stop


def wait_for(ws: Workspace, run_id: str, timeout: float, poll: float = 0.5) -> Run:
    """Wait (scheduling meanwhile) until the run is no longer queued or running."""
    deadline = time.monotonic() + timeout
    worker(ws, until=lambda: get_run(ws, run_id).status not in ACTIVE or time.monotonic() > deadline,
           poll=poll)
    return get_run(ws, run_id)

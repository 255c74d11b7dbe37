"""What the studio is doing right now, in one small dictionary: the device, the training queue and the live
endpoints. The web app's status strip asks for it every few seconds, so it reads only SQLite, the process
table and nvidia-smi: no torch, no model, nothing heavy.

It sits above the stages it reads (core, training, serving), like the front ends that use it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from studio.core.errors import NotFound
from studio.core.system import device_summary
from studio.serving.endpoints import list_endpoints
from studio.training.folder import TERMINAL_STATES
from studio.training.runs import ACTIVE, get_run, list_runs

if TYPE_CHECKING:
    from studio.core.workspace import Workspace


def queue_state(ws: Workspace) -> dict[str, Any]:
    """The runs training now (with their progress) and how many wait; `active` maps every queued or running
    run to its status, for `finished_since`."""
    active = [r for r in list_runs(ws) if r.status in ACTIVE]
    running = [{"id": r.id, "name": r.name, "step": r.step or 0, "max_steps": r.max_steps,
                "progress": round(r.progress, 3), "cancelling": bool(r.cancel_requested_at)}
               for r in active if r.status == "running"]
    return {"running": running, "queued": sum(r.status == "queued" for r in active),
            "active": {r.id: r.status for r in active}}


def snapshot(ws: Workspace, *, device: bool = True) -> dict[str, Any]:
    """The device (GPUs with free memory, or the CPU), the queue and the live endpoints. `device=False` skips
    the device (nvidia-smi), which changes slowly and may be asked less often."""
    endpoints = [{"id": e.id, "name": e.name, "url": e.url, "status": e.status, "kind": e.kind}
                 for e in list_endpoints(ws, include_stopped=False)]
    return {"device": device_summary() if device else None, "queue": queue_state(ws), "endpoints": endpoints}


def finished_since(ws: Workspace, watched: dict[str, str]) -> list[dict[str, Any]]:
    """The runs among `watched` (id → status when last seen active) that have ended since: each with its
    status, name and error, for a notification. A run deleted meanwhile is left out."""
    ended = []
    for run_id in watched:
        try:
            run = get_run(ws, run_id)
        except NotFound:  # deleted meanwhile: nothing to tell
            continue
        if run.status in TERMINAL_STATES:
            ended.append({"id": run.id, "name": run.name, "status": run.status, "error": run.error,
                          "loss": run.loss, "step": run.step, "max_steps": run.max_steps})
    return ended

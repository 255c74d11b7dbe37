"""Training jobs: plan and submit runs, the FIFO queue in SQLite, admission, launch, reconcile,
cancel, resume, re-run and delete. The studio side of the run-folder contract (studio/training/folder.py).

A run goes queued → running → succeeded | failed | cancelled. One job per device at a time (each GPU,
or the CPU when there is none); the oldest queued run starts when its device is free, claimed in one
IMMEDIATE transaction so two schedulers (the studio's background thread and `studio runs worker`)
never start the same run. The training process runs in its own session and outlives the studio; its
pid and start time identify it, so a restarted studio re-adopts it instead of mistaking a reused pid.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from studio.core.db import now
from studio.core.errors import Conflict, NotFound, ResourceError
from studio.core.paths import PROJECT_ROOT
from studio.training.config import TrainConfig, load_yaml
from studio.training.folder import TERMINAL_STATES, RunFolder, write_json_atomic

if TYPE_CHECKING:
    from studio.core.workspace import Workspace
    from studio.training.fitcheck import FitEstimate

ACTIVE = ("queued", "running")
CPU_SLOT = -1
LAUNCH_GRACE_S = 120.0  # a run claimed but without a pid for this long: its scheduler died mid-launch


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
    gpu: int | None = None
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

    @classmethod
    def from_row(cls, row: dict) -> Run:
        row = dict(row)
        row["config"] = json.loads(row.pop("config_json", None) or "{}")
        return cls.model_validate({k: v for k, v in row.items() if v is not None})

    @property
    def folder(self) -> RunFolder:
        return RunFolder(Path(self.path))

    @property
    def progress(self) -> float:
        if self.status == "succeeded":
            return 1.0
        return min(1.0, (self.step or 0) / self.max_steps) if self.max_steps else 0.0


class Plan(BaseModel):
    """What the Train tab shows before Start: the frozen config, and the fit check for it."""

    config: TrainConfig
    estimate: dict[str, Any] | None = None  # FitEstimate as a dict (None: model shape unknown)
    summary: str
    device: str


# ------------------------------------------------------------------------------------------ planning


def plan(ws: Workspace, cfg: TrainConfig) -> Plan:
    """The fit check for `cfg` on this machine: the first GPU (or the CPU), this dataset's lengths."""
    import psutil

    from studio.core.errors import ModelUnavailable
    from studio.core.system import gpus
    from studio.data.store import get_version
    from studio.models.catalog import model_shape
    from studio.training import fitcheck

    get_version(ws, cfg.dataset_id)  # a missing dataset is refused before anything else
    shape = model_shape(ws, cfg.base_model)
    found = gpus()
    gpu = found[0] if found else None
    device = f"GPU 0 ({gpu['name']})" if gpu else "the CPU"
    if shape is None:
        return Plan(config=cfg, summary=f"No fit check: the size of '{cfg.base_model}' is unknown until it is "
                    "downloaded (it is not in the catalog).", device=device)
    try:
        stats = fitcheck.dataset_stats(ws, cfg.dataset_id, cfg.base_model)
    except ModelUnavailable:  # a local folder that is not a model: the run itself will say so
        stats = {}
    estimate = fitcheck.estimate(shape, cfg, stats, gpu, available_bytes=psutil.virtual_memory().available)
    return Plan(config=cfg, estimate=estimate.model_dump(), summary=estimate.summary(), device=device)


# ------------------------------------------------------------------------------------------ submitting


def _new_id() -> str:
    return time.strftime("run-%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def submit(
    ws: Workspace,
    cfg: TrainConfig,
    *,
    preset: str = "",
    overrides: dict[str, Any] | None = None,
    name: str | None = None,
    force: bool = False,
    estimate: FitEstimate | dict | None = None,
) -> Run:
    """Freeze `cfg` into a new run folder, register the run and queue it.

    Refused (ResourceError, with the change that fits) when the fit check says it cannot fit the
    device's whole memory, unless force=True.
    """
    from studio.data.store import get_version
    from studio.models.catalog import resolve

    version = get_version(ws, cfg.dataset_id)
    resolved = resolve(ws, cfg.base_model)
    if estimate is None:
        estimate = plan(ws, cfg).estimate
    elif not isinstance(estimate, dict):
        estimate = estimate.model_dump()
    if estimate and not force:
        _refuse_if_too_big(estimate)
    run_id = _new_id()
    folder = RunFolder(ws.runs_dir / run_id)
    folder.path.mkdir(parents=True)
    folder.config.write_text(cfg.to_yaml(), encoding="utf-8")
    manifest = {
        "run_id": run_id,
        "created_at": now(),
        "preset": preset,
        "overrides": overrides or {},
        "base_model": {"name": cfg.base_model, "source": resolved.source, "local": resolved.local},
        "dataset": {
            "id": version.id, "name": version.name, "content_hash": version.content_hash,
            "template": version.template or "model", "system_prompt": version.system_prompt,
            "path": version.path, "rows_train": version.rows_train, "rows_val": version.rows_val,
        },
        "fit_check": estimate,
    }
    write_json_atomic(folder.manifest, manifest)
    stamp = now()
    row = {
        "id": run_id, "name": (name or "").strip() or f"{cfg.base_model.split('/')[-1]} on {version.name}",
        "dataset_id": version.id, "base_model": cfg.base_model, "preset": preset,
        "config_json": cfg.model_dump_json(), "status": "queued", "created_at": stamp, "queued_at": stamp,
        "path": str(folder.path), "attempts": 0, "step": 0,
        "max_steps": (estimate or {}).get("steps") or None,
    }
    try:
        with ws.db() as db:
            db["runs"].insert(row)
    except BaseException:
        shutil.rmtree(folder.path, ignore_errors=True)
        raise
    return get_run(ws, run_id)


def _refuse_if_too_big(estimate: dict) -> None:
    from studio.core.system import gpus
    from studio.training.fitcheck import SAFETY_MARGIN, gb

    peak = estimate["peak_bytes"]
    if estimate["precision"] == "32bit":
        import psutil

        limit, where = psutil.virtual_memory().total, "this computer's memory"
    else:
        found = gpus()
        if not found:
            return
        limit, where = int(found[0]["memory_total_gb"] * 1024**3), f"the GPU ({found[0]['name']})"
    if peak > limit * SAFETY_MARGIN:
        raise ResourceError(
            f"This run needs about {gb(peak)} but {where} has {gb(limit)} in all, so it would run out of memory.",
            estimate.get("suggestion") or "Use the low-memory preset or a smaller model.",
        )


def rerun(ws: Workspace, run_id: str) -> Run:
    """A new run with exactly the same frozen config (the dataset version and preset too)."""
    run = get_run(ws, run_id)
    cfg = load_yaml(run.folder.config.read_text(encoding="utf-8"))
    manifest = run.folder.read_manifest()
    return submit(ws, cfg, preset=run.preset, overrides=manifest.get("overrides"),
                  name=f"{run.name} (re-run)", estimate=manifest.get("fit_check"), force=True)


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


def _update(ws: Workspace, run_id: str, **fields: Any) -> None:
    with ws.db() as db:
        db["runs"].update(run_id, fields)


# ------------------------------------------------------------------------------------------ processes


def process_alive(pid: int | None, proc_start: float | None) -> bool:
    """True if `pid` runs and is the process we started (same start time: pids get reused)."""
    import psutil

    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            _reap(pid)
            return False
        return proc_start is None or abs(proc.create_time() - proc_start) < 1.0
    except psutil.Error:
        return False


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child (re-adopted after a restart): its own parent reaps it
        pass


def training_argv(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "studio.training", str(run_dir)]


def launch(ws: Workspace, run: Run, slot: int) -> Run:
    """Start the training process for a claimed run, in its own session, logging to train.log."""
    import psutil

    folder = run.folder
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false",
               PYTORCH_CUDA_ALLOC_CONF=os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
    if slot != CPU_SLOT:
        env["CUDA_VISIBLE_DEVICES"] = str(slot)
    # a fresh status: the previous attempt's (cancelled, failed) must not be read as this one's
    folder.status.unlink(missing_ok=True)
    with folder.log.open("ab") as log:
        log.write(f"\n=== attempt {(run.attempts or 0) + 1} started {now()} ===\n".encode())
        log.flush()
        proc = subprocess.Popen(
            training_argv(folder.path), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            cwd=folder.path, env=env, start_new_session=True,
        )
    try:
        proc_start = psutil.Process(proc.pid).create_time()
    except psutil.Error:
        proc_start = None
    _update(ws, run.id, pid=proc.pid, proc_start=proc_start, attempts=(run.attempts or 0) + 1)
    run = get_run(ws, run.id)
    if run.cancel_requested_at:  # cancelled while it was being launched
        _signal(run, signal.SIGTERM)
    return run


def _signal(run: Run, signum: int) -> bool:
    if not process_alive(run.pid, run.proc_start):
        return False
    try:
        os.killpg(run.pid, signum)  # the whole process group: dataloader workers too
    except ProcessLookupError:
        return False
    except PermissionError:
        os.kill(run.pid, signum)
    return True


# ------------------------------------------------------------------------------------------ scheduling


def device_slots() -> list[int]:
    """One slot per CUDA GPU; the CPU is the single slot when there is none."""
    from studio.core.system import gpus

    found = gpus()
    return [g["index"] for g in found] if found else [CPU_SLOT]


def claim_next(ws: Workspace, slot: int) -> Run | None:
    """Atomically move the oldest queued run to running on `slot`, if nothing else runs there."""
    with ws.db() as db:
        conn = db.conn
        conn.execute("BEGIN IMMEDIATE")  # one writer at a time: the check and the update are one step
        busy = conn.execute("SELECT 1 FROM runs WHERE status = 'running' AND gpu = ?", [slot]).fetchone()
        if busy:
            conn.rollback()
            return None
        row = conn.execute(
            "SELECT id FROM runs WHERE status = 'queued' ORDER BY queued_at, rowid LIMIT 1"
        ).fetchone()
        if row is None:
            conn.rollback()
            return None
        conn.execute(
            "UPDATE runs SET status = 'running', gpu = ?, started_at = ?, pid = NULL, proc_start = NULL, "
            "error = NULL, fix = NULL WHERE id = ? AND status = 'queued'",
            [slot, now(), row[0]],
        )
        conn.commit()
    return get_run(ws, row[0])


def admit(ws: Workspace, run: Run, slot: int) -> None:
    """On a GPU: if the run's estimated peak exceeds the free memory, unload local chat endpoints first."""
    if slot == CPU_SLOT:
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
    _update(ws, run.id, notice=" ".join(notes) or None)


def schedule(ws: Workspace) -> list[str]:
    """One scheduler pass: reconcile, then start the next queued run on every free device. Returns the
    ids started."""
    reconcile(ws)
    started = []
    for slot in device_slots():
        run = claim_next(ws, slot)
        if run is None:
            continue
        try:
            admit(ws, run, slot)
            launch(ws, run, slot)
        except Exception as exc:  # a run that cannot even start must not block the queue
            _update(ws, run.id, status="failed", finished_at=now(),
                    error=f"The training process could not be started: {exc}",
                    fix="Check the studio's installation (`studio doctor`), then resume the run.")
            continue
        started.append(run.id)
    return started


def reconcile(ws: Workspace) -> list[str]:
    """Bring every running run in line with its process: re-adopt live ones (refreshing progress),
    finish dead ones from their status.json, or fail them with the last log lines. Returns changed ids."""
    changed = []
    for run in list_runs(ws, "running"):
        if run.pid is None:
            started = _parse_time(run.started_at)
            if started is not None and time.time() - started > LAUNCH_GRACE_S:
                _update(ws, run.id, status="failed", finished_at=now(),
                        error="The studio stopped while it was starting this run.",
                        fix="Resume the run.")
                changed.append(run.id)
            continue
        summary = summarize(run.folder)
        if process_alive(run.pid, run.proc_start):
            _update(ws, run.id, **summary["progress"])
            continue
        status = run.folder.read_status()
        fields: dict[str, Any] = {"finished_at": now(), **summary["progress"]}
        if status.get("state") in TERMINAL_STATES:
            fields.update(status=status["state"], error=status.get("reason"), fix=status.get("fix"))
        elif run.cancel_requested_at:  # stopped before it could save anything (e.g. while starting up)
            fields.update(status="cancelled", error=None, fix=None)
        else:
            last = run.folder.last_checkpoint()
            tail = [ln for ln in run.folder.tail_log(60) if ln.strip() and "it/s]" not in ln][-8:]
            fields.update(
                status="failed",
                error="The training process stopped without finishing (it was killed or crashed). "
                + ("Last log lines: " + " | ".join(tail) if tail else "It left no log."),
                fix=(f"Resume the run: it continues from its last checkpoint ({last.name})." if last else
                     "Resume the run: no checkpoint was saved yet, so it starts again from the beginning."),
            )
        _update(ws, run.id, **fields)
        changed.append(run.id)
    return changed


def _parse_time(stamp: str | None) -> float | None:
    import datetime as dt

    if not stamp:
        return None
    try:
        return dt.datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None


def summarize(folder: RunFolder) -> dict[str, Any]:
    """Curves and the latest numbers from events.jsonl, for the Runs tab, `runs show` and the registry."""
    events = folder.read_events()
    steps = [e for e in events if e["type"] == "step"]
    evals = [e for e in events if e["type"] == "eval"]
    starts = [e for e in events if e["type"] == "start"]
    last = steps[-1] if steps else {}
    max_steps = next((e.get("max_steps") for e in reversed(starts + steps) if e.get("max_steps")), None)
    step = max([e.get("step") or 0 for e in events if e["type"] in ("step", "checkpoint", "end")], default=0)
    progress = {
        "step": step,
        "max_steps": max_steps,
        "loss": last.get("loss"),
        "eval_loss": evals[-1]["eval_loss"] if evals else None,
    }
    return {
        "progress": {k: v for k, v in progress.items() if v is not None},
        "last": last,
        "steps": steps,
        "evals": evals,
        "notices": [e["message"] for e in events if e["type"] == "notice"],
        "checkpoints": [e for e in events if e["type"] == "checkpoint"],
        "end": next((e for e in reversed(events) if e["type"] == "end"), None),
        "attempts": len(starts),
    }


# ------------------------------------------------------------------------------------------ actions


def cancel(ws: Workspace, run_id: str, wait: float = 0.0) -> Run:
    """Queued: cancelled at once. Running: SIGTERM to its process group; it stops at the next step,
    saves a checkpoint and the adapter, and ends as cancelled. `wait` seconds: wait for that."""
    run = get_run(ws, run_id)
    if run.status == "queued":
        _update(ws, run_id, status="cancelled", finished_at=now(), cancel_requested_at=now())
        return get_run(ws, run_id)
    if run.status != "running":
        raise Conflict(f"Run '{run_id}' is not running (it is {run.status}).", "Only queued or running runs stop.")
    _update(ws, run_id, cancel_requested_at=now())
    _signal(run, signal.SIGTERM)
    deadline = time.monotonic() + wait
    while wait and time.monotonic() < deadline:
        reconcile(ws)
        if get_run(ws, run_id).status != "running":
            break
        time.sleep(0.2)
    return get_run(ws, run_id)


def resume(ws: Workspace, run_id: str) -> Run:
    """Queue a cancelled or failed run again; its process continues from the last checkpoint (with the
    optimizer and scheduler state, the step count going on) or starts over if there is none."""
    run = get_run(ws, run_id)
    if run.status in ACTIVE:
        raise Conflict(f"Run '{run_id}' is already {run.status}.", "Wait for it, or cancel it first.")
    if run.status == "succeeded":
        raise Conflict(f"Run '{run_id}' has finished successfully; there is nothing to resume.",
                       "Use re-run to train again with the same settings.")
    _update(ws, run_id, status="queued", queued_at=now(), finished_at=None, pid=None, proc_start=None,
            error=None, fix=None, cancel_requested_at=None)
    return get_run(ws, run_id)


def delete(ws: Workspace, run_id: str) -> None:
    """Delete a finished run and its folder; refused while it runs or while something refers to it."""
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
        db["runs"].delete(run_id)
    shutil.rmtree(run.path, ignore_errors=True)


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


def start_scheduler(ws: Workspace, interval: float = 2.0) -> threading.Event:
    """The studio's background scheduler thread: reconcile on start, then keep the queue moving.
    Set the returned event to stop it."""
    stop = threading.Event()
    reconcile(ws)

    def loop() -> None:
        while not stop.is_set():
            try:
                schedule(ws)
            except Exception as exc:  # keep the thread alive; the next pass retries
                print(f"scheduler: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            stop.wait(interval)

    threading.Thread(target=loop, name="studio-scheduler", daemon=True).start()
    return stop


def wait_for(ws: Workspace, run_id: str, timeout: float, poll: float = 0.5) -> Run:
    """Wait (scheduling meanwhile) until the run is no longer queued or running."""
    deadline = time.monotonic() + timeout
    worker(ws, until=lambda: get_run(ws, run_id).status not in ACTIVE or time.monotonic() > deadline, poll=poll)
    return get_run(ws, run_id)


# ------------------------------------------------------------------------------------------ words


def command_line(base_model: str, dataset_id: str, preset: str, overrides: dict[str, Any] | None = None,
                 name: str | None = None) -> str:
    """The `studio train` line that starts the same run as the Train tab's form."""
    import shlex

    parts = ["studio", "train", "--data", dataset_id, "--model", base_model, "--preset", preset]
    for key, value in (overrides or {}).items():
        text = json.dumps(value) if isinstance(value, list | bool) else str(value)
        parts += ["--set", f"{key}={text}"]
    if name:
        parts += ["--name", name]
    return " ".join(shlex.quote(p) for p in parts)


def seconds_text(value: float | None) -> str:
    if value is None:
        return "?"
    value = int(value)
    if value < 90:
        return f"{value}s"
    if value < 5400:
        return f"{value // 60}m{value % 60:02d}s"
    return f"{value // 3600}h{value % 3600 // 60:02d}m"


def step_line(event: dict[str, Any]) -> str:
    """One step event as a line: `step 12/60 · epoch 2.00 · loss 6.2100 · lr 3.0e-03 · ...`."""
    parts = [f"step {event.get('step')}/{event.get('max_steps')}"]
    if event.get("epoch") is not None:
        parts.append(f"epoch {event['epoch']:.2f}")
    if event["type"] == "eval":
        parts.append(f"eval loss {event['eval_loss']:.4f}")
        return " · ".join(parts)
    if event.get("loss") is not None:
        parts.append(f"loss {event['loss']:.4f}")
    if event.get("learning_rate") is not None:
        parts.append(f"lr {event['learning_rate']:.1e}")
    if event.get("grad_norm") is not None:
        parts.append(f"grad norm {event['grad_norm']:.2f}")
    if event.get("tokens_per_second"):
        parts.append(f"{event['tokens_per_second']:.0f} tok/s")
    if event.get("gpu_memory"):
        parts.append(f"GPU {event['gpu_memory'] / 1024**3:.1f} GB")
    parts.append(f"elapsed {seconds_text(event.get('elapsed'))}")
    if event.get("eta") is not None:
        parts.append(f"eta {seconds_text(event['eta'])}")
    return " · ".join(parts)

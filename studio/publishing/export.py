"""Exports as background jobs, studio side: check the disk, write job.json, start the export process
(studio/publishing/export_worker.py) from an argv list, follow its events, record the outcome in SQLite.

An export folder `exports/<id>/` holds job.json, events.jsonl, export.log, status.json, reference.json
(the studio model's greedy replies used by verification), manifest.json and model/ (what is published).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from studio.core import access, procs
from studio.core.db import now, seconds_since
from studio.core.errors import InvalidInput, NotFound, ResourceError, StudioError
from studio.core.files import new_folder, read_json, read_jsonl
from studio.core.states import Machine

if TYPE_CHECKING:
    from studio.core.workspace import Workspace
    from studio.publishing.source import RunSource

ExportKind = Literal["merged", "adapter"]
KINDS = ("merged", "adapter")
MARGIN_BYTES = 64 * 1024 * 1024  # tokenizer, card, logs, and some slack for the filesystem
LAUNCH_GRACE_S = 120.0  # registered this long ago without a process: the studio died while starting it
EXPORT_STATES = Machine(
    table="exports", noun="Export", listing=" (`studio publish`, or the Publish tab)",
    transitions={"running": ("succeeded", "failed"), "succeeded": (), "failed": ()},
)
Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class Export:
    id: str
    run_id: str
    kind: str
    status: str
    path: str
    export_hash: str | None = None
    bytes: int | None = None
    dtype: str | None = None
    pid: int | None = None
    proc_start: float | None = None
    created_at: str = ""
    finished_at: str | None = None
    error: str | None = None

    @property
    def folder(self) -> Path:
        return Path(self.path)

    @property
    def model_dir(self) -> Path:
        return self.folder / "model"

    @property
    def version(self) -> str:
        """The model version a deployment records: run id and the first 12 hex digits of the export hash."""
        return f"{self.run_id}@{(self.export_hash or '')[:12]}"

    def reference(self) -> dict[str, Any]:
        path = self.folder / "reference.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"prompts": []}

    def events(self) -> list[dict]:
        return read_jsonl(self.folder / "events.jsonl")

    @property
    def proc(self) -> procs.Proc:
        return procs.Proc(pid=self.pid, started=self.proc_start, log=self.folder / "export.log",
                          exit_file=self.folder / "exit.json")


def _row_to_export(row: dict) -> Export:
    return Export(**{k: row.get(k) for k in Export.__dataclass_fields__})


def _read(ws: Workspace, export_id: str) -> Export:
    with ws.db() as db:
        return _row_to_export(db["exports"].get(export_id))


def get_export(ws: Workspace, export_id: str) -> Export:
    with ws.db() as db:
        rows = list(db["exports"].rows_where("id = ?", [export_id]))
    if not rows:
        raise NotFound(f"There is no export '{export_id}'.", "See `studio publish --help` to make one.")
    return refresh(ws, _row_to_export(rows[0]))


def list_exports(ws: Workspace, run_id: str | None = None) -> list[Export]:
    with ws.db() as db:
        if run_id:
            rows = list(db["exports"].rows_where("run_id = ?", [run_id], order_by="created_at desc"))
        else:
            rows = list(db["exports"].rows_where(order_by="created_at desc"))
    return [refresh(ws, _row_to_export(r)) for r in rows]


def estimate_bytes(ws: Workspace, source: RunSource, kind: str) -> int:
    """What the export will write: the adapter folder, or the base weights in their own dtype (a merge
    keeps the base's shapes and dtype), plus the margin."""
    adapter = sum(p.stat().st_size for p in source.adapter_dir.rglob("*") if p.is_file())
    if kind == "adapter":
        return adapter + MARGIN_BYTES
    from studio.models.catalog import catalog_entry
    from studio.models.resolve import resolve

    resolved = resolve(ws, source.base_model)
    if resolved.local:
        folder = Path(resolved.source)
        weights = sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))
        return weights + MARGIN_BYTES
    entry = catalog_entry(source.base_model)
    params = (entry.params_b if entry else 0) * 1e9
    return int(params * 2) + MARGIN_BYTES  # the catalog's hub models are bf16 releases


def check_disk(ws: Workspace, needed: int, what: str) -> None:
    free = shutil.disk_usage(ws.exports_dir).free
    if free < needed:
        raise ResourceError(
            f"Not enough disk space for {what}: it needs about {needed / 1e9:.2f} GB and the workspace drive "
            f"has {free / 1e9:.2f} GB free.",
            f"Free at least {(needed - free) / 1e9:.2f} GB on the drive of {ws.home}, delete old exports, or "
            "export the adapter alone (a few MB).",
        )


def start_export(
    ws: Workspace,
    source: RunSource,
    kind: str,
    *,
    prompts: list[list[dict]],
    expected: list[str | None] | None = None,
    card: dict | None = None,
    shard_size: str = "2GB",
    max_new_tokens: int | None = None,
    prompts_from: dict | None = None,
) -> Export:
    """Start the export process for a finished run; returns at once (status 'running').
    prompts_from: where the prompts come from (the golden set itself, or validation rows), kept in
    reference.json and so in every verification made with this export."""
    access.require(ws, "export")
    if kind not in KINDS:
        raise InvalidInput(f"'{kind}' is not a kind of export.", "Choose 'merged' or 'adapter'.")
    from studio.models.resolve import resolve

    check_disk(ws, estimate_bytes(ws, source, kind),
               "the merged model" if kind == "merged" else "the adapter")
    folder = new_folder(ws.exports_dir, "exp")
    export_id = folder.name
    job = {
        "export_id": export_id, "run_id": source.run_id, "kind": kind,
        "base_source": resolve(ws, source.base_model).source, "adapter_dir": str(source.adapter_dir),
        "prompts": prompts, "expected": expected or [], "card": card or {}, "shard_size": shard_size,
        "max_new_tokens": max_new_tokens, "prompts_from": prompts_from,
        "reference_from": recorded_reference(ws, source.run_id, prompts, max_new_tokens),
    }
    (folder / "job.json").write_text(json.dumps(job, indent=2), encoding="utf-8")
    with ws.db() as db:
        db["exports"].insert({"id": export_id, "run_id": source.run_id, "kind": kind, "status": "running",
                              "path": str(folder), "created_at": now()})
    argv = [sys.executable, "-m", "studio.publishing.export_worker", str(folder)]
    try:
        proc = procs.start(argv, log=folder / "export.log", exit_file=folder / "exit.json", cwd=folder,
                           env={"TOKENIZERS_PARALLELISM": "false"})
    except OSError as exc:
        EXPORT_STATES.try_move(ws, export_id, "failed", expect=("running",), finished_at=now(),
                               error=f"The export process could not be started: {exc}")
        raise
    EXPORT_STATES.update_while(ws, export_id, ("running",), pid=proc.pid, proc_start=proc.started)
    return get_export(ws, export_id)


def recorded_reference(ws: Workspace, run_id: str, prompts: list, max_new_tokens: int | None) -> str | None:
    """reference.json of an earlier export of this run made with the same prompts: its replies are
    the same (a run's adapter never changes), so the new export need not generate them again."""
    if not prompts:
        return None
    for export in list_exports(ws, run_id):
        if export.status != "succeeded":
            continue
        reference = export.reference()
        if [p["messages"] for p in reference.get("prompts", [])] == prompts and (
                max_new_tokens is None or reference.get("max_new_tokens") == max_new_tokens):
            return str(export.folder / "reference.json")
    return None


def refresh(ws: Workspace, export: Export) -> Export:
    """Fold the export process's status.json (or its death) into the registry row."""
    if export.status != "running":
        return export
    status = read_json(export.folder / "status.json")
    state = status.get("state")
    if export.pid is None:  # registered; its starter is launching the process (or died doing so)
        waited = seconds_since(export.created_at)
        if waited is not None and waited < LAUNCH_GRACE_S:
            return export
        status = {"state": "failed", "error": "The studio stopped while it was starting this export."}
    elif state not in ("succeeded", "failed") and procs.alive(export.proc):
        return export
    elif state not in ("succeeded", "failed"):
        ending = procs.read_ending(export.proc.exit_file)
        tail = procs.tail(export.folder / "export.log", 3)
        status = {"state": "failed", "error": f"The export process ended without saying why ({ending.describe()})"
                  + (f": {' | '.join(tail)}" if tail else ".")}
    update = {"finished_at": now()}
    if status["state"] == "succeeded":
        update.update(export_hash=status["export_hash"], bytes=status["bytes"], dtype=status["dtype"])
    else:
        update["error"] = (status.get("error") or "") + (f" {status['fix']}" if status.get("fix") else "")
    EXPORT_STATES.try_move(ws, export.id, status["state"], expect=("running",), unchanged={"pid": export.pid},
                           **update)
    return _read(ws, export.id)


def reconcile(ws: Workspace) -> list[str]:
    """Bring every running export in line with its process (a studio start calls this): finished ones
    take the outcome their process wrote, dead ones are failed with how they ended. Returns changed ids."""
    with ws.db() as db:
        rows = list(db["exports"].rows_where("status = 'running'"))
    return [row["id"] for row in rows if refresh(ws, _row_to_export(row)).status != "running"]


def wait_export(ws: Workspace, export_id: str, progress: Progress | None = None,
                timeout: float | None = None, poll: float = 0.5) -> Export:
    """Follow an export to its end, reporting (fraction, message) as events arrive."""
    deadline = time.monotonic() + timeout if timeout else None
    seen = 0
    while True:
        export = get_export(ws, export_id)
        events = export.events()
        for event in events[seen:]:
            if progress:
                progress(float(event.get("progress", 0)), event.get("message", ""))
        seen = len(events)
        if export.status == "succeeded":
            return export
        if export.status == "failed":
            raise ExportFailed(export)
        if deadline and time.monotonic() > deadline:
            raise ResourceError(f"Export {export_id} did not finish within {timeout:.0f} s.",
                                "Follow it with `studio publish` again later; it keeps running.")
        time.sleep(poll)


class ExportFailed(StudioError):
    kind = "resource"

    def __init__(self, export: Export):
        message = export.error or "The export failed."
        super().__init__(f"Export {export.id} of run {export.run_id} failed: {message}")
        self.export = export


def reusable_export(ws: Workspace, run_id: str, kind: str) -> Export | None:
    """The newest finished export of this run and kind whose files are still there."""
    marker = "config.json" if kind == "merged" else "adapter_config.json"
    for export in list_exports(ws, run_id):
        if export.kind == kind and export.status == "succeeded" and (export.model_dir / marker).exists():
            return export
    return None

"""Starting local endpoints: `python -m studio.serving.server` as a supervised process, after claiming
its port, its name and (for a run's chat endpoint) its run in the registry, then waiting for /health.

The registry, reconciling and stopping are in studio/serving/endpoints.py.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from studio.core import access, procs
from studio.core.db import now
from studio.core.errors import Conflict, InvalidInput, ModelUnavailable
from studio.serving.adapters import check_adapter_name, resolve_adapter, run_adapter_dir
from studio.serving.endpoints import (
    ENDPOINT_STATES,
    LIVE,
    STOP_GRACE_S,
    Endpoint,
    endpoint_dir,
    find_endpoint_for_run,
    get_endpoint,
    list_endpoints,
    log_path,
    log_tail,
    new_id,
    read,
    reconcile,
    stop_endpoint,
)

if TYPE_CHECKING:
    from studio.core.workspace import Workspace

START_TIMEOUT_S = 900.0  # a hub model may download first; a dead process ends the wait at once


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_port(port: int) -> None:
    if not 1024 <= port <= 65535:
        raise InvalidInput(f"Port {port} is out of range.", "Pick a port between 1024 and 65535, or leave it empty.")
    with socket.socket() as s:
        # as uvicorn binds: a port just freed by a stopped endpoint (TIME_WAIT) is free to reuse
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            raise Conflict(f"Port {port} is already in use on this machine.",
                           "Pick another port, or leave it empty to get a free one.") from exc


def server_argv(base_source: str, adapters: dict[str, Path], port: int, *, served_name: str,
                quantize: str = "none", extra: list[str] | None = None) -> list[str]:
    """The endpoint process's command line (an argv list, never a shell string)."""
    argv = [sys.executable, "-m", "studio.serving.server", "--model", base_source, "--served-name", served_name,
            "--port", str(port), "--quantize", quantize]
    for name, path in adapters.items():
        argv += ["--adapter", f"{name}={path}"]
    return argv + list(extra or [])


def _claim(ws: Workspace, endpoint: Endpoint, *, for_run: str | None, named: bool) -> None:
    """Register the new endpoint as 'starting', in one write transaction, unless a live local endpoint
    already holds its port, its name (when one was chosen) or, for a run's chat endpoint, serves the run."""
    list_endpoints(ws)  # a dead process must not hold its port or name
    with ws.db() as db:
        conn = db.conn
        conn.execute("BEGIN IMMEDIATE")
        cursor = conn.execute("SELECT * FROM endpoints WHERE kind = 'local' AND status IN (?, ?)", LIVE)
        columns = [c[0] for c in cursor.description]
        live = [Endpoint.from_row(dict(zip(columns, row, strict=True))) for row in cursor.fetchall()]
        for other in live:
            clash = None
            if other.port == endpoint.port:
                clash = f"Port {endpoint.port} is taken by the endpoint '{other.name}' ({other.status})."
            elif for_run and other.run_id == for_run and for_run in other.adapters:
                clash = f"Run '{for_run}' is already served by the endpoint '{other.name}' ({other.status})."
            elif named and other.name == endpoint.name:
                clash = f"An endpoint called '{endpoint.name}' is already {other.status} ({other.id})."
            if clash:
                conn.rollback()
                raise Conflict(clash, f"Use that endpoint, or stop it first (`studio endpoints stop {other.id}`).")
        while conn.execute("SELECT 1 FROM endpoints WHERE id = ?", [endpoint.id]).fetchone():
            endpoint.id = new_id()  # made in the same second as another one, with the same random part
            endpoint.name = endpoint.name if named or for_run else endpoint.id
        row = endpoint.to_row()
        conn.execute(f"INSERT INTO endpoints ({', '.join(f'[{k}]' for k in row)}) "
                     f"VALUES ({', '.join('?' for _ in row)})", list(row.values()))
        conn.commit()


def start_endpoint(
    ws: Workspace,
    base_model: str,
    adapters: dict[str, str] | None = None,
    *,
    run_id: str | None = None,
    name: str | None = None,
    port: int | None = None,
    quantize: Literal["none", "4bit"] = "none",
    wait: bool = True,
    timeout: float = START_TIMEOUT_S,
    extra_args: list[str] | None = None,
    for_run: bool = False,
    served_name: str | None = None,
) -> Endpoint:
    """Start a local endpoint process holding `base_model` and the given LoRA adapters.

    adapters maps the served name (what `model=` / `adapter_id=` pick) to a run id, run folder or
    adapter folder. With wait=True, returns once /health answers (status "ready"); a process that
    dies while loading raises ModelUnavailable with its last log lines. Refused (Conflict) when a live
    endpoint holds the port or the chosen name, or (for_run) already serves run `run_id`.
    served_name: the base model's name in /v1/models and `model=` (default: base_model).
    """
    access.require(ws, "endpoint.start")
    from studio.models.resolve import resolve

    resolved = resolve(ws, base_model)
    adapter_dirs = {check_adapter_name(n, base_model): resolve_adapter(ws, ref) for n, ref in (adapters or {}).items()}
    if port is None:
        port = free_port()
    else:
        _check_port(port)
    served_name = served_name or base_model  # a merged export's folder path is no name for a client
    argv = server_argv(resolved.source, adapter_dirs, port, served_name=served_name, quantize=quantize,
                       extra=extra_args)
    endpoint = Endpoint(
        id=new_id(), name=name or "", kind="local", url=f"http://127.0.0.1:{port}", base_model=base_model,
        adapters={n: str(ref) for n, ref in (adapters or {}).items()}, run_id=run_id, port=port,
        status="starting", created_at=now(),
        options={"quantize": quantize, "served_name": served_name, "argv": argv,
                 "adapter_dirs": {n: str(p) for n, p in adapter_dirs.items()}},
    )
    endpoint.name = endpoint.name or endpoint.id
    _claim(ws, endpoint, for_run=run_id if for_run else None, named=bool(name) and not for_run)
    folder = endpoint_dir(ws, endpoint.id)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        proc = procs.start(argv, log=log_path(ws, endpoint.id), exit_file=folder / "exit.json", cwd=folder,
                           env={"TOKENIZERS_PARALLELISM": "false"})
    except OSError as exc:
        ENDPOINT_STATES.try_move(ws, endpoint.id, "failed", expect=("starting",), stopped_at=now(),
                                 error=f"The endpoint process could not be started: {exc}")
        raise
    if not ENDPOINT_STATES.update_while(ws, endpoint.id, ("starting",), pid=proc.pid, proc_start=proc.started):
        procs.stop(proc, grace=STOP_GRACE_S)  # stopped while its process was being started: no orphan
        raise Conflict(f"Endpoint '{endpoint.name}' was stopped while it was starting.", "Start it again.")
    return wait_ready(ws, endpoint.id, timeout=timeout) if wait else read(ws, endpoint.id)


def wait_ready(ws: Workspace, ref: str, timeout: float = START_TIMEOUT_S) -> Endpoint:
    """Wait until a starting local endpoint answers /health; fail fast if its process dies."""
    endpoint_id = get_endpoint(ws, ref, refresh=False).id
    deadline = time.monotonic() + timeout
    while True:
        endpoint = reconcile(ws, read(ws, endpoint_id))  # read anew: another caller may be starting it
        if endpoint.kind == "remote" or endpoint.status == "ready":
            return endpoint
        if endpoint.status != "starting":
            raise ModelUnavailable(
                f"The endpoint for '{endpoint.base_model}' stopped while loading. {log_tail(ws, endpoint.id)}",
                f"Read its log ({log_path(ws, endpoint.id)}) for the cause.",
            )
        if time.monotonic() > deadline:
            stop_endpoint(ws, endpoint.id, reason=f"did not become ready within {timeout:.0f} s")
            raise ModelUnavailable(
                f"The endpoint for '{endpoint.base_model}' was not ready after {timeout:.0f} s, so it was stopped.",
                "A large model may need longer the first time (download); try again, or look at its log: "
                f"{log_path(ws, endpoint.id)}",
            )
        time.sleep(0.2)


def start_for_run(ws: Workspace, run_id: str, *, port: int | None = None, wait: bool = True,
                  quantize: Literal["none", "4bit"] | None = None) -> Endpoint:
    """The endpoint for a finished run: its base model plus its adapter, served under the run id.

    Reuses a live endpoint that already serves the run (also one another caller is starting right
    now). quantize=None serves a QLoRA run's base model in 4-bit when a CUDA GPU is there (as it was
    trained), else in 16/32-bit."""
    existing = find_endpoint_for_run(ws, run_id)
    if existing is None:
        run_adapter_dir(ws, run_id)  # refuses a run without an adapter before a process starts
        with ws.db() as db:
            run = db["runs"].get(run_id)
        if quantize is None:
            method = json.loads(run.get("config_json") or "{}").get("method")
            quantize = "4bit" if method == "qlora" and _cuda_available() else "none"
        try:
            return start_endpoint(ws, run["base_model"], {run_id: run_id}, run_id=run_id,
                                  name=f"{run['name'] or run_id}", port=port, wait=wait, quantize=quantize,
                                  for_run=True)
        except Conflict:
            existing = find_endpoint_for_run(ws, run_id)  # another caller won the claim: use its endpoint
            if existing is None:
                raise
    ignored = []
    if port is not None and port != existing.port:
        ignored.append(f"port {port}")
    if quantize is not None and quantize != existing.options.get("quantize", "none"):
        ignored.append(f"quantize {quantize}")
    if ignored:  # a live endpoint is reused as it runs: options it does not have are refused, not dropped
        raise Conflict(f"Run '{run_id}' is already served by the endpoint '{existing.name}' at {existing.url} "
                       f"(port {existing.port}, quantize {existing.options.get('quantize', 'none')}), so "
                       f"{' and '.join(ignored)} cannot apply.",
                       f"Use that endpoint, or stop it first (`studio endpoints stop {existing.id}`) and start again.")
    return wait_ready(ws, existing.id) if wait else existing


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()

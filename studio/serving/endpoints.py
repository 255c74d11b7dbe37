"""Endpoints the studio knows: local endpoint processes it started (`python -m studio.serving.server`) and
remote TGI / vLLM / SGLang servers registered by URL, kept in the `endpoints` table.

The studio is the only writer of that table; the endpoint process never touches SQLite. A local
endpoint runs in its own session (process group), so it outlives a restart of the studio and is
re-adopted on the next `list_endpoints` (its pid and start time still match); one that died is
marked failed with the last lines of its log as the reason.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel

from studio.core.db import now
from studio.core.errors import Conflict, InvalidInput, ModelUnavailable, NotFound

if TYPE_CHECKING:
    from studio.core.workspace import Workspace

LIVE = ("starting", "ready")
ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
RESERVED_NAMES = {"base", "tgi", "__base__"}  # these always mean the base model on our endpoint
START_TIMEOUT_S = 900.0  # a hub model may download first; a dead process ends the wait at once
STOP_GRACE_S = 15.0


class Endpoint(BaseModel):
    id: str
    name: str
    kind: Literal["local", "remote"]
    url: str
    base_model: str = ""
    adapters: dict[str, str] = {}  # served name -> the run id or folder it came from
    run_id: str | None = None
    port: int | None = None
    pid: int | None = None
    proc_start: float | None = None
    status: str = "starting"  # starting | ready | stopped | failed (remote: ready)
    created_at: str = ""
    error: str | None = None
    options: dict = {}
    stopped_at: str | None = None

    @classmethod
    def from_row(cls, row: dict) -> Endpoint:
        row = dict(row)
        row["adapters"] = json.loads(row.pop("adapters_json", None) or "{}")
        row["options"] = json.loads(row.pop("options_json", None) or "{}")
        return cls.model_validate({k: v for k, v in row.items() if v is not None})

    def to_row(self) -> dict:
        row = self.model_dump(exclude={"adapters", "options"})
        row["adapters_json"] = json.dumps(self.adapters)
        row["options_json"] = json.dumps(self.options)
        return row

    @property
    def live(self) -> bool:
        return self.status in LIVE

    @property
    def base_name(self) -> str:
        """The `model` value that picks the base model on this endpoint."""
        return self.options.get("served_name") or self.base_model or "tgi"


def endpoint_dir(ws: Workspace, endpoint_id: str) -> Path:
    return ws.endpoints_dir / endpoint_id


def log_path(ws: Workspace, endpoint_id: str) -> Path:
    return endpoint_dir(ws, endpoint_id) / "server.log"


# ---------------------------------------------------------------- reading and reconciling


def _save(ws: Workspace, endpoint: Endpoint) -> Endpoint:
    with ws.db() as db:
        db["endpoints"].upsert(endpoint.to_row(), pk="id")
    return endpoint


def get_endpoint(ws: Workspace, ref: str, refresh: bool = True) -> Endpoint:
    """An endpoint by id, name or URL."""
    ref = (ref or "").strip()
    with ws.db() as db:
        rows = list(db["endpoints"].rows_where("id = ? or name = ? or url = ?", [ref, ref, ref.rstrip("/")],
                                               order_by="created_at desc"))
    if not rows:
        raise NotFound(f"There is no endpoint '{ref}'.", "See `studio endpoints list` for the known ones.")
    live_first = sorted(rows, key=lambda r: r["status"] not in LIVE)
    endpoint = Endpoint.from_row(live_first[0])
    return _reconcile(ws, endpoint) if refresh else endpoint


def list_endpoints(ws: Workspace, *, include_stopped: bool = True) -> list[Endpoint]:
    """All registered endpoints, newest first; local ones checked against their process first."""
    with ws.db() as db:
        rows = list(db["endpoints"].rows_where(order_by="created_at desc"))
    endpoints = [_reconcile(ws, Endpoint.from_row(r)) for r in rows]
    return [e for e in endpoints if include_stopped or e.live]


def _reconcile(ws: Workspace, endpoint: Endpoint) -> Endpoint:
    """Bring a local endpoint's status in line with its process: re-adopt it, or mark it failed."""
    if endpoint.kind != "local" or not endpoint.live:
        return endpoint
    if not _alive(endpoint):
        endpoint.status = "failed"
        endpoint.error = "The endpoint process ended unexpectedly. " + _log_tail(ws, endpoint.id)
        endpoint.stopped_at = now()
        return _save(ws, endpoint)
    if endpoint.status == "starting" and _healthy(endpoint.url):
        endpoint.status = "ready"
        return _save(ws, endpoint)
    return endpoint


def _alive(endpoint: Endpoint) -> bool:
    """True if the endpoint's process still runs (same pid *and* same start time: pids get reused)."""
    import psutil

    if not endpoint.pid:
        return False
    try:
        proc = psutil.Process(endpoint.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            _reap(endpoint.pid)
            return False
        return endpoint.proc_start is None or abs(proc.create_time() - endpoint.proc_start) < 1.0
    except psutil.Error:
        return False


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child (re-adopted after a restart): its parent reaps it
        pass


def _healthy(url: str, timeout: float = 2.0) -> bool:
    import httpx

    try:
        return httpx.get(url.rstrip("/") + "/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def _log_tail(ws: Workspace, endpoint_id: str, lines: int = 8) -> str:
    path = log_path(ws, endpoint_id)
    if not path.exists():
        return "It left no log."
    text = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    useful = [ln for ln in text if "it/s]" not in ln and "Loading weights" not in ln]
    return "Last log lines: " + " | ".join(useful[-lines:]) if useful else "Its log is empty."


# ---------------------------------------------------------------- stopping


def stop_endpoint(ws: Workspace, ref: str, reason: str | None = None) -> Endpoint:
    """Stop a local endpoint (SIGTERM to its process group, SIGKILL after a grace period).

    Stopping a stopped endpoint is a no-op; a remote endpoint cannot be stopped from here."""
    endpoint = get_endpoint(ws, ref)
    if endpoint.kind == "remote":
        raise Conflict(
            f"'{endpoint.name}' is a remote endpoint at {endpoint.url}; the studio did not start it.",
            "Stop it where it runs, or remove it from the list with `studio endpoints remove`.",
        )
    if endpoint.live:
        _terminate(endpoint)
        endpoint.status = "stopped"
        endpoint.stopped_at = now()
        endpoint.error = reason
        _save(ws, endpoint)
    return endpoint


def stop_local_endpoints(ws: Workspace, reason: str) -> list[str]:
    """Stop every live local endpoint, recording `reason` (shown to the user); return their ids.

    Training's admission control calls this to free GPU memory before a run starts."""
    stopped = []
    for endpoint in list_endpoints(ws):
        if endpoint.kind == "local" and endpoint.live:
            stop_endpoint(ws, endpoint.id, reason=reason)
            stopped.append(endpoint.id)
    return stopped


def _terminate(endpoint: Endpoint) -> None:
    import psutil

    if not _alive(endpoint):
        return
    pid = endpoint.pid
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    except PermissionError:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline:
        _reap(pid)
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                _reap(pid)
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _reap(pid)


def remove_endpoint(ws: Workspace, ref: str) -> Endpoint:
    """Forget an endpoint (a remote one, or a local one that no longer runs) and delete its log."""
    import shutil

    endpoint = get_endpoint(ws, ref)
    if endpoint.kind == "local" and endpoint.live:
        raise Conflict(f"Endpoint '{endpoint.name}' is still running.", "Stop it first: `studio endpoints stop`.")
    with ws.db() as db:
        db["endpoints"].delete(endpoint.id)
    shutil.rmtree(endpoint_dir(ws, endpoint.id), ignore_errors=True)
    return endpoint


# ---------------------------------------------------------------- starting


def _new_id() -> str:
    return time.strftime("ep-%Y%m%d-%H%M%S-") + secrets.token_hex(2)


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


def run_adapter_dir(ws: Workspace, run_id: str) -> Path:
    """The adapter folder of a run that finished (or was cancelled after saving its adapter)."""
    with ws.db() as db:
        rows = list(db["runs"].rows_where("id = ?", [run_id]))
    if not rows:
        raise NotFound(f"There is no run '{run_id}'.", "See `studio runs list` for the runs of this workspace.")
    run = rows[0]
    adapter = Path(run["path"]) / "adapter"
    if not (adapter / "adapter_config.json").exists():
        raise Conflict(
            f"Run '{run_id}' has no saved adapter yet (status: {run['status']}).",
            "Wait until it has finished, or pick a run that succeeded.",
        )
    return adapter


def resolve_adapter(ws: Workspace, ref: str) -> Path:
    """A run id, a run folder or an adapter folder -> the adapter folder to load."""
    ref = ref.strip()
    if ref.startswith("run-") and not Path(ref).exists():
        return run_adapter_dir(ws, ref)
    path = Path(ref).expanduser()
    for candidate in (path, path / "adapter"):
        if (candidate / "adapter_config.json").exists():
            return candidate.resolve()
    raise InvalidInput(
        f"'{ref}' is neither a run id nor a folder with a LoRA adapter (adapter_config.json).",
        "Give a run id from `studio runs list`, a run folder, or the adapter folder itself.",
    )


def parse_adapter_specs(specs: list[str]) -> dict[str, str]:
    """["NAME=RUN_OR_FOLDER", ...] -> {NAME: RUN_OR_FOLDER}."""
    adapters: dict[str, str] = {}
    for spec in specs:
        name, sep, ref = spec.partition("=")
        if not sep or not name.strip() or not ref.strip():
            raise InvalidInput(f"'{spec}' is not NAME=RUN.", "Write the adapter as NAME=RUN_ID (or NAME=FOLDER).")
        if name.strip() in adapters:
            raise InvalidInput(f"Two adapters are named '{name.strip()}'.", "Give each adapter its own name.")
        adapters[name.strip()] = ref.strip()
    return adapters


def check_adapter_name(name: str, base_model: str = "") -> str:
    if not ADAPTER_NAME.match(name or "") or name.lower() in RESERVED_NAMES or name == base_model:
        raise InvalidInput(
            f"'{name}' cannot name an adapter.",
            "Use letters, digits, '.', '_' or '-' (up to 64), and not 'base', 'tgi' or the base model's name.",
        )
    return name


def server_argv(base_source: str, adapters: dict[str, Path], port: int, *, served_name: str,
                quantize: str = "none", extra: list[str] | None = None) -> list[str]:
    """The endpoint process's command line (an argv list, never a shell string)."""
    argv = [sys.executable, "-m", "studio.serving.server", "--model", base_source, "--served-name", served_name,
            "--port", str(port), "--quantize", quantize]
    for name, path in adapters.items():
        argv += ["--adapter", f"{name}={path}"]
    return argv + list(extra or [])


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
) -> Endpoint:
    """Start a local endpoint process holding `base_model` and the given LoRA adapters.

    adapters maps the served name (what `model=` / `adapter_id=` pick) to a run id, run folder or
    adapter folder. With wait=True, returns once /health answers (status "ready"); a process that
    dies while loading raises ModelUnavailable with its last log lines.
    """
    from studio.models.catalog import resolve

    resolved = resolve(ws, base_model)
    adapter_dirs = {check_adapter_name(n, base_model): resolve_adapter(ws, ref) for n, ref in (adapters or {}).items()}
    if port is None:
        port = free_port()
    else:
        _check_port(port)
    endpoint = Endpoint(
        id=_new_id(), name=name or "", kind="local", url=f"http://127.0.0.1:{port}", base_model=base_model,
        adapters={n: str(ref) for n, ref in (adapters or {}).items()}, run_id=run_id, port=port,
        status="starting", created_at=now(),
        options={"quantize": quantize, "served_name": base_model, "adapter_dirs": {
            n: str(p) for n, p in adapter_dirs.items()}},
    )
    endpoint.name = endpoint.name or endpoint.id
    folder = endpoint_dir(ws, endpoint.id)
    folder.mkdir(parents=True, exist_ok=True)
    argv = server_argv(resolved.source, adapter_dirs, port, served_name=base_model, quantize=quantize,
                       extra=extra_args)
    endpoint.options["argv"] = argv
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    with open(log_path(ws, endpoint.id), "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                cwd=folder, env=env, start_new_session=True)
    endpoint.pid = proc.pid
    endpoint.proc_start = _create_time(proc.pid)
    _save(ws, endpoint)
    return wait_ready(ws, endpoint.id, timeout=timeout) if wait else endpoint


def _create_time(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def wait_ready(ws: Workspace, ref: str, timeout: float = START_TIMEOUT_S) -> Endpoint:
    """Wait until a starting local endpoint answers /health; fail fast if its process dies."""
    endpoint = get_endpoint(ws, ref, refresh=False)
    deadline = time.monotonic() + timeout
    while True:
        if endpoint.kind == "remote" or endpoint.status == "ready":
            return endpoint
        if not _alive(endpoint):
            endpoint = _reconcile(ws, endpoint)
            if endpoint.status == "ready":
                return endpoint
            raise ModelUnavailable(
                f"The endpoint for '{endpoint.base_model}' stopped while loading. {_log_tail(ws, endpoint.id)}",
                f"Read its log ({log_path(ws, endpoint.id)}) for the cause.",
            )
        if _healthy(endpoint.url, timeout=1.0):
            endpoint.status = "ready"
            return _save(ws, endpoint)
        if time.monotonic() > deadline:
            stop_endpoint(ws, endpoint.id, reason=f"did not become ready within {timeout:.0f} s")
            raise ModelUnavailable(
                f"The endpoint for '{endpoint.base_model}' was not ready after {timeout:.0f} s, so it was stopped.",
                "A large model may need longer the first time (download); try again, or look at its log: "
                f"{log_path(ws, endpoint.id)}",
            )
        time.sleep(0.2)


def find_endpoint_for_run(ws: Workspace, run_id: str) -> Endpoint | None:
    """A live local endpoint that serves this run's adapter under the run id (as start_for_run names it).

    Publish's endpoints for the run (a merged model, an adapter under another name) do not count."""
    for endpoint in list_endpoints(ws, include_stopped=False):
        if endpoint.kind == "local" and run_id in endpoint.adapters:
            return endpoint
    return None


def start_for_run(ws: Workspace, run_id: str, *, port: int | None = None, wait: bool = True,
                  quantize: Literal["none", "4bit"] | None = None) -> Endpoint:
    """The endpoint for a finished run: its base model plus its adapter, served under the run id.

    Reuses a live endpoint that already serves the run. quantize=None serves a QLoRA run's base
    model in 4-bit when a CUDA GPU is there (as it was trained), else in 16/32-bit."""
    existing = find_endpoint_for_run(ws, run_id)
    if existing is not None:
        return wait_ready(ws, existing.id) if wait else existing
    run_adapter_dir(ws, run_id)  # refuses a run without an adapter before a process starts
    with ws.db() as db:
        run = db["runs"].get(run_id)
    if quantize is None:
        method = json.loads(run.get("config_json") or "{}").get("method")
        quantize = "4bit" if method == "qlora" and _cuda_available() else "none"
    return start_endpoint(ws, run["base_model"], {run_id: run_id}, run_id=run_id, name=f"{run['name'] or run_id}",
                          port=port, wait=wait, quantize=quantize)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def register_remote(ws: Workspace, url: str, name: str | None = None, *, check: bool = True) -> Endpoint:
    """Register a TGI / vLLM / SGLang server by URL; with check=True its /v1/models must answer."""
    url = (url or "").strip().rstrip("/")
    if url.endswith("/v1"):
        url = url[:-3]
    if not re.match(r"^https?://[^\s/]+", url):
        raise InvalidInput(f"'{url}' is not an http(s) URL.", "Give the server's address, like http://host:8080.")
    base_model, adapters = "", {}
    if check:
        from studio.serving.chat import served_models

        models = served_models(url)
        base_model, adapters = models[0], {m: m for m in models[1:]}
    endpoint = Endpoint(id=_new_id(), name=name or url, kind="remote", url=url, base_model=base_model,
                        adapters=adapters, status="ready", created_at=now(), options={"served_name": base_model})
    return _save(ws, endpoint)

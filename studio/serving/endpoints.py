"""Endpoints the studio knows: local endpoint processes it started (`python -m studio.serving.server`) and
remote TGI / vLLM / SGLang servers registered by URL, kept in the `endpoints` table.

The studio is the only writer of that table; the endpoint process never touches SQLite. A local endpoint
is a supervised process (studio/core/procs.py): it outlives a restart of the studio and is re-adopted on
the next `list_endpoints` (its pid and start time still match); one that died is marked failed with how
it ended and the last lines of its log. Status changes go through ENDPOINT_STATES: a start first claims
its port, its name and (for a run's chat endpoint) its run, so two starts of the same endpoint never run
two processes.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel

from studio.core import access, audit, procs
from studio.core.db import now, seconds_since
from studio.core.errors import Conflict, InvalidInput, NotFound
from studio.core.states import Machine
from studio.serving.client import healthy, served_models

if TYPE_CHECKING:
    from studio.core.workspace import Workspace

LIVE = ("starting", "ready")
STOP_GRACE_S = 15.0
CLAIM_GRACE_S = 60.0  # a row claimed this long ago without a process: its starter died before launching it
LOG_NOISE = ("it/s]", "Loading weights")
ENDPOINT_STATES = Machine(
    table="endpoints", noun="Endpoint", listing=" (`studio endpoints list`, or the Chat tab)",
    transitions={
        "starting": ("ready", "stopped", "failed"),  # /health answered; stopped while loading; died
        "ready": ("stopped", "failed"),
        "stopped": (),  # a stopped endpoint is not restarted: a new start makes a new one
        "failed": (),
    },
    hints={"deleted": "Stop it first: `studio endpoints stop`."},
)


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
    def api_key(self) -> str | None:
        """The remote server's API key, read from the environment variable named at registration (only the
        name is stored); None for a server that needs none."""
        name = self.options.get("api_key_env")
        if not name:
            return None
        key = os.environ.get(name)
        if not key:
            raise InvalidInput(f"Endpoint '{self.name}' needs its API key in the environment variable {name}, which "
                               "is not set for the studio.", f"Set {name} and start the studio again.")
        return key

    @property
    def base_name(self) -> str:
        """The `model` value that picks the base model on this endpoint."""
        return self.options.get("served_name") or self.base_model or "tgi"

    def proc(self, ws: Workspace) -> procs.Proc:
        folder = endpoint_dir(ws, self.id)
        return procs.Proc(pid=self.pid, started=self.proc_start, log=folder / "server.log",
                          exit_file=folder / "exit.json")


def endpoint_dir(ws: Workspace, endpoint_id: str) -> Path:
    return ws.endpoints_dir / endpoint_id


def log_path(ws: Workspace, endpoint_id: str) -> Path:
    return endpoint_dir(ws, endpoint_id) / "server.log"


# ---------------------------------------------------------------- reading and reconciling


def read(ws: Workspace, endpoint_id: str) -> Endpoint:
    with ws.db() as db:
        return Endpoint.from_row(db["endpoints"].get(endpoint_id))


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
    return reconcile(ws, endpoint) if refresh else endpoint


def list_endpoints(ws: Workspace, *, include_stopped: bool = True) -> list[Endpoint]:
    """All registered endpoints, newest first; local ones checked against their process first."""
    with ws.db() as db:
        rows = list(db["endpoints"].rows_where(order_by="created_at desc"))
    endpoints = [reconcile(ws, Endpoint.from_row(r)) for r in rows]
    return [e for e in endpoints if include_stopped or e.live]


def reconcile(ws: Workspace, endpoint: Endpoint) -> Endpoint:
    """Bring a local endpoint's status in line with its process: re-adopt it, or mark it failed."""
    if endpoint.kind != "local" or not endpoint.live:
        return endpoint
    if endpoint.pid is None:  # claimed; its starter is launching the process (or died doing so)
        waited = seconds_since(endpoint.created_at)
        if waited is not None and waited < CLAIM_GRACE_S:
            return endpoint
        ENDPOINT_STATES.try_move(ws, endpoint.id, "failed", expect=("starting",), unchanged={"pid": None},
                                 stopped_at=now(), error="The studio stopped while it was starting this endpoint.")
        return read(ws, endpoint.id)
    proc = endpoint.proc(ws)
    if not procs.alive(proc):
        ending = procs.read_ending(proc.exit_file)
        ENDPOINT_STATES.try_move(ws, endpoint.id, "failed", expect=LIVE, unchanged={"pid": endpoint.pid},
                                 stopped_at=now(),
                                 error=f"The endpoint process ended unexpectedly ({ending.describe()}). "
                                 + log_tail(ws, endpoint.id))
        return read(ws, endpoint.id)
    if endpoint.status == "starting" and healthy(endpoint.url):
        ENDPOINT_STATES.try_move(ws, endpoint.id, "ready", expect=("starting",))
        return read(ws, endpoint.id)
    return endpoint


def log_tail(ws: Workspace, endpoint_id: str, lines: int = 8) -> str:
    path = log_path(ws, endpoint_id)
    if not path.exists():
        return "It left no log."
    useful = procs.tail(path, lines, skip=LOG_NOISE)
    return "Last log lines: " + " | ".join(useful) if useful else "Its log is empty."


# ---------------------------------------------------------------- stopping


def stop_endpoint(ws: Workspace, ref: str, reason: str | None = None) -> Endpoint:
    """Stop a local endpoint (SIGTERM to its process group, SIGKILL after a grace period).

    Stopping a stopped endpoint is a no-op; a remote endpoint cannot be stopped from here."""
    access.require(ws, "endpoint.stop")
    endpoint = get_endpoint(ws, ref)
    if endpoint.kind == "remote":
        raise Conflict(
            f"'{endpoint.name}' is a remote endpoint at {endpoint.url}; the studio did not start it.",
            "Stop it where it runs, or remove it from the list with `studio endpoints remove`.",
        )
    # stopped first, then the process: a reconcile meanwhile must not read its end as a crash
    if ENDPOINT_STATES.try_move(ws, endpoint.id, "stopped", expect=LIVE, stopped_at=now(), error=reason):
        procs.stop(endpoint.proc(ws), grace=STOP_GRACE_S)
    return read(ws, endpoint.id)


def stop_local_endpoints(ws: Workspace, reason: str) -> list[str]:
    """Stop every live local endpoint, recording `reason` (shown to the user); return their ids.

    Training's admission control calls this to free GPU memory before a run starts."""
    stopped = []
    for endpoint in list_endpoints(ws):
        if endpoint.kind == "local" and endpoint.live:
            stop_endpoint(ws, endpoint.id, reason=reason)
            stopped.append(endpoint.id)
    return stopped


def remove_endpoint(ws: Workspace, ref: str) -> Endpoint:
    """Forget an endpoint (a remote one, or a local one that no longer runs) and delete its log."""
    access.require(ws, "endpoint.remove")
    import shutil

    endpoint = get_endpoint(ws, ref)
    if endpoint.kind == "local" and endpoint.live:
        raise Conflict(f"Endpoint '{endpoint.name}' is still running.", "Stop it first: `studio endpoints stop`.")
    allowed = ("ready", "stopped", "failed") if endpoint.kind == "remote" else ("stopped", "failed")
    ENDPOINT_STATES.delete_when(ws, endpoint.id, allowed)
    shutil.rmtree(endpoint_dir(ws, endpoint.id), ignore_errors=True)
    return endpoint


# ---------------------------------------------------------------- finding and registering


def new_id() -> str:
    return time.strftime("ep-%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def find_endpoint_for_run(ws: Workspace, run_id: str) -> Endpoint | None:
    """A live local endpoint that serves this run's adapter under the run id (as start_for_run names it).

    Publish's endpoints for the run (a merged model, an adapter under another name) do not count."""
    for endpoint in list_endpoints(ws, include_stopped=False):
        if endpoint.kind == "local" and run_id in endpoint.adapters:
            return endpoint
    return None


def register_remote(ws: Workspace, url: str, name: str | None = None, *, check: bool = True,
                    api_key_env: str | None = None) -> Endpoint:
    """Register a TGI / vLLM / SGLang server by URL; with check=True its /v1/models must answer. A server that
    asks for an API key: `api_key_env` names the environment variable holding it (the key is never stored)."""
    access.require(ws, "endpoint.register")
    access.require(ws, "url.fetch")
    audit.record(ws, "url.fetch", url, why="register a remote endpoint", check=check)
    url = (url or "").strip().rstrip("/")
    if url.endswith("/v1"):
        url = url[:-3]
    if not re.match(r"^https?://[^\s/]+", url):
        raise InvalidInput(f"'{url}' is not an http(s) URL.", "Give the server's address, like http://host:8080.")
    if api_key_env and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", api_key_env):
        raise InvalidInput(f"'{api_key_env}' is not the name of an environment variable.",
                           "Give the variable's name (e.g. VLLM_API_KEY), not the key itself.")
    options = {"served_name": "", **({"api_key_env": api_key_env} if api_key_env else {})}
    base_model, adapters = "", {}
    if check:
        probe = Endpoint(id="", name=name or url, kind="remote", url=url, options=options)
        models = served_models(url, api_key=probe.api_key)
        base_model, adapters = models[0], {m: m for m in models[1:]}
    endpoint = Endpoint(id=new_id(), name=name or url, kind="remote", url=url, base_model=base_model,
                        adapters=adapters, status="ready", created_at=now(),
                        options={**options, "served_name": base_model})
    with ws.db() as db:
        db["endpoints"].insert(endpoint.to_row())
    return endpoint

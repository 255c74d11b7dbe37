"""The deployments registry: each publish recorded with its slot (where it went), URL, model version
(run id and export hash), verification result and times; the chain of previous versions per slot
is what rollback walks back along.

Statuses: publishing → healthy | unhealthy (verification) | manual (waits for you to start it) |
failed (the publish itself failed); later replaced (a newer publish took the slot) or rolled_back.
Every status change goes through DEPLOYMENT_STATES. A deployment records the process doing the
publishing (the studio or a CLI); one left "publishing" because that process died is failed by
`reconcile`, which every listing runs first.
"""

from __future__ import annotations

import json
import secrets
import shlex
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from studio.core import access, procs
from studio.core.db import now
from studio.core.errors import NotFound
from studio.core.states import Machine

if TYPE_CHECKING:
    from studio.core.workspace import Workspace

LIVE = ("healthy", "unhealthy", "manual")
DEPLOYMENT_STATES = Machine(
    table="deployments", noun="Deployment", listing=" (`studio deployments list`, or the Publish tab)",
    transitions={
        "publishing": ("healthy", "unhealthy", "manual", "failed"),
        # re-verifying keeps or changes the verdict; a newer publish or a rollback takes the slot
        "healthy": ("healthy", "unhealthy", "replaced", "rolled_back"),
        "unhealthy": ("healthy", "unhealthy", "replaced", "rolled_back"),
        "manual": ("healthy", "unhealthy", "manual", "replaced", "rolled_back"),
        "failed": ("rolled_back",),  # a failed publish whose slot is rolled back to the version before it
        "replaced": (),
        "rolled_back": (),
    },
    hints={"healthy": "Re-verify the slot's current deployment instead.",
           "unhealthy": "Re-verify the slot's current deployment instead.",
           "rolled_back": "Roll back the slot's current deployment instead."},
)


@dataclass
class Deployment:
    id: str
    run_id: str
    target: str
    slot: str
    status: str
    created_at: str
    url: str | None = None
    model_version: str | None = None
    export_hash: str | None = None
    export_id: str | None = None
    model_name: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # {"options": public, "served": ..., "details": ...}
    verification: dict[str, Any] = field(default_factory=dict)
    previous_id: str | None = None
    error: str | None = None
    updated_at: str | None = None
    created_by: str | None = None  # the account that published it (the machine's user from the CLI)

    @classmethod
    def from_row(cls, row: dict) -> Deployment:
        row = dict(row)
        row["options"] = json.loads(row.pop("options_json", None) or "{}")
        row["verification"] = json.loads(row.pop("verification_json", None) or "{}")
        return cls(**{k: row.get(k) for k in cls.__dataclass_fields__ if k in row})

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @property
    def verdict(self) -> str:
        return self.verification.get("verdict", "not run")


def _to_row(values: dict[str, Any]) -> dict[str, Any]:
    row = dict(values)
    if "options" in row:
        row["options_json"] = json.dumps(row.pop("options"), default=str)
    if "verification" in row:
        row["verification_json"] = json.dumps(row.pop("verification"), default=str)
    return row


def create(ws: Workspace, *, run_id: str, target: str, slot: str, **fields: Any) -> Deployment:
    """A new deployment, "publishing", owned by this process until it is recorded."""
    owner_pid, owner_start = procs.own_identity()
    fields.setdefault("created_by", access.current().name)
    with ws.db() as db:
        dep_id = _new_id()
        while db.execute("SELECT 1 FROM deployments WHERE id = ?", [dep_id]).fetchone():
            dep_id = _new_id()  # made in the same second as another one, with the same random part
        db["deployments"].insert(_to_row({
            "id": dep_id, "run_id": run_id, "target": target, "slot": slot, "status": "publishing",
            "created_at": now(), "updated_at": now(), "owner_pid": owner_pid, "owner_start": owner_start, **fields}))
    return get_deployment(ws, dep_id)


def _new_id() -> str:
    return f"dep-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def transition(ws: Workspace, dep_id: str, to: str, *, expect: tuple[str, ...] | None = None,
               quiet: bool = False, unchanged: dict[str, Any] | None = None, **fields: Any) -> Deployment | None:
    """The one way a deployment's status changes (see DEPLOYMENT_STATES), with `fields` in the same update.
    A refused change raises Conflict, or returns None with quiet=True."""
    row = _to_row({**fields, "updated_at": now()})
    if quiet:
        if not DEPLOYMENT_STATES.try_move(ws, dep_id, to, expect=expect, unchanged=unchanged, **row):
            return None
    else:
        DEPLOYMENT_STATES.move(ws, dep_id, to, expect=expect, unchanged=unchanged, **row)
    return get_deployment(ws, dep_id)


def reconcile(ws: Workspace) -> list[str]:
    """Fail every deployment left "publishing" by a process that is gone (a crash or kill mid-publish);
    a slot whose earlier version that publish had already stopped says so. Returns the ids failed."""
    with ws.db() as db:
        rows = list(db["deployments"].rows_where("status = 'publishing'"))
    failed = []
    for row in rows:
        if procs.is_running(row.get("owner_pid"), row.get("owner_start")):
            continue
        who = f"the process doing it (pid {row['owner_pid']})" if row.get("owner_pid") else "the studio doing it"
        if transition(ws, row["id"], "failed", expect=("publishing",), quiet=True,
                      unchanged={"owner_pid": row.get("owner_pid")},
                      error=f"The publish stopped before it finished: {who} ended (a crash, a kill or a restart). "
                      "Publish the run again."):
            failed.append(row["id"])
            if row.get("previous_id"):
                replaced_if_gone(ws, get_deployment(ws, row["previous_id"]))
    return failed


def replaced_if_gone(ws: Workspace, previous: Deployment) -> None:
    """A failed local/Docker publish may already have stopped what ran before; say so in the registry."""
    from studio.core.errors import StudioError
    from studio.serving import endpoints

    endpoint_id = previous.options.get("details", {}).get("endpoint_id")
    if previous.status in LIVE and endpoint_id:
        try:
            if not endpoints.get_endpoint(ws, endpoint_id).live:
                transition(ws, previous.id, "replaced", expect=LIVE, quiet=True)
        except StudioError:
            pass


def get_deployment(ws: Workspace, dep_id: str) -> Deployment:
    with ws.db() as db:
        rows = list(db["deployments"].rows_where("id = ?", [dep_id]))
    if not rows:
        raise NotFound(f"There is no deployment '{dep_id}'.", "See `studio deployments list`.")
    return Deployment.from_row(rows[0])


def list_deployments(ws: Workspace, *, run_id: str | None = None, slot: str | None = None) -> list[Deployment]:
    reconcile(ws)
    where, args = [], []
    if run_id:
        where.append("run_id = ?")
        args.append(run_id)
    if slot:
        where.append("slot = ?")
        args.append(slot)
    with ws.db() as db:
        rows = list(db["deployments"].rows_where(" and ".join(where) or None, args,
                                                 order_by="created_at desc, rowid desc"))
    return [Deployment.from_row(r) for r in rows]


def live_in_slot(ws: Workspace, slot: str) -> Deployment | None:
    """What currently occupies a slot: its newest deployment that is healthy, unhealthy or manual."""
    return next((d for d in list_deployments(ws, slot=slot) if d.status in LIVE), None)


def resolve(ws: Workspace, ref: str) -> Deployment:
    """A deployment by id, or the newest deployment of a slot (e.g. 'local:published', 'hub:me/model')."""
    ref = (ref or "").strip()
    if ref.startswith("dep-"):
        return get_deployment(ws, ref)
    found = [d for d in list_deployments(ws, slot=ref) if d.status not in ("replaced", "rolled_back")]
    if not found:
        raise NotFound(f"There is no deployment '{ref}' (neither an id nor a slot with a current deployment).",
                       "See `studio deployments list` for ids and slots.")
    return found[0]


def curl_example(dep: Deployment, question: str = "Hello, what can you help me with?") -> str:
    """A copy-paste request against the deployment's chat endpoint (None-free: the Hub has none). The run's
    dataset system prompt, recorded at publish, goes first, as verification asked it: without it a tuned model
    may not answer as it was trained to."""
    served = dep.options.get("served") or {}
    url = served.get("url") or dep.url
    if not url or dep.target == "hub":
        return ""
    system = (dep.options["system_prompt"] if "system_prompt" in dep.options  # older deployments: the golden set's
              else (dep.verification.get("prompts_from") or {}).get("system_prompt"))
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    body = {"model": served.get("model") or "tgi", "messages": messages, "max_tokens": 200, "temperature": 0}
    auth = ""
    if served.get("api_key_set") or dep.target == "inference-endpoint":
        auth = ' -H "Authorization: Bearer $' + ("HF_TOKEN" if dep.target == "inference-endpoint" else "API_KEY") \
               + '"'
    return (f"curl {url.rstrip('/')}/v1/chat/completions -H 'Content-Type: application/json'{auth} "
            f"-d {shlex.quote(json.dumps(body))}")  # a system prompt may hold a quote


def format_deployment(dep: Deployment) -> str:
    """The deployment as a few plain lines: where, what, how healthy, how to call it."""
    from studio.publishing.verify import format_verification

    lines = [f"Deployment {dep.id}: {dep.status}",
             f"  target   {dep.target} ({dep.slot})",
             f"  url      {dep.url or '-'}",
             f"  version  {dep.model_version} (export {dep.export_id})",
             f"  created  {dep.created_at}" + (f", replaces {dep.previous_id}" if dep.previous_id else "")]
    details = dep.options.get("details") or {}
    if details.get("command_text"):
        lines.append(f"  command  {details['command_text']}")
        lines.append(f"  compose  {details.get('compose_file')}")
    if dep.error and dep.status == "failed":
        lines.append(f"  error    {dep.error}")
    if dep.verification:
        lines.append(format_verification(dep.verification) if dep.verification.get("items") is not None
                     and dep.verdict != "not_run" else f"Verification: not run — {dep.verification.get('summary')}")
    from studio.publishing.mlflow_registry import describe

    tracked = describe(dep.options.get("mlflow"))
    if tracked:
        lines.append(tracked)
    curl = curl_example(dep)
    if curl:
        lines += ["Try it:", f"  {curl}"]
    return "\n".join(lines)

"""The publish flow, one call per button: preview (what will happen), publish (export → deploy →
verify → record), reverify, and rollback (the slot's previous version, published again and verified).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from studio.core import access, audit
from studio.core.db import now
from studio.core.errors import Conflict, StudioError
from studio.publishing import deployments as registry
from studio.publishing.export import Export, get_export, reusable_export, start_export, wait_export
from studio.publishing.source import RunSource, finished_run, run_metrics
from studio.publishing.targets import make_target
from studio.publishing.targets.base import Deployed, Plan
from studio.publishing.verify import Served, dataset_system_prompt, verification_set, verify

if TYPE_CHECKING:
    from studio.core.workspace import Workspace

Progress = Callable[[float, str], None]
DOCKER_TARGETS = ("tgi-docker", "vllm-docker", "sglang-docker")  # container targets (targets/tgi_docker.py)


def _quiet(fraction: float, message: str) -> None:
    pass


def _scaled(progress: Progress, start: float, end: float) -> Progress:
    return lambda f, m: progress(start + (end - start) * max(0.0, min(1.0, f)), m)


def preview(ws: Workspace, run_id: str, target: str = "local", options: dict | None = None) -> Plan:
    """What publishing would do, without doing it: the steps, the command, the repo, the limits."""
    chosen = make_target(ws, target, options)
    source = finished_run(ws, run_id)
    existing = reusable_export(ws, source.run_id, chosen.export_kind())
    return chosen.plan(source, str(existing.model_dir) if existing else None)


def card_facts(ws: Workspace, source: RunSource) -> dict[str, Any]:
    """What the model card says about the run: data version, preset, rank, length, metrics, evaluation."""
    from studio.data.store import get_version
    from studio.models.catalog import catalog_entry

    facts: dict[str, Any] = {"run_id": source.run_id, "run_name": source.name, "base_model": source.base_model,
                             "preset": source.preset, "lora_r": source.lora_r, "max_length": source.max_length,
                             "metrics": run_metrics(source)}
    entry = catalog_entry(source.base_model)
    if entry:
        facts["license"] = entry.license
    try:
        version = get_version(ws, source.dataset_id)
        facts["dataset"] = {"id": version.id, "name": version.name, "rows_train": version.rows_train,
                            "rows_val": version.rows_val}
    except StudioError:
        facts["dataset"] = {"id": source.dataset_id}
    with ws.db() as db:
        rows = list(db["evaluations"].rows_where("run_id = ?", [source.run_id], order_by="created_at desc",
                                                 limit=1))
    if rows and rows[0].get("summary_json"):
        summary = json.loads(rows[0]["summary_json"])
        facts["evaluation"] = {k: v for k, v in summary.items() if isinstance(v, int | float)}
    return facts


def ensure_export(ws: Workspace, source: RunSource, kind: str, progress: Progress = _quiet,
                  fresh: bool = False, timeout: float | None = None) -> Export:
    """The newest intact export of this run and kind, or a new one (a background job, followed here)."""
    if not fresh:
        existing = reusable_export(ws, source.run_id, kind)
        if existing is not None:
            progress(1.0, f"using export {existing.id} ({existing.version})")
            return existing
    prompts, expected, prompts_from = verification_set(ws, source)
    progress(0.0, f"starting the {kind} export of {source.run_id}")
    export = start_export(ws, source, kind, prompts=prompts, expected=expected, card=card_facts(ws, source),
                          prompts_from=prompts_from)
    return wait_export(ws, export.id, progress=progress, timeout=timeout)


def publish(ws: Workspace, run_id: str, target: str = "local", options: dict | None = None,
            progress: Progress = _quiet, fresh_export: bool = False) -> registry.Deployment:
    """Export (or reuse), deploy, verify, record. A failure of the deploy itself is recorded and raised;
    a failed verification is recorded as an unhealthy deployment (not raised)."""
    access.require(ws, "publish", target=target)
    source = finished_run(ws, run_id)
    chosen = make_target(ws, target, options)
    plan = chosen.plan(source)  # validates what can be checked before the (long) export
    export = ensure_export(ws, source, plan.export_kind, _scaled(progress, 0.0, 0.5), fresh=fresh_export)
    previous = registry.live_in_slot(ws, plan.slot)
    dep = registry.create(ws, run_id=source.run_id, target=chosen.kind, slot=plan.slot,
                          model_version=export.version, export_hash=export.export_hash, export_id=export.id,
                          previous_id=previous.id if previous else None,
                          options={"options": chosen.options.public(),
                                   "system_prompt": dataset_system_prompt(ws, source.dataset_id)})
    audit.record(ws, "publish", dep.id, run=source.run_id, kind=chosen.kind, slot=plan.slot)
    dep = _deploy_and_verify(ws, dep, chosen, source, export, progress, replaces=previous)
    return _track(ws, dep, progress)


def _track(ws: Workspace, dep: registry.Deployment, progress: Progress) -> registry.Deployment:
    """A model version in MLflow's registry when a tracking URI is configured; its failure is a warning."""
    from studio.publishing import mlflow_registry
    from studio.training.tracking import configured

    if not configured(ws)[0]:
        return dep
    progress(0.97, "registering the model version in MLflow")
    result = mlflow_registry.register(ws, dep)
    return registry.transition(ws, dep.id, dep.status, expect=(dep.status,), quiet=True,
                               options={**dep.options, "mlflow": result}) or dep


def _deploy_and_verify(ws, dep, chosen, source, export, progress, replaces=None) -> registry.Deployment:
    try:
        deployed = chosen.deploy(source, export, _scaled(progress, 0.5, 0.85))
    except Exception as exc:
        registry.transition(ws, dep.id, "failed", expect=("publishing",), quiet=True, error=str(exc))
        if replaces is not None and chosen.kind in ("local", "vllm", *DOCKER_TARGETS):
            registry.replaced_if_gone(ws, replaces)
        raise
    if replaces is not None:  # quiet: a publish beside this one may have taken the slot from it already
        registry.transition(ws, replaces.id, "replaced", expect=registry.LIVE, quiet=True)
    progress(0.85, "verifying the replies")
    return _record(ws, dep.id, deployed, export, chosen.options.public())


def register_for_chat(ws: Workspace, url: str, name: str) -> None:
    """Make a deployed URL one of the endpoints the Chat tab offers (once)."""
    from studio.core.errors import NotFound
    from studio.serving import endpoints

    try:
        endpoints.get_endpoint(ws, url, refresh=False)
    except NotFound:
        endpoints.register_remote(ws, url, name=name, check=False)


def _served_dict(served: Served | None) -> dict | None:
    if served is None:
        return None
    return {"url": served.url, "model": served.model, "adapter_id": served.adapter_id,
            "max_total_tokens": served.max_total_tokens, "api_key_set": bool(served.api_key),
            "token_ids": served.token_ids}


def _record(ws: Workspace, dep_id: str, deployed: Deployed, export: Export, public: dict) -> registry.Deployment:
    if deployed.served is None and deployed.checks:  # a Hub push checked by its files only
        ok = all(c.get("ok") for c in deployed.checks)
        verification = {"verdict": "passed" if ok else "failed", "healthy": ok, "items": [], "causes": [],
                        "summary": "The replies were not checked (serve check off).", "checked_at": now()}
        verification = _with_checks(verification, deployed.checks)
        status = "healthy" if ok else "unhealthy"
    elif deployed.served is None:
        verification = {"verdict": "not_run", "healthy": None, "summary": deployed.message, "items": [],
                        "checks": deployed.checks}
        status = "manual"
    else:
        try:
            verification = verify(deployed.served, export.reference(), tokenizer_dir=str(export.model_dir))
        finally:
            if deployed.cleanup:
                deployed.cleanup()
        verification = _with_checks(verification, deployed.checks)
        status = "healthy" if verification["healthy"] else "unhealthy"
    current = registry.get_deployment(ws, dep_id)
    kept = current.options  # e.g. rollback_of
    if deployed.served is not None and current.target in (*DOCKER_TARGETS, "remote", "inference-endpoint"):
        register_for_chat(ws, deployed.served.url, current.slot)  # local endpoints are registered already
    return registry.transition(
        ws, dep_id, status, url=deployed.url, verification=verification,
        model_name=deployed.served.model if deployed.served else None,
        options={**kept, "options": public, "served": _served_dict(deployed.served), "details": deployed.details},
        error=None if status != "unhealthy" else verification["summary"],
    )


def _with_checks(verification: dict, checks: list[dict]) -> dict:
    failing = [c for c in checks if not c.get("ok")]
    verification = dict(verification, checks=checks)
    if failing:
        verification.update(verdict="failed", healthy=False,
                            causes=sorted(set(verification.get("causes", [])) | {c["cause"] for c in failing}),
                            summary=" ".join(c["text"][0].upper() + c["text"][1:] + "." for c in failing)
                            + " " + verification["summary"])
    return verification


def reverify(ws: Workspace, ref: str, secrets: dict[str, str] | None = None,
             progress: Progress = _quiet) -> registry.Deployment:
    """Ask the deployment again (after you started its container, or to check it still answers)."""
    access.require(ws, "publish")
    dep = registry.resolve(ws, ref)
    export = _export_of(ws, dep)
    secrets = {k: v for k, v in (secrets or {}).items() if v}
    chosen = make_target(ws, dep.target, {**dep.options.get("options", {}), **secrets})
    source = finished_run(ws, dep.run_id)
    if dep.target == "hub":
        deployed = chosen.recheck(source, export, dep.options.get("details", {}), _scaled(progress, 0.0, 0.85))
    else:
        deployed = Deployed(url=dep.url, served=_stored_served(dep, chosen, source, secrets),
                            details=dep.options.get("details", {}))
    progress(0.85, "verifying the replies")
    return _record(ws, dep.id, deployed, export, chosen.options.public())


def _stored_served(dep: registry.Deployment, chosen, source: RunSource, secrets: dict) -> Served:
    info = dep.options.get("served")
    if info:
        key = secrets.get("api_key") or secrets.get("token") or _token_for(dep)
        return Served(url=info["url"], model=info.get("model"), adapter_id=info.get("adapter_id"), api_key=key,
                      max_total_tokens=info.get("max_total_tokens"), token_ids=bool(info.get("token_ids")))
    if dep.target in DOCKER_TARGETS and dep.url:  # registered while Docker was absent; started by hand since
        limits = dep.options.get("details", {}).get("limits") or {}
        served = chosen.served(source, chosen.launch(source, ""), dep.url)
        return dataclasses.replace(served, api_key=secrets.get("api_key") or served.api_key,
                                   max_total_tokens=limits.get("max_total_tokens") or served.max_total_tokens)
    raise Conflict(f"Deployment {dep.id} has no endpoint to ask ({dep.status}).", "Publish it again.")


def _token_for(dep: registry.Deployment) -> str | None:
    if dep.target == "inference-endpoint":
        from huggingface_hub import get_token

        return get_token()
    return None


def _export_of(ws: Workspace, dep: registry.Deployment) -> Export:
    export = get_export(ws, dep.export_id)
    marker = "config.json" if export.kind == "merged" else "adapter_config.json"
    if export.status != "succeeded" or not (export.model_dir / marker).exists():
        raise Conflict(f"The export {export.id} behind deployment {dep.id} is gone from {export.folder}.",
                       "Publish the run again; that makes a new export.")
    return export


def rollback(ws: Workspace, ref: str, secrets: dict[str, str] | None = None,
             progress: Progress = _quiet) -> registry.Deployment:
    """Put the slot's previous version back: publish its export again to the same target, verify it,
    and mark the current deployment rolled back. `ref` is a deployment id or a slot."""
    access.require(ws, "publish.rollback")
    current = registry.resolve(ws, ref)
    if not current.previous_id:
        raise Conflict(f"Deployment {current.id} ({current.slot}) has no earlier version to roll back to.",
                       "Publish another run to this slot first, or pick another deployment.")
    if current.status not in (*registry.LIVE, "failed"):
        raise Conflict(f"Deployment {current.id} is {current.status}, so it cannot be rolled back.",
                       "Roll back the slot's current deployment (`studio deployments list` shows it).")
    earlier = registry.get_deployment(ws, current.previous_id)
    export = _export_of(ws, earlier)
    source = finished_run(ws, earlier.run_id)
    secrets = {k: v for k, v in (secrets or {}).items() if v}
    chosen = make_target(ws, earlier.target, {**earlier.options.get("options", {}), **secrets})
    progress(0.0, f"rolling {current.slot} back from {current.model_version} to {earlier.model_version}")
    dep = registry.create(ws, run_id=earlier.run_id, target=earlier.target, slot=earlier.slot,
                          model_version=earlier.model_version, export_hash=earlier.export_hash,
                          export_id=earlier.export_id, previous_id=earlier.previous_id,
                          options={"options": chosen.options.public(), "rollback_of": current.id,
                                   "system_prompt": dataset_system_prompt(ws, source.dataset_id)})
    audit.record(ws, "publish.rollback", dep.id, slot=current.slot, was=current.id,
                 to_version=earlier.model_version)
    result = _deploy_and_verify(ws, dep, chosen, source, export, progress)
    registry.transition(ws, current.id, "rolled_back", expect=(*registry.LIVE, "failed"))
    return result

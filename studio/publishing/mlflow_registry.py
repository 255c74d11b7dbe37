"""A publish, told to MLflow's model registry: a new version of the registered model named after the run's served
name, whose source is the adapter the training run logged (runs:/ID/adapter), tagged with the deployment's URL and
its verification result, with the export's model card logged beside the run's adapter.

Only when a tracking URI is configured (training/tracking.py). A tracking server that fails never fails the
publish: the deployment records a warning with the reason instead of a model version.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from studio.training import tracking
from studio.training.reporting import flat_params, import_mlflow

if TYPE_CHECKING:
    from studio.core.workspace import Workspace
    from studio.publishing.source import RunSource

log = logging.getLogger("studio.publishing.mlflow")


def register(ws: Workspace, dep: Any) -> dict[str, Any] | None:
    """Register `dep` (a deployments.Deployment; not imported: deployments imports this module to describe it)
    as a model version. None when MLflow is not configured, else what happened (a `warning` with the reason
    when MLflow could not be reached or refused)."""
    uri, _ = tracking.configured(ws)
    if not uri:
        return None
    try:
        return _register(ws, dep, uri)
    except Exception as exc:  # noqa: BLE001 - the publish stands; MLflow's failure is a warning on it
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        warning = (f"MLflow at {uri}: the model version was not registered ({type(exc).__name__}: {reason}). "
                   "The deployment itself is unaffected; check the server with `studio tracking check`.")
        log.warning(warning)
        return {"uri": uri, "warning": warning}


def _register(ws: Workspace, dep: Any, uri: str) -> dict[str, Any]:
    from studio.publishing.export import get_export
    from studio.publishing.source import finished_run

    mlflow = import_mlflow()
    client = mlflow.MlflowClient(tracking_uri=uri)
    source = finished_run(ws, dep.run_id)
    entry = _run_entry(source)
    run_id = entry.get("run_id") if entry.get("uri") == uri else None
    if run_id is None:  # trained before MLflow was set (or logged elsewhere): the run is logged now
        run_id = _log_run_now(client, source)
    export = get_export(ws, dep.export_id) if dep.export_id else None
    card = export.model_dir / "README.md" if export is not None else None
    if card is not None and card.exists():
        client.log_artifact(run_id, str(card), "model_card")
    name = source.adapter_name
    if not client.search_registered_models(filter_string=f"name = '{_quoted(name)}'"):
        client.create_registered_model(name, tags={"studio.base_model": source.base_model},
                                       description=f"LLMOps Studio fine-tunes of {source.base_model}.")
    verification = dep.verification or {}
    tags = {"verification": verification.get("verdict") or "not_run", "endpoint_url": dep.url or "",
            "deployment_id": dep.id, "target": dep.target, "slot": dep.slot, "studio.run_id": dep.run_id,
            "studio.model_version": dep.model_version or "", "served_model": dep.model_name or "",
            "verification_summary": str(verification.get("summary") or "")[:4000]}
    version = client.create_model_version(name, source=f"runs:/{run_id}/adapter", run_id=run_id,
                                          tags={k: str(v) for k, v in tags.items()},
                                          description=f"Deployment {dep.id} ({dep.target}, {dep.slot}) at "
                                                      f"{dep.url or '-'}: verification {tags['verification']}.",
                                          await_creation_for=30)
    log.info("MLflow: %s version %s registered at %s", name, version.version, uri)
    return {"uri": uri, "registered_model": name, "version": str(version.version), "run_id": run_id,
            "tags": tags}


def _run_entry(source: RunSource) -> dict[str, Any]:
    from studio.core.files import read_json

    return ((read_json(source.run_dir / "manifest.json") or {}).get("tracking") or {}).get("mlflow") or {}


def _quoted(name: str) -> str:
    return name.replace("'", "\\'")


def _log_run_now(client: Any, source: RunSource) -> str:
    """An MLflow run for a studio run that trained without tracking: its frozen config and its adapter."""
    from mlflow.entities import Param

    run = client.create_run(reporting_experiment(client), run_name=source.run_id,
                            tags={"studio.run_id": source.run_id, "studio.base_model": source.base_model,
                                  "studio.dataset_id": source.dataset_id, "studio.logged_at": "publish"})
    params = [Param(k, v) for k, v in flat_params(source.config).items()]
    for i in range(0, len(params), 100):
        client.log_batch(run.info.run_id, params=params[i:i + 100])
    client.log_artifacts(run.info.run_id, str(source.adapter_dir), "adapter")
    client.set_terminated(run.info.run_id, status="FINISHED")
    return run.info.run_id


def reporting_experiment(client: Any) -> str:
    from studio.training.reporting import experiment_id

    return experiment_id(client, tracking.experiment_name())


def describe(result: dict[str, Any] | None) -> str | None:
    """One line for the publish's output: the model version registered, or why not."""
    if not result:
        return None
    if result.get("warning"):
        return f"  mlflow   warning: {result['warning']}"
    return (f"  mlflow   registered model '{result['registered_model']}' version {result['version']} "
            f"(run {result['run_id']}, verification {result['tags']['verification']})")

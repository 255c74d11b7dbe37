"""Where runs report to MLflow, on the studio's side: the tracking URI (the System tab's setting, else
MLFLOW_TRACKING_URI), the check that a tracking server answers, and the entry submit freezes into each run's
manifest, so the training process — which may run on another machine — logs to the same place.

What the training process logs is in training/reporting.py; a publish's model version in
publishing/mlflow_registry.py. `mlflow` is an optional extra (`pip install llmops-studio[mlflow]`).
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from studio.core import accounts, settings
from studio.core.errors import InvalidInput, ResourceError
from studio.training.reporting import EXPERIMENT, INSTALL, import_mlflow

if TYPE_CHECKING:
    from studio.core.workspace import Workspace

SETTING = "mlflow_tracking_uri"
ENV = "MLFLOW_TRACKING_URI"
CONNECT_TIMEOUT_S = 5.0
SCHEMES = ("http", "https", "file", "sqlite", "postgresql", "mysql", "mssql", "databricks")
FIX = ("Check the address: a tracking server is http://HOST:5000 (`mlflow server --host 0.0.0.0 --port 5000`); "
       "a local store is sqlite:///PATH/mlflow.db. Then try again (System tab → Check, or `studio tracking check`).")


class TrackingUnreachable(ResourceError):
    kind = "tracking_unreachable"


def normalize(uri: str) -> str:
    """The tracking URI as MLflow takes it; a bare host:port is taken for an http server."""
    text = (uri or "").strip().rstrip("/")
    if not text:
        raise InvalidInput("No MLflow tracking URI was given.", "Give one, e.g. http://HOST:5000.")
    if "://" not in text and text != "databricks" and not text.startswith(("databricks://", "file:")):
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme.split("+")[0] not in SCHEMES:
        raise InvalidInput(f"'{uri}' is not an MLflow tracking URI (scheme '{parts.scheme}').",
                           f"Use one of {', '.join(s + '://' for s in SCHEMES[:4])}… e.g. http://HOST:5000.")
    if parts.scheme in ("http", "https") and (parts.username or parts.password):
        raise InvalidInput("The tracking URI holds a user name or password; it would be written into every run's "
                           "manifest.", "Drop them from the URI and set MLFLOW_TRACKING_USERNAME and "
                           "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) where the studio runs.")
    return text


def stored(ws: Workspace) -> str | None:
    """The URI set in the System tab (None when none is)."""
    return settings.read(ws, SETTING) or None


def configured(ws: Workspace) -> tuple[str | None, str]:
    """(the URI runs and publishes log to, where it comes from): the System tab's setting, else
    MLFLOW_TRACKING_URI; (None, "") when neither is set, and nothing goes to MLflow."""
    return settings.configured(ws, SETTING, ENV, normalize=normalize,
                               where="the studio's settings (System tab, `studio tracking set`)")


def experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME", "").strip() or EXPERIMENT


def manifest_entry(ws: Workspace) -> dict[str, Any] | None:
    """What submit freezes into a run's manifest: {"mlflow": {"uri", "experiment"}}, or None (no tracking)."""
    uri, _ = configured(ws)
    return {"mlflow": {"uri": uri, "experiment": experiment_name()}} if uri else None


def set_uri(ws: Workspace, uri: str | None) -> str | None:
    """Store the tracking URI runs log to (checked first: one that does not answer is refused); "" clears it."""
    value = normalize(uri) if (uri or "").strip() else None
    return accounts.change_setting(ws, SETTING, value, check=check, uri=value)


def reachable(uri: str) -> str | None:
    """None when something listens at an http(s) URI (or it is not one); else why not, in words. A plain TCP
    connect with a timeout first: MLflow's client retries a refused connection with backoff."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return None
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        with socket.create_connection((parts.hostname, port), timeout=CONNECT_TIMEOUT_S):
            return None
    except TimeoutError:
        return f"no answer within {CONNECT_TIMEOUT_S:.0f} s"
    except (OSError, ValueError) as exc:
        return getattr(exc, "strerror", None) or str(exc)


def check(uri: str) -> dict[str, Any]:
    """Ask the tracking server for its experiments: what it is and whether the studio's experiment exists."""
    uri = normalize(uri)
    problem = reachable(uri)
    if problem:
        raise TrackingUnreachable(f"The MLflow tracking server at {uri} did not answer: {problem}.", FIX)
    try:
        mlflow = import_mlflow()
    except ImportError as exc:
        raise ResourceError("MLflow is not installed in the studio's environment.", f"Install it: {INSTALL}") from exc
    try:
        client = mlflow.MlflowClient(tracking_uri=uri)
        experiments = client.search_experiments(max_results=100)
    except Exception as exc:  # noqa: BLE001 - connection refused, timeout, not an MLflow server, bad credentials
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise TrackingUnreachable(f"The MLflow tracking server at {uri} did not answer: {first}", FIX) from exc
    name = experiment_name()
    found = next((e for e in experiments if e.name == name), None)
    return {"uri": uri, "mlflow_version": mlflow.__version__, "experiments": len(experiments),
            "experiment": name, "experiment_id": found.experiment_id if found else None}


def describe(facts: dict[str, Any]) -> str:
    where = (f"experiment '{facts['experiment']}' (id {facts['experiment_id']})" if facts["experiment_id"]
             else f"experiment '{facts['experiment']}' will be created by the first run")
    return (f"MLflow at {facts['uri']} answers: {facts['experiments']} experiment(s); runs log to {where} "
            f"(client {facts['mlflow_version']}).")


def run_link(entry: dict[str, Any] | None) -> str | None:
    """The web page of a run's MLflow run, for an http(s) tracking server (None otherwise)."""
    entry = entry or {}
    if not entry.get("run_id") or not str(entry.get("uri", "")).startswith(("http://", "https://")):
        return None
    experiment = f"/experiments/{entry['experiment_id']}" if entry.get("experiment_id") else ""
    return f"{entry['uri']}/#{experiment}/runs/{entry['run_id']}"

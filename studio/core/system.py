"""What this machine offers the studio: GPUs, CPU, memory, disk, library versions, HF token.

Shown by the System tab and by `studio doctor`; the same dictionary feeds both.
"""

from __future__ import annotations

import os
import platform
import shutil
from importlib import metadata
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:
    from studio.core.workspace import Workspace

KEY_LIBRARIES = (
    "torch", "transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes",
    "gradio", "huggingface_hub", "sqlite-utils", "pydantic", "tokenizers",
)  # fmt: skip
GIB = 1024**3


def gpus() -> list[dict]:
    """Each CUDA device with its memory, as torch sees it; [] without CUDA."""
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

"""Whether this machine has a GPU driver at all: answered from the file system, without importing torch (which
takes seconds), so the CLI, the queue and the training process can skip GPU work on a machine that has none."""

from __future__ import annotations

import os
import platform


def no_gpu_driver() -> bool:
    """True on a Linux machine without an NVIDIA driver (/proc/driver/nvidia, /dev/nvidia*), WSL's GPU device
    (/dev/dxg) or ROCm's (/dev/kfd): then torch cannot see a CUDA device either. False elsewhere (not sure)."""
    if platform.system() != "Linux":
        return False
    if os.path.exists("/proc/driver/nvidia") or os.path.exists("/dev/dxg") or os.path.exists("/dev/kfd"):
        return False
    try:
        return not any(name.startswith("nvidia") for name in os.listdir("/dev"))
    except OSError:
        return False

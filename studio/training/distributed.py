"""The training process inside a group of several (`accelerate launch`, launchers/accelerate.py): which rank
this process is, read from the environment the launcher gives every rank, and the few steps the ranks must
take together. A plain one-process run sees no such variables and is rank 0 of 1.

Only rank 0 writes the run folder's events, status and adapter; every rank stops at the same step.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def rank() -> int:
    """This process's global rank (torchrun/accelerate set RANK for every process they start)."""
    return int(os.environ.get("RANK", "0") or 0)


def local_rank() -> int:
    """The index of this process among those on this machine: the GPU it trains on."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_main() -> bool:
    """True for the one process that writes the run folder (rank 0, or a run of one process)."""
    return rank() == 0


def register(run_dir: Path) -> None:
    """A rank of a group notes its pid and start time in RUN_DIR/ranks/<rank>.json. torchrun starts every rank
    in a session of its own, outside the run's process group, so this is how the launcher finds each rank to
    watch it and to stop it, also after a restart of the studio or when accelerate's agent is gone."""
    if world_size() <= 1:
        return
    import psutil

    from studio.core.files import write_json_atomic

    ranks = run_dir / "ranks"
    ranks.mkdir(exist_ok=True)
    write_json_atomic(ranks / f"{rank()}.json",
                      {"rank": rank(), "pid": os.getpid(), "started": psutil.Process().create_time()})


def strategy() -> str | None:
    """How the ranks share the model: "fsdp" when the launcher asked for sharding, "ddp" when every rank holds
    a whole copy, None for a run of one process."""
    if world_size() <= 1:
        return None
    return "fsdp" if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" else "ddp"


def sync_stop(stop: bool, device: Any) -> bool:
    """Whether any rank was asked to stop: all ranks must leave the training loop at the same step, or the
    ones still training would wait forever for the others in the next gradient all-reduce."""
    if world_size() <= 1:
        return stop
    import torch
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return stop
    flag = torch.tensor([1 if stop else 0], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())

"""The fit check of a run of several processes (`--processes N`): how the processes share the model, and
whether that fits each GPU.

DDP when the whole run fits one GPU: every GPU holds a full copy (the 4-bit base weights, the adapter and its
optimizer) and trains on its share of each batch; only gradients travel. FSDP when it does not: the weights
and the adapter's gradients and optimizer state are sharded over the N GPUs (QLoRA's 4-bit weights stored in
the compute dtype, bnb_4bit_quant_storage, so FSDP can shard them) and each decoder layer is gathered whole
only while it computes. Activations stay per GPU either way. On the CPU the processes are DDP over gloo and
each holds the whole model in RAM. The decision goes into the estimate (a line the Train tab and the CLI show,
in plain words first and the technical name after) and into the run's manifest; the accelerate launcher
(launchers/accelerate.py) starts the run that way.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from studio.core.errors import InvalidInput
from studio.training.config import TrainConfig
from studio.training.fitcheck import SAFETY_MARGIN, FitEstimate, gb

if TYPE_CHECKING:
    from studio.models.catalog import Shape

# FSDP gathers one decoder layer's weights at a time (and prefetches the next: BACKWARD_PRE), so besides its
# shard each GPU holds two whole layers in the compute dtype.
FSDP_GATHERED_LAYERS = 2


def check_processes(processes: int, found_gpus: list[dict]) -> None:
    """Refuse more processes than this machine has GPUs (or CPU cores, without a GPU), naming the fix."""
    if processes <= 1:
        return
    if found_gpus:
        if processes > len(found_gpus):
            raise InvalidInput(
                f"The run asks for {processes} processes, one per GPU, but this machine has {len(found_gpus)} GPU(s).",
                f"Use --processes {len(found_gpus)} or fewer (1 for one GPU).")
        return
    cores = os.cpu_count() or 1
    if processes > cores:
        raise InvalidInput(f"The run asks for {processes} processes, but this machine has no GPU and {cores} CPU "
                           "core(s).", f"Use --processes {cores} or fewer.")


def spread(est: FitEstimate, cfg: TrainConfig, shape: Shape, gpu: dict[str, Any] | None,
           available_bytes: int | None = None) -> FitEstimate:
    """`est` (the estimate for one process) judged for cfg.processes processes: the strategy, the memory each
    process needs, the steps and time of the whole run, and the verdict with its reason."""
    n = cfg.processes
    if n <= 1:
        return est
    est = est.model_copy(deep=True)
    est.processes = n
    if not cfg.max_steps and est.steps:  # each step takes n micro-batches at once: n times fewer steps
        est.steps = max(1, -(-est.steps // n))
    est.tokens = est.tokens if not cfg.max_steps else est.tokens * n  # a fixed step count reads n times more
    est.seconds = round(est.seconds / n, 1) if not cfg.max_steps else est.seconds  # ideal scaling; see bench
    one = est.peak_bytes
    if gpu is None:  # CPU: DDP over gloo, n whole copies in RAM
        est.strategy = "ddp"
        est.peak_bytes = one * n
        est.strategy_reason = (f"{n} processes on this computer: each holds a full copy of the model and trains "
                               f"on its share of the rows, {gb(one)} each, {gb(one * n)} in all (DDP over {n} "
                               "CPU processes, gloo).")
        return _judge(est, available_bytes, "this computer's memory")
    free = est.free_bytes
    fits_one = free is not None and one <= free * SAFETY_MARGIN
    layer = (est.weights_bytes / max(shape.layers, 1)) * (2 if est.precision == "4bit" else 1)  # gathered: bf16
    sharded = int(one - (est.weights_bytes + est.adapter_bytes) * (1 - 1 / n) + FSDP_GATHERED_LAYERS * layer)
    if fits_one or free is None:
        est.strategy = "ddp"
        est.strategy_reason = (f"{n} GPUs: each GPU holds a full copy of the model and trains on its share of the "
                               f"rows, since the whole run ({gb(one)}) fits one GPU (DDP over {n} GPUs).")
        return est
    est.strategy = "fsdp"
    est.peak_bytes = sharded
    est.strategy_reason = (f"{n} GPUs: the model is split across the GPUs because it does not fit one (the run "
                           f"needs {gb(one)}, more than one GPU's {gb(free)} free); split, each GPU needs "
                           f"{gb(sharded)} (FSDP over {n} GPUs"
                           + (", 4-bit weights stored in the compute dtype" if est.precision == "4bit" else "") + ").")
    est.changes, est.suggestion = {}, ""
    return _judge(est, free, "each GPU")


def _judge(est: FitEstimate, free: int | None, where: str) -> FitEstimate:
    if free is None:
        return est
    est.fits = est.peak_bytes <= free * SAFETY_MARGIN
    est.verdict = (f"Fits: {gb(est.peak_bytes)} of the {gb(free)} free on {where}." if est.fits else
                   f"Too big: needs about {gb(est.peak_bytes)}, but {where} has {gb(free)} free.")
    if not est.fits and not est.suggestion:
        est.suggestion = "Use more GPUs, the low-memory preset, or a smaller model."
    return est


def manifest_entry(processes: int, estimate: dict | None) -> dict[str, Any]:
    """What the run's manifest records: the number of processes, the strategy, and why."""
    if processes <= 1:
        return {"processes": 1, "strategy": None}
    estimate = estimate or {}
    return {"processes": processes, "strategy": estimate.get("strategy") or "ddp",
            "reason": estimate.get("strategy_reason") or (
                "Each process holds a full copy of the model and trains on its share of the rows (DDP; no fit "
                "check: the model's size is unknown).")}

"""The fit check: before a run starts, estimate its peak memory and its time, compare with the chosen
device's free memory, and when it does not fit, name the change that does.

Arithmetic on the model's parameters (counted from its config on the meta device: studio.models.params), its
shape (studio.models.catalog.Shape), the TrainConfig and a few dataset numbers.
Every constant the estimate uses is in the block below, with where it comes from; bench/gpu_check.sh
measures real peaks next to these estimates, and bench/RESULTS.md records the error.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from studio.training.config import TrainConfig

if TYPE_CHECKING:
    from studio.core.workspace import Workspace
    from studio.models.catalog import Shape

GIB = 1024**3
MIB = 1024**2

# ---------------------------------------------------------------------------------------------------
# Constants of the estimate (calibrate here; nowhere else holds numbers of the model).
# ---------------------------------------------------------------------------------------------------
# Weights. NF4 stores 4 bits per weight plus one absmax per 64-weight block; double quantization stores
# those absmax values in 8 bits with a second-level fp32 constant per 256 blocks:
# 4 + 8/64 + 32/(64*256) = 4.127 bits per weight (QLoRA paper, section 3).
NF4_BITS_PER_PARAM = 4.127
# Embeddings, the LM head and norms are not quantized; they stay in the compute dtype (2 bytes),
# see recipe.load_base_model, or fp32 on the CPU.
# Adapter: trainable weight + its gradient + AdamW's two moments. QLoRA: TRL casts adapters to bf16
# (2+2+2+2); LoRA on a GPU: peft keeps adapters in fp32 (4+4+4+4); the CPU trains everything in fp32.
ADAPTER_BYTES_PER_PARAM = {"4bit": 8, "16bit": 16, "32bit": 16}
# Activations kept for the backward pass, in elements of the compute dtype per token and per layer,
# for a Llama-style block with fused SDPA attention (no seq x seq scores kept): norm inputs (upcast to
# fp32 inside RMSNorm), q/k/v/o inputs, q after rotary, attention output, residuals, LoRA dropout
# copies -> ~18 x hidden; k and v after rotary -> 4 x kv_dim; gate, up, SiLU(gate), product -> 4 x
# intermediate. (Korthikanti et al. 2022 count 34 x hidden for a GPT block with 4x MLP: the same order.)
# Calibrated (bench/RESULTS.md, 8B shape on an H200): without checkpointing 4 x 2048 tokens kept 69.8 GiB
# of activations, 5% more than 18 x hidden gave, so 20.
ACT_ELEMS_PER_HIDDEN = 20
ACT_ELEMS_PER_KV = 4
ACT_ELEMS_PER_INTERMEDIATE = 4
# With gradient checkpointing only each layer's input is kept (1 x hidden), plus the full activations of
# the one layer being recomputed and its gradients in flight. Measured: 0.59 GiB more per 1,000 tokens of
# micro-batch on the 8B shape (2 x 2048 -> 4 x 2048 packed), i.e. about 1.25 layers' worth.
CKPT_ELEMS_PER_HIDDEN = 1
CKPT_LIVE_LAYERS = 1.25
# TRL 1.16 computes the loss with a fused, tiled LM head: the (tokens x vocab) logits are never whole.
# What remains is its tile buffers and the fp32 per-token outputs: a small fixed amount.
LOSS_HEAD_BYTES = 128 * MIB
# 4-bit layers are dequantized to bf16 one weight at a time in forward and backward: the largest
# weight matrix, twice (forward and its transposed use may overlap).
DEQUANT_BUFFERS = 2
# The CUDA context and cuBLAS/cuDNN workspaces: outside torch's allocator but taken from free memory.
# Measured 0.75-0.77 GiB (torch 2.11 + CUDA 13 on an H200).
CUDA_CONTEXT_BYTES = 768 * MIB
# The caching allocator's fragmentation and rounding, as a share of everything torch allocates.
# Measured reserved - allocated at the peak: 0.2-1.7 GiB, 2-13% of allocated.
ALLOCATOR_OVERHEAD = 0.08
# Only plan to use this share of the free memory: other processes (a desktop, a notebook) move.
SAFETY_MARGIN = 0.95
# Time: training FLOPs per token = 2P (forward) + 2P (backward to the activations; frozen weights get
# no gradient) + 2P more when checkpointing recomputes the forward; P = the parameters each token uses
# (all of a dense model; a mixture of experts' routed experts only). Achieved share of the GPU's peak
# bf16 FLOP/s (model FLOPs utilisation): QLoRA dequantizes every weight each step, so it runs lower.
FLOPS_PER_TOKEN_PER_PARAM = 4
RECOMPUTE_FLOPS_PER_TOKEN_PER_PARAM = 2
# Measured on an H200, 8B shape, counting 6P with checkpointing: 0.23-0.26 packed, 0.17 per processed
# token unpacked; an H100 has less memory bandwidth for the dequantization, so a little lower.
MFU = {"4bit": 0.22, "16bit": 0.40}
# Peak dense bf16 TFLOP/s by GPU name (vendor data sheets); unknown GPUs get the default.
PEAK_TFLOPS = {
    "H200": 989, "H100": 989, "GH200": 989, "A100": 312, "L40S": 362, "L40": 181, "L4": 121,
    "A10G": 70, "A10": 125, "A6000": 155, "A40": 150, "4090": 165, "4080": 97, "3090": 71,
    "3080": 59, "4060": 44, "3060": 25, "T4": 65, "V100": 125,
}  # fmt: skip
DEFAULT_PEAK_TFLOPS = 100
# The CPU (demo-tiny only): effective training FLOP/s of 32-bit PyTorch on a few cores, and a fixed
# cost per optimizer step (Python, data collation, logging) that dominates tiny models. Measured on the
# 2-core test box, demo-tiny, 8 x ~35 tokens per step: 0.07 s per step on an idle box, 0.55 s at a load
# average of 3 (other test runs); 0.30 s sits between.
CPU_FLOPS = 20e9
STEP_OVERHEAD_S = {"gpu": 0.05, "cpu": 0.30}
# Rows padded to the longest in their batch process more tokens than they hold: measured 1.5x (34%
# padding) for log-normal lengths (median 400, sigma 0.7) in batches of 4; packing removes the padding.
PADDING_FACTOR = 1.5
# Without dataset numbers, assume examples half as long as max_length.
DEFAULT_FILL = 0.5
# ---------------------------------------------------------------------------------------------------


class FitEstimate(BaseModel):
    """Peak memory (bytes) by part, time, and the verdict against the chosen device."""

    device: str
    precision: str  # "4bit" | "16bit" | "32bit"
    params: int
    trainable_params: int
    weights_bytes: int
    adapter_bytes: int  # trainable weights + gradients + optimizer state
    activations_bytes: int
    overhead_bytes: int  # CUDA context, dequantization and loss buffers, allocator
    peak_bytes: int
    seq_len: int
    steps: int
    tokens: int
    seconds: float
    free_bytes: int | None = None
    fits: bool | None = None
    verdict: str = ""
    suggestion: str = ""
    changes: dict[str, Any] = {}
    notice: str | None = None
    advice: str = ""  # a run too short to teach much, and what gives it more steps
    processes: int = 1  # several: the memory above is per process (studio/training/strategy.py)
    strategy: str | None = None  # "ddp" | "fsdp" for several processes
    strategy_reason: str = ""

    def parts(self) -> list[tuple[str, int]]:
        return [
            (f"model weights ({self.precision})", self.weights_bytes),
            (f"adapter: {self.trainable_params:,} trainable parameters + gradients + optimizer", self.adapter_bytes),
            (f"activations ({self.seq_len} tokens x batch)", self.activations_bytes),
            ("GPU runtime, buffers, allocator" if self.precision != "32bit" else "buffers", self.overhead_bytes),
        ]

    def summary(self) -> str:
        lines = [f"Estimated peak memory: {gb(self.peak_bytes)} on {self.device}."]
        lines += [f"  {label}: {gb(size)}" for label, size in self.parts()]
        lines.append(f"Estimated time: {duration(self.seconds)} for {self.steps:,} steps (~{self.tokens:,} tokens).")
        lines += [t for t in (self.strategy_reason, self.verdict, self.suggestion, self.notice, self.advice) if t]
        return "\n".join(lines)


FEW_STEPS = 30  # fewer learning steps than this barely move an adapter (the learning rate warms up and decays)


def gb(size: float) -> str:
    return f"{size / GIB:.2f} GB" if size < 10 * GIB else f"{size / GIB:.1f} GB"


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"about {max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"about {round(seconds / 60)} min"
    return f"about {seconds / 3600:.1f} h"


def _count(shape: Shape, targets: list[str]) -> tuple[int, int, int, int, int]:
    """(weight matrices of the blocks, other params, adapter params per rank, largest weight matrix,
    params used per token), counted from the model's config on the meta device (studio.models.params)."""
    from studio.models.params import count_params

    counted = count_params(shape.hf_config())
    return counted.matrices, counted.other, counted.adapter_per_rank(targets), counted.largest, counted.active


# Preference methods (issue 17): DPO and ORPO put each row's chosen and rejected answers in one batch, KTO each
# completion and a mismatched one for its KL term: 2 sequences per row. DPO and KTO also run the reference
# (the adapter disabled) forward without gradients: its activations are freed layer by layer (about one
# layer's worth at a time) and it adds a forward pass: 2P FLOPs per token next to LoRA training's 4P.
SEQUENCES_PER_ROW = {"sft": 1, "dpo": 2, "orpo": 2, "kto": 2}
REFERENCE_PASS = {"dpo": True, "kto": True}


def _activations(shape: Shape, cfg: TrainConfig, seq_len: int, element_bytes: int) -> int:
    tokens = cfg.micro_batch_size * seq_len * SEQUENCES_PER_ROW.get(cfg.objective, 1)
    kv = shape.kv_dim
    per_layer = (
        ACT_ELEMS_PER_HIDDEN * shape.hidden + ACT_ELEMS_PER_KV * kv + ACT_ELEMS_PER_INTERMEDIATE * shape.intermediate
    )
    lora = 7 * cfg.lora_r  # each adapted projection keeps its low-rank intermediate
    if cfg.gradient_checkpointing:
        elems = shape.layers * CKPT_ELEMS_PER_HIDDEN * shape.hidden + CKPT_LIVE_LAYERS * (per_layer + lora)
    else:
        elems = shape.layers * (per_layer + lora)
    if REFERENCE_PASS.get(cfg.objective):
        elems += per_layer  # the reference forward, one layer live at a time
    return int(tokens * elems * element_bytes)


def precision_of(cfg: TrainConfig, on_gpu: bool) -> str:
    if not on_gpu:
        return "32bit"
    return "4bit" if cfg.method == "qlora" else "16bit"


def estimate(
    shape: Shape,
    cfg: TrainConfig,
    dataset_stats: dict[str, Any] | None = None,
    gpu: dict[str, Any] | None = None,
    *,
    available_bytes: int | None = None,
    suggest: bool = True,
) -> FitEstimate:
    """Estimate peak memory and time of `cfg` on `shape`; judge it against `gpu` (a studio.core.system.gpus()
    entry) or, without one, against `available_bytes` of RAM for a CPU run.

    dataset_stats: {"rows": training rows, "mean_tokens": ..., "max_tokens": ...}; missing numbers
    are assumed (rows unknown: only memory is estimated well).
    """
    stats = dataset_stats or {}
    on_gpu = gpu is not None
    precision = precision_of(cfg, on_gpu)
    element_bytes = 4 if precision == "32bit" else 2
    linear, other, per_rank, largest, active = _count(shape, cfg.target_modules)
    trainable = per_rank * cfg.lora_r

    if precision == "4bit":
        weights = linear * NF4_BITS_PER_PARAM / 8 + other * 2
    else:
        weights = (linear + other) * element_bytes
    adapter = trainable * ADAPTER_BYTES_PER_PARAM[precision]

    longest = int(stats.get("max_tokens") or cfg.max_length)
    mean = float(stats.get("mean_tokens") or cfg.max_length * DEFAULT_FILL)
    # Memory: the longest batch decides the peak; packing always fills max_length.
    seq_len = cfg.max_length if cfg.packing else min(cfg.max_length, longest)
    activations = _activations(shape, cfg, seq_len, element_bytes)

    buffers = LOSS_HEAD_BYTES + (DEQUANT_BUFFERS * largest * 2 if precision == "4bit" else 0)
    allocated = weights + adapter + activations + buffers
    overhead = buffers + (CUDA_CONTEXT_BYTES + ALLOCATOR_OVERHEAD * allocated if on_gpu else 0)
    peak = weights + adapter + activations + overhead

    # Time
    rows = int(stats.get("rows") or 0)
    per_row = min(mean, cfg.max_length)
    batch = cfg.micro_batch_size * cfg.gradient_accumulation
    if cfg.max_steps:
        steps = cfg.max_steps
    elif rows:  # as transformers' Trainer counts: micro-batches per epoch // accumulation, x epochs
        sequences = math.ceil(rows * per_row / cfg.max_length) if cfg.packing else rows
        per_epoch = max(math.ceil(sequences / cfg.micro_batch_size) // cfg.gradient_accumulation, 1)
        steps = math.ceil(per_epoch * cfg.epochs)
    else:
        steps = 0
    seq_tokens = cfg.max_length if cfg.packing else per_row * PADDING_FACTOR
    tokens = int(steps * batch * min(seq_tokens, cfg.max_length) * SEQUENCES_PER_ROW.get(cfg.objective, 1))
    params = linear + other
    flops = tokens * active * (
        FLOPS_PER_TOKEN_PER_PARAM + (RECOMPUTE_FLOPS_PER_TOKEN_PER_PARAM if cfg.gradient_checkpointing else 0)
        + (2 if REFERENCE_PASS.get(cfg.objective) else 0)
    )
    if on_gpu:
        throughput = peak_tflops(gpu.get("name", "")) * 1e12 * MFU[precision]
        seconds = flops / throughput + steps * STEP_OVERHEAD_S["gpu"]
    else:
        seconds = flops / CPU_FLOPS + steps * STEP_OVERHEAD_S["cpu"]

    result = FitEstimate(
        device=f"GPU {gpu.get('index', 0)} ({gpu.get('name', 'unknown')})" if on_gpu else "the CPU",
        precision=precision,
        params=int(params),
        trainable_params=int(trainable),
        weights_bytes=int(weights),
        adapter_bytes=int(adapter),
        activations_bytes=int(activations),
        overhead_bytes=int(overhead),
        peak_bytes=int(peak),
        seq_len=seq_len,
        steps=steps,
        tokens=tokens,
        seconds=round(seconds, 1),
    )
    if 0 < steps < FEW_STEPS and not cfg.max_steps:
        epochs = math.ceil(FEW_STEPS * cfg.epochs / steps)
        result.advice = (f"Only {steps} learning step{'s' if steps > 1 else ''}: on {rows:,} rows the adapter will "
                         f"change little. For more, raise epochs (passes over your rows) to about {epochs}, or set "
                         f"max_steps (the quick-test preset takes 100 steps).")
    if not on_gpu and cfg.method == "qlora":
        result.notice = "No CUDA GPU: this run would train with LoRA in 32-bit on the CPU (no 4-bit)."
    free = _free_bytes(gpu) if on_gpu else available_bytes
    if free is None:
        return result
    result.free_bytes = int(free)
    result.fits = peak <= free * SAFETY_MARGIN
    where = "the GPU" if on_gpu else "this computer's memory"
    if result.fits:
        result.verdict = f"Fits: {gb(peak)} of the {gb(free)} free on {where}."
        return result
    result.verdict = f"Too big: needs about {gb(peak)}, but {where} has {gb(free)} free."
    if suggest:
        changes, fixed = _find_fitting_change(shape, cfg, stats, gpu, free)
        result.changes = changes
        if fixed is not None:
            said = ", ".join(f"{k} = {v}" for k, v in changes.items())
            result.suggestion = f"This change fits ({gb(fixed.peak_bytes)}): {said}."
        else:
            result.suggestion = (
                "Even the low-memory settings do not fit. Choose a smaller base model, or free memory "
                "on the GPU (stop chat endpoints and other programs that use it)."
            )
    return result


def peak_tflops(name: str) -> float:
    upper = name.upper()
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):  # "L40S" before "L40" before "L4"
        if key in upper:
            return PEAK_TFLOPS[key]
    return DEFAULT_PEAK_TFLOPS


def _free_bytes(gpu: dict[str, Any]) -> int:
    if "memory_free_bytes" in gpu:
        return int(gpu["memory_free_bytes"])
    return int(float(gpu["memory_free_gb"]) * GIB)


def _find_fitting_change(
    shape: Shape, cfg: TrainConfig, stats: dict, gpu: dict | None, free: int
) -> tuple[dict[str, Any], FitEstimate | None]:
    """The smallest list of changes, tried in order of least harm to the result, that makes it fit."""
    changes: dict[str, Any] = {}
    current = cfg
    steps: list[dict[str, Any]] = []
    batch = cfg.effective_batch_size
    micro = cfg.micro_batch_size
    while micro > 1:  # smaller micro-batches, same learning (more accumulation)
        micro //= 2
        steps.append({"micro_batch_size": micro, "gradient_accumulation": max(1, batch // micro)})
    if not cfg.gradient_checkpointing:
        steps.insert(0, {"gradient_checkpointing": True})
    if cfg.method != "qlora" and gpu is not None:
        steps.append({"method": "qlora"})
    length = cfg.max_length
    while length > 512:
        length //= 2
        steps.append({"max_length": length})
    if cfg.lora_r > 8:
        steps.append({"lora_r": 8, "lora_alpha": 16})
    for step in steps:
        changes.update(step)
        current = current.model_copy(update=step)
        attempt = estimate(shape, current, stats, gpu, available_bytes=free, suggest=False)
        if attempt.fits:
            return changes, attempt
    return changes, None


def dataset_stats(ws: Workspace, dataset_id: str, base_model: str, sample: int = 2000) -> dict[str, Any]:
    """Rows and token lengths of a dataset version, for the estimate.

    The Data tab's report has them when the version was counted with this base model's tokenizer;
    otherwise a random sample of up to `sample` rows is rendered and counted with it. A hub model whose
    tokenizer is not downloaded yet is not fetched here (that can take a minute offline): the report's
    numbers, counted with another tokenizer, stand in for them.
    """
    from studio.data.store import get_version

    version = get_version(ws, dataset_id)
    tokens = (version.report or {}).get("tokens") or {}
    reported = {"rows": version.rows_train, "mean_tokens": tokens.get("mean"), "max_tokens": tokens.get("max")}
    if version.base_model == base_model and tokens.get("max"):
        return reported  # the stored report's counts: no tokenizer, no transformers import
    from transformers import AutoTokenizer

    from studio.data.store import load_split
    from studio.data.templates import apply_template
    from studio.models.resolve import resolve

    resolved = resolve(ws, base_model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved.source, local_files_only=not resolved.local)
        tokenizer = apply_template(tokenizer, version.template or "model")
    except Exception:  # not downloaded, or no chat template: the report's counts are the best guess
        return reported if tokens.get("max") else {"rows": version.rows_train}
    train = load_split(ws, dataset_id, "train")
    if len(train) > sample:
        train = train.shuffle(seed=0).select(range(sample))
    lengths = [len(tokenizer.apply_chat_template(_longest_chat(row), tokenize=True, return_dict=False))
               for row in train]
    return {
        "rows": version.rows_train,
        "mean_tokens": sum(lengths) / len(lengths) if lengths else 0,
        "max_tokens": max(lengths) if lengths else 0,
    }


def _longest_chat(row: dict[str, Any]) -> list[dict]:
    """An SFT row's chat; for preference/KTO rows the prompt with its longest answer (what memory must hold)."""
    if "messages" in row:
        return row["messages"]
    answers = [row[k] for k in ("chosen", "rejected", "completion") if k in row]
    return row["prompt"] + max(answers, key=lambda a: sum(len(m["content"]) for m in a))

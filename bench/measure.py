"""What the throughput benchmark measures: a synchronized clock per micro-batch and the losses, turned into real
tokens/s, MFU/HFU and peak memory; and the studio's fit-check estimate for the same run."""

from __future__ import annotations

import statistics
import time

from bench.qlora_paths import TokenCounter

PEAK_BF16_FLOPS = 989e12  # dense bf16 of an H100 SXM (and H200), vendor data sheet
GIB = 1024**3


def make_clock():
    import torch
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        """A synchronized timestamp after every micro-batch; the loss of every optimizer step."""

        def __init__(self):
            self.marks, self.losses, self.start_allocated = [], [], 0

        def _mark(self):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.marks.append(time.perf_counter())

        def on_train_begin(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                self.start_allocated = torch.cuda.memory_allocated()
            self._mark()

        def on_substep_end(self, args, state, control, **kwargs):
            self._mark()

        def on_step_end(self, args, state, control, **kwargs):
            self._mark()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(round(float(logs["loss"]), 4))

    return Clock()


def summarise(clock, counter: TokenCounter, grad_accum: int, warmup_steps: int, params: int, ckpt: bool) -> dict:
    """Medians over measured micro-batches (the first `warmup_steps` optimizer steps are left out)."""
    durations = [b - a for a, b in zip(clock.marks, clock.marks[1:], strict=False)]
    n = min(len(durations), len(counter.batches))
    keep = range(min(warmup_steps * grad_accum, max(n - 1, 0)), n)
    real = [counter.batches[i]["real"] for i in keep]
    processed = [counter.batches[i]["shape"][0] * counter.batches[i]["shape"][1] for i in keep]
    spent = [durations[i] for i in keep]
    rate = statistics.median(r / s for r, s in zip(real, spent, strict=True)) if keep else 0.0
    out = {
        "micro_batches": n,
        "measured_micro_batches": len(keep),
        "tokens_per_s": round(rate, 1),
        "tokens_per_s_total": round(sum(real) / sum(spent), 1) if keep else 0.0,
        "median_micro_batch_s": round(statistics.median(spent), 4) if keep else None,
        "real_tokens_per_micro_batch": round(statistics.mean(real), 1) if keep else 0,
        "padding_share": round(1 - sum(real) / sum(processed), 3) if keep else None,
        "longest_row_seen": max(b["shape"][1] for b in counter.batches[:n]) if n else 0,
        "first_losses": clock.losses[:6],
        "micro_batch_s": [round(durations[i], 4) for i in range(n)],  # warm-up included, for diagnosis
        "micro_batch_real_tokens": [counter.batches[i]["real"] for i in range(n)],
    }
    import torch

    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        reserved = torch.cuda.memory_reserved()
        out.update(
            mfu=round(4 * params * rate / PEAK_BF16_FLOPS, 4),
            hfu=round((6 if ckpt else 4) * params * rate / PEAK_BF16_FLOPS, 4),
            weights_gb=round(clock.start_allocated / GIB, 2),
            peak_allocated_gb=round(torch.cuda.max_memory_allocated() / GIB, 2),
            peak_reserved_gb=round(torch.cuda.max_memory_reserved() / GIB, 2),
            cuda_context_gb=round((total - free - reserved) / GIB, 2),
        )
        out["device_peak_gb"] = round(out["peak_reserved_gb"] + out["cuda_context_gb"], 2)
    return out


def fit_estimate(shape, cfg, rows: list, tok, longest_seen: int) -> dict:
    """The studio's fit check for this run: as it would predict from the dataset, and for the longest row seen."""
    import torch

    from studio.training import fitcheck

    lengths = [len(tok.apply_chat_template(r["messages"], tokenize=True, return_dict=False)) for r in rows]
    stats = {"rows": len(rows), "mean_tokens": statistics.mean(lengths), "max_tokens": max(lengths)}
    gpu = None
    if torch.cuda.is_available():
        gpu = {"index": 0, "name": torch.cuda.get_device_name(0), "memory_free_bytes": torch.cuda.mem_get_info()[1]}
    planned = fitcheck.estimate(shape, cfg, stats, gpu, suggest=False)
    seen = fitcheck.estimate(shape, cfg, {**stats, "max_tokens": longest_seen}, gpu, suggest=False)
    parts = ("weights_bytes", "adapter_bytes", "activations_bytes", "overhead_bytes", "peak_bytes")
    return {
        "estimate_gb": round(planned.peak_bytes / GIB, 2),
        "estimate_seen_gb": round(seen.peak_bytes / GIB, 2),
        "estimate_seen_parts_gb": {k.removesuffix("_bytes"): round(getattr(seen, k) / GIB, 2) for k in parts},
    }

"""The fit check on known model sizes: parameter counts, memory parts, verdicts and the change that fits."""

import pytest

from studio.models.catalog import catalog_entry
from studio.training.fitcheck import GIB, estimate, peak_tflops
from studio.training.presets import build_config

LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"
STATS = {"rows": 1000, "mean_tokens": 300, "max_tokens": 2048}


def gpu(free_gb: float, name: str = "NVIDIA GeForce RTX 4090") -> dict:
    return {"index": 0, "name": name, "memory_free_gb": free_gb, "memory_total_gb": free_gb}


def shape(model: str):
    return catalog_entry(model).shape


def test_parameter_counts_match_the_published_sizes():
    cfg = build_config(LLAMA_8B, "ds", "balanced")
    est = estimate(shape(LLAMA_8B), cfg, STATS, gpu(24))
    assert est.params == pytest.approx(8.03e9, rel=0.002)  # Llama-3.1-8B: 8,030,261,248
    # LoRA r=16 on q,k,v,o,gate,up,down of Llama-3-8B: the 41,943,040 that peft prints
    assert est.trainable_params == 41_943_040
    est7 = estimate(shape("Qwen/Qwen2.5-7B-Instruct"), cfg, STATS, gpu(24))
    assert est7.params == pytest.approx(7.62e9, rel=0.005)


def test_weight_memory_by_precision():
    cfg = build_config(LLAMA_8B, "ds", "balanced")
    four = estimate(shape(LLAMA_8B), cfg, STATS, gpu(80))
    sixteen = estimate(shape(LLAMA_8B), cfg.model_copy(update={"method": "lora"}), STATS, gpu(80))
    cpu = estimate(shape(LLAMA_8B), cfg, STATS, None)
    # 7.0B linear weights at 4.127 bits + 1.05B embedding/head params in bf16 ≈ 5.7 GB (5.3 GiB)
    assert 5.0 * GIB < four.weights_bytes < 5.6 * GIB
    assert sixteen.weights_bytes == pytest.approx(8.03e9 * 2, rel=0.002)
    assert cpu.weights_bytes == pytest.approx(8.03e9 * 4, rel=0.002) and cpu.precision == "32bit"
    assert four.adapter_bytes == 41_943_040 * 8 and sixteen.adapter_bytes == 41_943_040 * 16


def test_activations_scale_with_batch_and_length_and_shrink_with_checkpointing():
    base = build_config(LLAMA_8B, "ds", "balanced", {"micro_batch_size": 2, "max_length": 1024, "packing": False})
    s = shape(LLAMA_8B)
    one = estimate(s, base, STATS, gpu(80)).activations_bytes
    assert estimate(s, base.model_copy(update={"micro_batch_size": 4}), STATS, gpu(80)).activations_bytes == 2 * one
    assert estimate(s, base.model_copy(update={"max_length": 2048}), STATS, gpu(80)).activations_bytes == 2 * one
    without = estimate(s, base.model_copy(update={"gradient_checkpointing": False}), STATS, gpu(80))
    assert without.activations_bytes > 3 * one
    short = estimate(s, base, {"rows": 10, "mean_tokens": 100, "max_tokens": 256}, gpu(80))
    assert short.seq_len == 256 and short.activations_bytes == one // 4  # padding to the longest row only
    packed = estimate(s, base.model_copy(update={"packing": True}), {"rows": 10, "max_tokens": 256}, gpu(80))
    assert packed.seq_len == 1024


def test_verdicts_and_the_change_that_fits():
    s = shape(LLAMA_8B)
    balanced = build_config(LLAMA_8B, "ds", "balanced")
    roomy = estimate(s, balanced, STATS, gpu(40))
    assert roomy.fits is True and roomy.verdict.startswith("Fits")
    tight = estimate(s, balanced, STATS, gpu(10))
    assert tight.fits is False and tight.verdict.startswith("Too big")
    assert tight.changes and "This change fits" in tight.suggestion
    fixed = estimate(s, balanced.model_copy(update=tight.changes), STATS, gpu(10))
    assert fixed.fits is True
    # the least harmful change first: a smaller micro-batch with the same effective batch
    effective = balanced.micro_batch_size * balanced.gradient_accumulation
    assert tight.changes["micro_batch_size"] * tight.changes["gradient_accumulation"] == effective
    hopeless = estimate(s, balanced, STATS, gpu(3))
    assert hopeless.fits is False and "smaller base model" in hopeless.suggestion


def test_low_memory_preset_is_what_the_fit_check_offers_for_8b_on_a_small_gpu():
    s = shape(LLAMA_8B)
    low = estimate(s, build_config(LLAMA_8B, "ds", "low-memory"), STATS, gpu(12))
    balanced = estimate(s, build_config(LLAMA_8B, "ds", "balanced"), STATS, gpu(12))
    assert low.peak_bytes < balanced.peak_bytes
    assert low.peak_bytes < 8.7e9  # an "8 GB" card holds 8 GiB = 8.59e9 bytes; see presets/low-memory.yaml


def test_cpu_run_is_judged_against_ram_and_says_so():
    cfg = build_config("demo-tiny", "ds", "quick-test")
    est = estimate(shape("demo-tiny"), cfg, {"rows": 40, "mean_tokens": 40, "max_tokens": 60},
                   None, available_bytes=8 * GIB)
    assert est.fits is True and est.device == "the CPU" and "32-bit" in est.notice
    assert est.steps == cfg.max_steps and est.seconds > 0
    assert "Estimated peak memory" in est.summary()


def test_steps_follow_the_trainers_count():
    cfg = build_config(LLAMA_8B, "ds", "balanced").model_copy(
        update={"packing": False, "micro_batch_size": 4, "gradient_accumulation": 4})  # 3 epochs
    est = estimate(shape(LLAMA_8B), cfg, STATS, gpu(80))
    assert est.steps == (1000 // 4 // 4) * 3  # 62 steps per epoch, as transformers' Trainer counts
    assert estimate(shape(LLAMA_8B), cfg, {}, gpu(80)).steps == 0  # unknown rows: no step count


def test_time_uses_the_gpus_speed():
    cfg = build_config(LLAMA_8B, "ds", "balanced")
    fast = estimate(shape(LLAMA_8B), cfg, STATS, gpu(80, "NVIDIA H100 80GB HBM3"))
    slow = estimate(shape(LLAMA_8B), cfg, STATS, gpu(80, "Tesla T4"))
    assert slow.seconds > 5 * fast.seconds
    assert peak_tflops("NVIDIA L40S") == 362 and peak_tflops("NVIDIA L4") == 121

"""QLoRA training throughput: a plain Hugging Face baseline against the studio's own path, in one run.

Builds a Llama-shaped model with random weights from a config (no model hub needed), then trains a few
steps of each configuration on synthetic chat rows with realistic lengths (log-normal, median ~400
tokens, capped at --max-length), each configuration in a fresh process so its peak memory is its own.
Reports real (non-padding) tokens/s, MFU and HFU, peak memory, the first losses, and the fit check's
estimate beside the measured peak. bench/gpu_check.sh runs it on a GPU; tests/test_bench_train.py runs
its logic on the CPU with a tiny shape.

    python bench/train_throughput.py --shape llama-8b --out /tmp/bench            # every configuration
    python bench/train_throughput.py --shape tiny --configs baseline,studio --in-process --out /tmp/b
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PEAK_BF16_FLOPS = 989e12  # dense bf16 of an H100 SXM (and H200), vendor data sheet
GIB = 1024**3
# Catalog entries whose shapes the benchmark builds; "tiny" is for the CPU test.
SHAPES = {"llama-8b": "meta-llama/Llama-3.1-8B-Instruct", "llama-1b": "meta-llama/Llama-3.2-1B-Instruct"}
TIED = {"llama-1b", "tiny"}  # Llama 3.2 1B shares its embedding and LM head; 3.1 8B does not
TINY = dict(hidden=64, layers=2, intermediate=176, heads=4, kv_heads=2, vocab=512)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "[UNK]", "user", "assistant", "system"]
TEMPLATE_TOKENS = 6  # <|im_start|> user ... <|im_end|> <|im_start|> assistant ... <|im_end|>


@dataclass
class Variant:
    """One configuration. `kind` baseline = plain HF Trainer; studio = the preset through studio's recipe."""

    name: str
    kind: str = "studio"
    settings: dict = field(default_factory=dict)  # TrainConfig overrides on top of the preset
    sft: dict = field(default_factory=dict)  # SFTConfig overrides the recipe does not (yet) expose
    attn: str | None = None  # attention implementation, if not the recipe's
    about: str = ""
    preset: str = "balanced"


PACKED = {"packing": True}
# What most studios run: one padded example per row, 4 x 4 batches (the balanced preset before packing).
PADDED = {"packing": False, "micro_batch_size": 4, "gradient_accumulation": 4}
VARIANTS = [
    Variant("baseline", "baseline", settings=PADDED,
            about="HF Trainer + peft + bitsandbytes, padded 4 x 4 batches, SDPA, fp32 head"),
    Variant("studio", about="the balanced preset as it is (packed, 2 x max-length tokens per micro-batch)"),
    Variant("padded", settings=PADDED, about="the studio's path with padded 4 x 4 batches (balanced before packing)"),
    Variant("packed", settings={**PACKED, "micro_batch_size": 4, "gradient_accumulation": 4},
            about="packing (BFD, padding-free), 4 x max-length tokens per micro-batch"),
    Variant("packed-mb2", settings={**PACKED, "micro_batch_size": 2, "gradient_accumulation": 8},
            about="packing, 2 x max-length tokens per micro-batch"),
    Variant("packed-liger", settings=PACKED, sft={"use_liger_kernel": True},
            about="balanced + Liger RMSNorm/RoPE/SwiGLU kernels"),
    Variant("packed-nockpt", settings={**PACKED, "gradient_checkpointing": False},
            about="packing, no gradient checkpointing"),
    Variant("packed-sac", settings=PACKED, sft={"gradient_checkpointing_kwargs": {"use_reentrant": False,
                                                                                  "selective": True}},
            about="balanced + TRL selective activation checkpointing"),
    Variant("packed-flex", settings=PACKED, attn="flex_attention", about="balanced + flex attention"),
    Variant("low-memory", preset="low-memory", settings={"max_length": 1024},
            about="the low-memory preset as it is (1 x 1024 tokens, r=8)"),
]  # fmt: skip
BY_NAME = {v.name: v for v in VARIANTS}
# "best" is composed during the run: the balanced preset (packed) plus every single change above that beat it.
# The packed-* variants are the balanced preset (packing on) with one change each.
SINGLE_CHANGES = ("packed-liger", "packed-nockpt", "packed-sac", "packed-flex")
KEEP_IF_FASTER = 1.03  # a change must add at least 3% tokens/s (more than run-to-run noise) to be kept


def compose_best(results: list, shape: str) -> Variant | None:
    """The balanced preset (packed) plus the single changes measured to help on top of it; None when the
    needed runs are missing."""
    done = {r["config"]: r for r in results if r.get("shape") == shape and "tokens_per_s" in r}
    if "studio" not in done:
        return None
    best = Variant("best", settings=dict(PACKED), about="balanced")
    kept = []
    for name in sorted((n for n in SINGLE_CHANGES if n in done), key=lambda n: -done[n]["tokens_per_s"]):
        if done[name]["tokens_per_s"] < KEEP_IF_FASTER * done["studio"]["tokens_per_s"]:
            continue
        change = BY_NAME[name]
        if "gradient_checkpointing" in change.settings or "gradient_checkpointing_kwargs" in change.sft:
            if any(k in ("packed-nockpt", "packed-sac") for k in kept):
                continue  # one checkpointing choice only: the faster one, which sorts first
        best.settings.update(change.settings)
        best.sft.update(change.sft)
        best.attn = change.attn or best.attn
        kept.append(name)
    best.about = "balanced + " + (" + ".join(k.removeprefix("packed-") for k in kept) if kept else "nothing else")
    return best


# ----------------------------------------------------------------------------- model and data
def shape_of(name: str):
    from studio.models.catalog import Shape, catalog_entry

    return Shape(**TINY) if name == "tiny" else catalog_entry(SHAPES[name]).shape


def word_tokenizer(vocab: int):
    """One token per word `w<id>`, so synthetic rows have exactly the lengths drawn; ChatML like the studio."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from studio.models.demo import CHATML

    table = {tok: i for i, tok in enumerate(SPECIAL)}
    table.update({f"w{i}": i for i in range(len(SPECIAL), vocab)})
    core = Tokenizer(models.WordLevel(table, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="[UNK]",
        additional_special_tokens=["<|im_start|>"], model_input_names=["input_ids", "attention_mask"],
        chat_template=CHATML,
    )  # fmt: skip


def build_model(shape_name: str, out: Path) -> dict:
    """A random-weight Llama of the named shape, built on the GPU in bf16 (CPU: fp32), saved like a hub model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = shape_of(shape_name)
    tok = word_tokenizer(shape.vocab)
    config = LlamaConfig(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        max_position_embeddings=8192, rope_theta=500000.0, tie_word_embeddings=shape_name in TIED,
        bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    started = time.perf_counter()
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out, max_shard_size="4GB")
    tok.save_pretrained(out)
    info = {"shape": shape_name, "params": params, "build_s": round(time.perf_counter() - started, 1)}
    (out / "bench-model.json").write_text(json.dumps(info))
    return info


def ensure_model(shape_name: str, models_dir: Path) -> tuple[Path, dict]:
    out = models_dir / shape_name
    if not (out / "bench-model.json").exists():
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        build_model(shape_name, out)
    return out, json.loads((out / "bench-model.json").read_text())


def synthetic_rows(n: int, vocab: int, max_length: int, median: int, seed: int = 0, sigma: float = 0.7) -> list:
    """Chat rows whose rendered lengths are log-normal (median `median`, capped at max_length).

    Words are Zipf-distributed, so the loss has something to learn; the answer is 20-60% of each row.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(median), sigma, n).astype(int), TEMPLATE_TOKENS + 4, max_length)
    first = len(SPECIAL)

    def words(count: int) -> str:
        ids = first + (rng.zipf(1.3, count) - 1) % (vocab - first)
        return " ".join(f"w{i}" for i in ids)

    rows = []
    for total in lengths:
        body = int(total) - TEMPLATE_TOKENS
        answer = max(2, int(body * rng.uniform(0.2, 0.6)))
        rows.append({"messages": [{"role": "user", "content": words(max(1, body - answer))},
                                  {"role": "assistant", "content": words(answer)}]})  # fmt: skip
    return rows


# ----------------------------------------------------------------------------- measuring
class TokenCounter:
    """Wraps a data collator; records real (non-pad), processed and trained tokens of each micro-batch."""

    def __init__(self, collate, pad_id: int):
        self.collate, self.pad_id, self.batches = collate, pad_id, []

    def __call__(self, features):
        batch = self.collate(features)
        ids = batch["input_ids"]
        labels = batch.get("labels")
        trained = int((labels != -100).sum()) if labels is not None else 0
        self.batches.append({"real": int((ids != self.pad_id).sum()), "shape": list(ids.shape), "trained": trained})
        return batch


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


# ----------------------------------------------------------------------------- the two paths
def bench_config(variant: Variant, max_length: int, steps: int):
    from studio.training.presets import build_config

    settings = {"max_length": max_length, "max_steps": steps, **variant.settings}
    return build_config("bench-model", "bench-synthetic", variant.preset, settings)


def train_baseline(cfg, model_dir: Path, rows: list, tok, out_dir: str, counter_pad: int):
    """What most studios run: transformers Trainer + peft + bitsandbytes, padded batches, no packing."""
    import datasets
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (
        AutoModelForCausalLM,
        BitsAndBytesConfig,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    cuda = torch.cuda.is_available()
    quant = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    ) if cuda else None  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, quantization_config=quant, dtype=torch.bfloat16 if cuda else torch.float32,
        attn_implementation="sdpa", device_map={"": 0} if cuda else None,
    )  # fmt: skip
    model.config.use_cache = False
    if cuda:  # fp32 embeddings/head/norms, frozen base, input grads for checkpointing: peft's QLoRA recipe
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    else:
        model.enable_input_require_grads()
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                             target_modules=targets, task_type="CAUSAL_LM"))  # fmt: skip
    encoded = []
    for row in rows:  # answers-only loss, as TRL does for prompt/completion rows
        prompt = tok.apply_chat_template(row["messages"][:-1], add_generation_prompt=True, tokenize=False)
        full = tok.apply_chat_template(row["messages"], tokenize=False)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        ids = tok(full, add_special_tokens=False)["input_ids"][: cfg.max_length]
        labels = ([-100] * len(p_ids) + ids[len(p_ids):])[: len(ids)]
        encoded.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    args = TrainingArguments(
        output_dir=out_dir, per_device_train_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation, learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_schedule, warmup_steps=cfg.warmup_ratio, max_steps=cfg.max_steps,
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, gradient_checkpointing=True,
        bf16=cuda, use_cpu=not cuda, logging_steps=1, save_strategy="no", report_to="none", seed=cfg.seed,
        data_seed=cfg.seed, disable_tqdm=True,
    )  # fmt: skip
    counter = TokenCounter(DataCollatorForSeq2Seq(tok, padding="longest", label_pad_token_id=-100), counter_pad)
    trainer = Trainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(encoded),
                      data_collator=counter)  # fmt: skip
    return trainer, counter, True


def train_studio(cfg, variant: Variant, model_dir: Path, rows: list, tok, out_dir: str, counter_pad: int):
    """Exactly what the preset runs: studio.training.recipe's translators + TRL's SFTTrainer."""
    import datasets
    from trl import SFTTrainer

    from studio.training import recipe

    model = recipe.load_base_model(cfg, str(model_dir))
    if variant.attn:
        model.set_attn_implementation(variant.attn)
    args = recipe.sft_config(cfg, out_dir, logging_steps=1, save_strategy="no", eval_strategy="no", **variant.sft)
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=recipe.to_prompt_completion(datasets.Dataset.from_list(rows)),
        processing_class=tok, peft_config=recipe.lora_config(cfg, recipe.default_target_modules(model)),
    )  # fmt: skip
    counter = TokenCounter(trainer.data_collator, counter_pad)
    trainer.data_collator = counter
    return trainer, counter, cfg.gradient_checkpointing


def run_one(variant: Variant, shape_name: str, model_dir: Path, max_length: int, warmup: int, steps: int, median: int):
    """Train one configuration and measure it. Runs in its own process on the GPU."""
    import torch

    info = json.loads((model_dir / "bench-model.json").read_text())
    shape = shape_of(shape_name)
    cfg = bench_config(variant, max_length, warmup + steps)
    tok = word_tokenizer(shape.vocab)
    # enough rows for every micro-batch even when packing puts ~max_length/median rows in one sequence
    per_step = cfg.micro_batch_size * cfg.gradient_accumulation * max(1, 2 * max_length // median)
    rows = synthetic_rows(per_step * (warmup + steps) + 64, shape.vocab, max_length, median)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-run-") as out_dir:
        if variant.kind == "baseline":
            trainer, counter, ckpt = train_baseline(cfg, model_dir, rows, tok, out_dir, tok.pad_token_id)
        else:
            trainer, counter, ckpt = train_studio(cfg, variant, model_dir, rows, tok, out_dir, tok.pad_token_id)
        ready = time.perf_counter()
        clock = make_clock()
        trainer.add_callback(clock)
        trainer.train()
        trained = time.perf_counter()
        result = summarise(clock, counter, cfg.gradient_accumulation, warmup, info["params"], ckpt)
    if variant.kind == "studio":  # the fit check models the studio's path only, not the plain baseline
        result.update(fit_estimate(shape, cfg, rows, tok, result["longest_row_seen"]))
    if "device_peak_gb" in result and "estimate_seen_gb" in result:
        result["estimate_error"] = round(result["estimate_seen_gb"] / result["device_peak_gb"] - 1, 3)
    result.update(
        config=variant.name, preset=variant.preset, about=variant.about, settings=variant.settings, sft=variant.sft,
        attn=variant.attn, shape=shape_name, params=info["params"], max_length=cfg.max_length, lora_r=cfg.lora_r,
        micro_batch=cfg.micro_batch_size, grad_accum=cfg.gradient_accumulation, packing=cfg.packing,
        gradient_checkpointing=ckpt, setup_s=round(ready - started, 1), train_s=round(trained - ready, 1),
        device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    )  # fmt: skip
    return result


# ----------------------------------------------------------------------------- the driver
def table(rows: list) -> str:
    head = ("| shape | len | config | tokens/s | × base | MFU | HFU | peak alloc GB | peak device GB | × base "
            "| fit-check GB | est. error | first losses |")  # fmt: skip
    lines = [head, "|" + "---|" * 13]
    base = {}  # the fastest baseline of each shape: ratios against it are the conservative ones
    for r in rows:
        if r.get("config") == "baseline" and r.get("tokens_per_s", 0) > base.get(r["shape"], {}).get("tokens_per_s", 0):
            base[r["shape"]] = r

    def ratio(r, key):
        b = base.get(r["shape"], {})
        return f"{r[key] / b[key]:.2f}" if b.get(key) and r.get(key) is not None else "–"

    for r in rows:
        if "error" in r:
            lines.append(f"| {r['shape']} | {r['max_length']} | {r['config']} | failed: {r['error'][:80]} |"
                         + " |" * 9)  # fmt: skip
            continue
        err = r.get("estimate_error")
        lines.append(
            f"| {r['shape']} | {r['max_length']} | {r['config']} | {r['tokens_per_s']:,.0f} | "
            f"{ratio(r, 'tokens_per_s')} | {r.get('mfu', '–')} | {r.get('hfu', '–')} | "
            f"{r.get('peak_allocated_gb', '–')} | {r.get('device_peak_gb', '–')} | {ratio(r, 'device_peak_gb')} | "
            f"{r.get('estimate_seen_gb', '–')} | {'–' if err is None else f'{err:+.0%}'} | "
            f"{', '.join(str(x) for x in r['first_losses'][:3])} |"
        )
    return "\n".join(lines) + "\n"


def default_models_dir() -> Path:
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free > 40 * GIB:
        return shm / "bench-models"  # RAM-backed: saving and loading 16 GB takes seconds
    return Path(tempfile.gettempdir()) / "bench-models"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="llama-8b", choices=[*SHAPES, "tiny"])
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--median", type=int, default=400, help="median row length in tokens")
    p.add_argument("--configs", default=",".join(BY_NAME), help="comma-separated, in the order to run")
    p.add_argument("--warmup-steps", type=int, default=1, help="optimizer steps left out of the numbers")
    p.add_argument("--steps", type=int, default=3, help="measured optimizer steps")
    p.add_argument("--out", type=Path, required=True, help="folder for results.json, results.md")
    p.add_argument("--models-dir", type=Path, default=None)
    p.add_argument("--budget-s", type=float, default=0, help="skip configurations that would not finish in time")
    p.add_argument("--in-process", action="store_true", help="no child processes (CPU test)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--variant-json", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    started = time.monotonic()
    models_dir = args.models_dir or default_models_dir()
    measure = (args.max_length, args.warmup_steps, args.steps, args.median)

    if args.worker == "build":  # child: build the model, so the driver itself never holds GPU memory
        ensure_model(args.shape, models_dir)
        return 0
    if args.worker:  # child: measure one configuration, write its JSON
        variant = Variant(**json.loads(args.variant_json)) if args.variant_json else BY_NAME[args.worker]
        result = run_one(variant, args.shape, models_dir / args.shape, *measure)
        (args.out / f"{args.shape}-{args.worker}.json").write_text(json.dumps(result))
        return 0

    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME and n != "best"]
    if unknown:
        p.error(f"unknown configuration(s) {unknown}; known: {', '.join(BY_NAME)}")
    args.out.mkdir(parents=True, exist_ok=True)
    results_file = args.out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else []
    log(f"building {args.shape} in {models_dir}")
    child = [sys.executable, str(Path(__file__).resolve()), "--shape", args.shape, "--max-length", str(args.max_length),
             "--median", str(args.median), "--warmup-steps", str(args.warmup_steps), "--steps", str(args.steps),
             "--out", str(args.out), "--models-dir", str(models_dir)]  # fmt: skip
    if not args.in_process:
        subprocess.run([*child, "--worker", "build"], check=True)
    model_dir, info = ensure_model(args.shape, models_dir)
    log(f"model ready: {info}")
    longest = 0.0
    for name in names:
        left = args.budget_s - (time.monotonic() - started) if args.budget_s else float("inf")
        if left < longest * 1.15 + 10:
            log(f"skipping {name}: {left:.0f} s left, the slowest configuration took {longest:.0f} s")
            results.append({"config": name, "shape": args.shape, "max_length": args.max_length,
                            "error": "skipped: out of time budget"})  # fmt: skip
            continue
        variant = compose_best(results, args.shape) if name == "best" else BY_NAME[name]
        if variant is None:
            log("skipping best: plain packing was not measured")
            continue
        t0 = time.monotonic()
        log(f"--- {args.shape} {name}: {variant.about}")
        try:
            if args.in_process:
                result = run_one(variant, args.shape, model_dir, *measure)
            else:
                timeout = None if left == float("inf") else max(left - 5, 10)
                spec = ["--variant-json", json.dumps(asdict(variant))] if name == "best" else []
                subprocess.run([*child, "--worker", name, *spec], check=True, timeout=timeout)
                child_file = args.out / f"{args.shape}-{name}.json"
                result = json.loads(child_file.read_text())
                child_file.unlink()
        except Exception as exc:  # one failed configuration must not lose the others
            traceback.print_exc()
            result = {"config": name, "shape": args.shape, "max_length": args.max_length,
                      "error": f"{type(exc).__name__}: {exc}"}  # fmt: skip
        result["wall_s"] = round(time.monotonic() - t0, 1)
        longest = max(longest, result["wall_s"])
        results.append(result)
        results_file.write_text(json.dumps(results, indent=1))
        (args.out / "results.md").write_text(table(results))
        log(json.dumps(result))
    results_file.write_text(json.dumps(results, indent=1))
    (args.out / "results.md").write_text(table(results))
    print(table(results), flush=True)
    return 0


def log(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)


if __name__ == "__main__":
    sys.exit(main())

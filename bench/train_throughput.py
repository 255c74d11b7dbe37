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

from bench import qlora_paths as paths  # noqa: E402
from bench.measure import GIB, fit_estimate, make_clock, summarise  # noqa: E402
from bench.qlora_paths import TokenCounter  # noqa: E402,F401 - the tests use it from here
from bench.synthetic import (  # noqa: E402,F401 - the tests use them from here
    SHAPES,
    build_model,
    ensure_model,
    shape_of,
    synthetic_rows,
    word_tokenizer,
)


@dataclass
class Variant:
    """One configuration. `kind`: baseline (HF Trainer + peft, padded), baseline-packed (the same, padding-free),
    studio (the preset through the studio's recipe) or unsloth (Unsloth's FastLanguageModel); bench/qlora_paths.py."""

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
    Variant("packed-varlen", settings=PACKED, attn="studio_varlen",
            about="balanced + torch's varlen attention kernel (no dense mask over a packed micro-batch)"),
    Variant("baseline-packed", "baseline-packed", settings=PACKED,
            about="HF Trainer + peft + bitsandbytes with padding-free packing (DataCollatorWithFlattening), "
                  "as many rows per micro-batch as the studio's 2 x max-length tokens"),
    Variant("unsloth", "unsloth", settings=PACKED,
            about="Unsloth's FastLanguageModel 4-bit + its LoRA kernels and checkpointing, TRL packing, dropout 0"),
    Variant("quality", preset="quality", about="the quality preset as it ships"),
    Variant("long-context", preset="long-context", about="the long-context preset as it ships"),
    Variant("low-memory", preset="low-memory", settings={"max_length": 1024},
            about="the low-memory preset as it is (1 x 1024 tokens, r=8)"),
]  # fmt: skip
BY_NAME = {v.name: v for v in VARIANTS}
# "best" is composed during the run: the balanced preset (packed) plus every single change above that beat it.
# The packed-* variants are the balanced preset (packing on) with one change each.
SINGLE_CHANGES = ("packed-liger", "packed-nockpt", "packed-sac", "packed-flex", "packed-varlen")
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


# ----------------------------------------------------------------------------- the two paths
def bench_config(variant: Variant, max_length: int, steps: int):
    from studio.training.presets import build_config

    settings = {"max_length": max_length, "max_steps": steps, **variant.settings}
    return build_config("bench-model", "bench-synthetic", variant.preset, settings)


def rows_per_micro_batch(cfg, rows: list, tok) -> int:
    """Whole rows per micro-batch for a path that flattens a batch of rows: as many as the studio packs tokens
    into one micro-batch (micro_batch_size sequences of max_length), at the rows' mean length."""
    lengths = [min(len(tok.apply_chat_template(r["messages"], tokenize=True, return_dict=False)), cfg.max_length)
               for r in rows[:256]]  # fmt: skip
    return max(1, round(cfg.micro_batch_size * cfg.max_length / statistics.mean(lengths)))


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
        if variant.kind in ("baseline", "baseline-packed"):
            packed = variant.kind == "baseline-packed"
            if packed:  # as many whole rows per micro-batch as the studio packs tokens into one
                cfg = cfg.model_copy(update={"micro_batch_size": rows_per_micro_batch(cfg, rows, tok)})
            trainer, counter, ckpt = paths.train_baseline(cfg, model_dir, rows, tok, out_dir, tok.pad_token_id,
                                                          packed=packed)  # fmt: skip
        elif variant.kind == "unsloth":
            trainer, counter, ckpt = paths.train_unsloth(cfg, model_dir, rows, tok, out_dir, tok.pad_token_id)
        else:
            trainer, counter, ckpt = paths.train_studio(cfg, variant, model_dir, rows, tok, out_dir, tok.pad_token_id)
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
    return "\n".join([*lines, "", *versus_unsloth(rows)]) + "\n"


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
        if variant.kind == "unsloth":
            import unsloth  # noqa: F401 - first, before transformers, peft and trl: it patches them
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
                done = subprocess.run([*child, "--worker", name, *spec], timeout=timeout, env=worker_env(variant),
                                      stderr=subprocess.PIPE, text=True)  # fmt: skip
                sys.stderr.write(done.stderr)
                if done.returncode:  # the child's own last words say why, e.g. "No module named 'unsloth'"
                    last = [line for line in done.stderr.splitlines() if line.strip()][-1:] or ["no output"]
                    raise RuntimeError(f"exit {done.returncode}: {last[0].strip()}")
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


def worker_env(variant: Variant) -> dict:
    """Unsloth's process sees its own packages first (UNSLOTH_SITE: Unsloth, unsloth_zoo and the trl it pins,
    unpacked by bench/unsloth_pack.py); every other configuration runs without them."""
    import os

    env = dict(os.environ)
    site = env.get("UNSLOTH_SITE")
    if variant.kind == "unsloth" and site:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (site, env.get("PYTHONPATH")) if p)
    return env


def versus_unsloth(rows: list) -> list[str]:
    """The summary line per shape, exactly: `studio vs Unsloth (<GPU>, <shape>, <len>): <x.xx>x tokens/s,
    <y.yy>x peak memory, <preset>` for the balanced preset as it ships ("studio") against Unsloth."""
    lines = []
    for shape in dict.fromkeys(r.get("shape") for r in rows):
        done = {r["config"]: r for r in rows if r.get("shape") == shape and "tokens_per_s" in r}
        ours, theirs = done.get("studio"), done.get("unsloth")
        if not ours or not theirs or not theirs["tokens_per_s"]:
            continue
        memory = (f"{ours['device_peak_gb'] / theirs['device_peak_gb']:.2f}x" if theirs.get("device_peak_gb")
                  and ours.get("device_peak_gb") else "n/a")  # fmt: skip
        lines.append(f"studio vs Unsloth ({ours['device']}, {shape}, {ours['max_length']}): "
                     f"{ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}x tokens/s, {memory} peak memory, "
                     f"{ours['preset']}")  # fmt: skip
    return lines


def log(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)


if __name__ == "__main__":
    sys.exit(main())

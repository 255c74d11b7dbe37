"""Multi-GPU scaling: training tokens/s of the same run with 1, 2, ... N processes (DDP), through the studio.

Each configuration is a real studio run (submit -> queue -> accelerate launcher -> `python -m studio.training`)
on a random-weight Llama of a catalog shape (bench/train_throughput.py builds it; no model hub needed) and
synthetic chat rows, packed so every step holds the same number of tokens. The micro-batch per GPU stays the
same (weak scaling: the global batch grows with N, as it does when a user adds GPUs to a run). Tokens/s is
read from the run's own step events (tokens seen, summed over the ranks, per second of wall time), after
the first --warmup steps. Efficiency = tokens/s with N / (N x tokens/s with 1).

    python bench/multi_gpu.py --shape llama-8b --processes 1,2,4,8 --steps 40 --out /tmp/mgpu   # GPU machine
    python bench/multi_gpu.py --shape tiny --processes 1,2 --steps 6 --warmup 2 --out /tmp/mgpu  # CPU: mechanics

Prints a Markdown table for bench/RESULTS.md and writes OUT/multi_gpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from train_throughput import ensure_model, shape_of, synthetic_rows  # noqa: E402


def tokens_per_second(events: list[dict], warmup: int) -> tuple[float | None, int]:
    """Training tokens/s between the end of step `warmup` and the last step (start-up and the first steps,
    which compile and warm caches, are left out); and the number of steps measured."""
    steps = [e for e in events if e.get("type") == "step" and e.get("tokens_seen") is not None]
    steps = [e for e in steps if e["step"] >= max(warmup, 1)]
    if len(steps) < 2:
        return None, 0
    first, last = steps[0], steps[-1]
    seconds = last["time"] - first["time"]
    if seconds <= 0:
        return None, 0
    return (last["tokens_seen"] - first["tokens_seen"]) / seconds, last["step"] - first["step"]


def efficiency(results: list[dict]) -> list[dict]:
    """Speed-up and scaling efficiency of each result against the one-process result."""
    base = next((r["tokens_per_second"] for r in results if r["processes"] == 1 and r["tokens_per_second"]), None)
    for r in results:
        if base and r["tokens_per_second"]:
            r["speedup"] = round(r["tokens_per_second"] / base, 2)
            r["efficiency"] = round(r["tokens_per_second"] / (base * r["processes"]), 2)
    return results


def table(results: list[dict], device: str) -> str:
    lines = [f"Multi-process training scaling (DDP), {device}:", "",
             "| processes | strategy | status | steps measured | tokens/s | speed-up | efficiency |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        tps = f"{r['tokens_per_second']:,.0f}" if r["tokens_per_second"] else "-"
        lines.append(f"| {r['processes']} | {r['strategy'] or '-'} | {r['status']} | {r['steps_measured']} | {tps} | "
                     f"{r.get('speedup', '-')} | {r.get('efficiency', '-')} |")
    return "\n".join(lines)


def run_one(ws, model_dir: Path, dataset_id: str, processes: int, args) -> dict:
    from studio.training import scheduler, submit
    from studio.training.presets import build_config

    overrides = {"processes": processes, "max_steps": args.steps, "micro_batch_size": args.micro_batch,
                 "gradient_accumulation": 1, "max_length": args.max_length, "packing": True,
                 "eval_every": 100_000, "save_every": 100_000, "log_every": 1}
    cfg = build_config(str(model_dir), dataset_id, args.preset, overrides)
    started = time.perf_counter()
    run = submit.submit(ws, cfg, preset=args.preset, overrides=overrides, force=True,
                        name=f"scaling x{processes}")
    run = scheduler.wait_for(ws, run.id, timeout=args.timeout, poll=0.5)
    tps, measured = tokens_per_second(run.folder.read_events(), args.warmup)
    manifest = run.folder.read_manifest()
    return {"processes": processes, "run": run.id, "status": run.status, "error": run.error,
            "strategy": (manifest.get("distributed") or {}).get("strategy"),
            "tokens_per_second": round(tps, 1) if tps else None, "steps_measured": measured,
            "wall_s": round(time.perf_counter() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="llama-1b", help="llama-8b, llama-1b or tiny (CPU)")
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts, e.g. 1,2,4,8")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the measurement")
    parser.add_argument("--micro-batch", type=int, default=4, help="per process (per GPU)")
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--preset", default="balanced")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.processes.split(",") if n.strip()]

    args.out.mkdir(parents=True, exist_ok=True)
    os.environ["STUDIO_HOME"] = str(args.out / "studio-home")
    import datasets

    from studio.core.system import gpus
    from studio.core.workspace import Workspace
    from studio.data import store

    ws = Workspace.open(Path(os.environ["STUDIO_HOME"]))
    model_dir, info = ensure_model(args.shape, args.out / "models")
    shape = shape_of(args.shape)
    rows = synthetic_rows(args.rows, shape.vocab, args.max_length, median=min(400, args.max_length // 2))
    version, _ = store.save_version(
        ws, content_hash=f"bench-multi-gpu-{args.shape}-{args.rows}-{args.max_length}", name="scaling rows",
        train=datasets.Dataset.from_list(rows), val=datasets.Dataset.from_list(rows[:0]), template="model",
        base_model=str(model_dir))
    found = gpus()
    device = f"{len(found)} x {found[0]['name']}" if found else f"CPU only ({os.cpu_count()} cores, gloo)"
    results = efficiency([run_one(ws, model_dir, version.id, n, args) for n in counts])
    report = {"shape": args.shape, "params": info.get("params"), "device": device, "micro_batch": args.micro_batch,
              "max_length": args.max_length, "steps": args.steps, "warmup": args.warmup, "results": results}
    (args.out / "multi_gpu.json").write_text(json.dumps(report, indent=2))
    print(table(results, f"{args.shape} ({info.get('params', 0) / 1e6:,.1f}M params), {device}, micro-batch "
                         f"{args.micro_batch} x {args.max_length} tokens packed per process"))
    return 0 if all(r["status"] == "succeeded" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

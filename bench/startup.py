"""Run start-up against LLaMA-Factory: the same 40-step LoRA run, whole process, side by side.

Sets up one model folder (demo-tiny, built by studio/models/demo.py: a small Llama with a ChatML template) and
one set of 200 question/answer rows, then times, alternating, until each has `--runs` timed runs:

- studio:  `studio train --data DS --model demo-tiny --preset quick-test --set max_steps=40 ... --wait`
           (the CLI, its fit check, the queue, the training subprocess, the adapter saved; whole-process wall time)
- lf:      `llamafactory-cli train bench.yaml`: LoRA on the same model folder (the workspace's demo-tiny), the
           same rows (exported from the dataset version's train split to its sharegpt format), template chatml,
           the same rank/alpha/dropout/targets, batch, steps, learning rate, schedule, cutoff and one save at the end.
- before:  (with --before DIR) the studio from another source tree, e.g. `git archive HEAD` unpacked: the
           same command run with PYTHONPATH=DIR, so a change is measured against what it replaces.

LLaMA-Factory is installed from PyPI into a venv of its own (--lf-venv, cached; torch resolves to this
machine's local build), never into the studio's. One untimed warm-up round first (the OS file cache; the
studio's first fit check of a model in a workspace also counts its parameters once, cached after), its times
reported as "cold". Medians and the ratio studio / lf go to the JSON written to --out.

    .venv/bin/python bench/startup.py --runs 5 --out /tmp/startup.json [--before /tmp/studio-head] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LF_VERSION = "0.9.5"
DEFAULT_VENV = Path.home() / ".cache" / "llmops-studio" / "bench" / "llamafactory-venv"
TOPICS = ["password", "order", "refund", "delivery", "return", "tracking", "invoice", "account", "parcel", "payment"]
STEPS, BATCH, LR, CUTOFF, RANK, ALPHA = 40, 8, 3.0e-3, 256, 16, 32  # quick-test's values, steps cut to 40
TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


def rows(n: int) -> list[tuple[str, str]]:
    return [(f"Question {i}: how do I handle my {TOPICS[i % 10]} number {i}?",
             f"For your {TOPICS[i % 10]}, open the page, choose the {TOPICS[i % 10]} option and follow the steps "
             f"in your email ({i}).") for i in range(n)]


def studio_cmd(python: str) -> list[str]:
    return [python, "-m", "studio"]


def setup_studio(work: Path, n_rows: int) -> tuple[Path, str, Path]:
    """A workspace with demo-tiny and the rows imported as one dataset version (no validation split)."""
    import csv

    home = work / "studio-home"
    csv_path = work / "rows.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["question", "answer"])
        writer.writerows(rows(n_rows))
    env = {**os.environ, "STUDIO_HOME": str(home)}
    out = subprocess.run([*studio_cmd(sys.executable), "data", "import", str(csv_path), "--val-size", "0",
                          "--name", f"bench{n_rows}", "--json"], env=env, cwd=ROOT, capture_output=True,
                         text=True, check=True)
    version = json.loads(out.stdout)["version"]
    model_dir = home / "models" / "demo-tiny"  # built by the import (its tokenizer counts the rows)
    return home, version["id"], model_dir


def setup_lf(work: Path, home: Path, dataset_id: str, model_dir: Path, steps: int) -> Path:
    """LLaMA-Factory's dataset (the version's own train rows) and a yaml equal to the studio's settings."""
    import pyarrow.parquet as pq

    data_dir = work / "lf-data"
    data_dir.mkdir(exist_ok=True)
    train = pq.read_table(home / "datasets" / dataset_id / "train.parquet").to_pylist()
    (data_dir / "bench.json").write_text(json.dumps([{"messages": r["messages"]} for r in train]), encoding="utf-8")
    (data_dir / "dataset_info.json").write_text(json.dumps({"bench": {
        "file_name": "bench.json", "formatting": "sharegpt", "columns": {"messages": "messages"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                 "system_tag": "system"}}}), encoding="utf-8")
    config = {
        "model_name_or_path": str(model_dir.resolve()), "trust_remote_code": False,
        "stage": "sft", "do_train": True, "finetuning_type": "lora", "lora_target": TARGETS,
        "lora_rank": RANK, "lora_alpha": ALPHA, "lora_dropout": 0.0,
        "dataset": "bench", "dataset_dir": str(data_dir), "template": "chatml", "cutoff_len": CUTOFF,
        "overwrite_cache": True, "preprocessing_num_workers": None, "dataloader_num_workers": 0,
        "output_dir": str(work / "lf-out"), "overwrite_output_dir": True, "logging_steps": 5,
        "save_strategy": "no", "plot_loss": False, "report_to": "none",
        "per_device_train_batch_size": BATCH, "gradient_accumulation_steps": 1, "learning_rate": LR,
        "max_steps": steps, "lr_scheduler_type": "constant_with_warmup", "warmup_ratio": 0.05, "seed": 42,
    }
    path = work / "bench.yaml"
    path.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in config.items()) + "\n", encoding="utf-8")
    return path


def ensure_lf(venv: Path) -> str:
    """llamafactory-cli in its own venv (created and installed once, then reused).

    LLaMA-Factory requires torchvision and torchaudio. PyPI's torchvision 0.28.0 is built for the CUDA torch, not
    this machine's local CPU build (its C++ ops fail to register, and transformers then fails to import), so it is
    removed: transformers treats it as absent. torchaudio 2.11.1, the newest there, is built for torch 2.11: its
    compiled extension is removed, so it imports as a build without one (its own supported case). LLaMA-Factory
    imports torchaudio for its multimodal plugin only; text training never calls either."""
    cli = venv / "bin" / "llamafactory-cli"
    if not cli.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = str(venv / "bin" / "pip")
        subprocess.run([pip, "install", "-q", "torch==2.13.0", f"llamafactory=={LF_VERSION}"], check=True)
        subprocess.run([pip, "uninstall", "-y", "-q", "torchvision"], check=True)
        for lib in venv.glob("lib/python3*/site-packages/torchaudio/lib/*.so"):
            lib.unlink()
    return str(cli)


def timed(argv: list[str], env: dict, log: Path, cwd: Path) -> dict:
    """Wall time of the whole process tree, and its CPU (children's user + system) as the kernel counts it."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with log.open("a", encoding="utf-8") as out:
        code = subprocess.run(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if code != 0:
        raise SystemExit(f"{argv[:4]} failed with exit code {code}; see {log}")
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "load1": round(os.getloadavg()[0], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="timed runs of each (after one warm-up round)")
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-startup"))
    ap.add_argument("--lf-venv", type=Path, default=DEFAULT_VENV)
    ap.add_argument("--before", type=Path, default=None, help="another studio source tree to time as 'before'")
    ap.add_argument("--threads", type=int, default=None,
                    help="OMP_NUM_THREADS for every run alike (default: unset, torch's own choice)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    lf_cli = ensure_lf(args.lf_venv)
    home, dataset_id, model_dir = setup_studio(args.work, args.rows)
    lf_yaml = setup_lf(args.work, home, dataset_id, model_dir, args.steps)
    base_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    base_env.update(TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", STUDIO_HOME=str(home))
    if args.threads:
        base_env["OMP_NUM_THREADS"] = str(args.threads)
    studio_argv = [*studio_cmd(sys.executable), "train", "--data", dataset_id, "--model", "demo-tiny",
                   "--preset", "quick-test", "--set", f"max_steps={args.steps}", "--set", "eval_every=0",
                   "--set", f"save_every={args.steps}", "--set", "log_every=5", "--wait"]
    contenders = {"studio": (studio_argv, {**base_env, "PYTHONPATH": str(ROOT)}, ROOT),
                  "lf": ([lf_cli, "train", str(lf_yaml)], {**base_env, "DISABLE_VERSION_CHECK": "1"}, args.work)}
    if args.before:
        contenders["before"] = (studio_argv, {**base_env, "PYTHONPATH": str(args.before.resolve())},
                                args.before.resolve())
    results: dict[str, list[dict]] = {name: [] for name in contenders}
    cold: dict[str, dict] = {}
    for round_no in range(args.runs + 1):
        order = list(contenders) if round_no % 2 == 0 else list(reversed(contenders))  # alternate who goes first
        for name in order:
            argv, env, cwd = contenders[name]
            got = timed(argv, env, args.work / f"{name}.log", cwd)
            print(f"round {round_no} {name:7s} {got}", flush=True)
            if round_no == 0:
                cold[name] = got
            else:
                results[name].append(got)
    medians = {name: statistics.median(r["wall_s"] for r in runs) for name, runs in results.items()}
    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.node()}, {os.cpu_count()} cores, "
        f"{platform.platform()}", "python": platform.python_version(), "llamafactory": LF_VERSION,
        "steps": args.steps, "rows": args.rows, "threads": args.threads, "cold": cold, "runs": results,
        "median_wall_s": medians, "median_cpu_s": {n: statistics.median(r["cpu_s"] for r in runs)
                                                   for n, runs in results.items()},
        "ratio_studio_to_lf": round(medians["studio"] / medians["lf"], 3),
        **({"ratio_before_to_lf": round(medians["before"] / medians["lf"], 3)} if "before" in medians else {}),
        "studio_argv": " ".join(studio_argv[2:]), "lf_argv": f"llamafactory-cli train {lf_yaml.name}",
    }
    print(json.dumps({k: summary[k] for k in ("median_wall_s", "median_cpu_s", "ratio_studio_to_lf")}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()

"""Load: many people on one studio at once. N browser sessions through `gradio_client` do a realistic mix
(list runs, look at a dataset version, chat with a run side by side with its base model) while a run trains
and M clients stream from an endpoint. Reports, per action, the count, errors and p50/p95 latency; for the
streaming clients, time to first token and errors; for the run, that every step's event was written once.

    python bench/load_mix.py                              # 20 sessions, 16 streams, 60 s, on this machine
    python bench/load_mix.py --sessions 4 --streams 2 --seconds 10     # quick check

Everything is real: `python app.py` on 127.0.0.1 with its own workspace, the run in its own process through the
studio's queue, the endpoint `python -m studio.serving.server`. Prints a markdown table for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

QUESTIONS = ["Where is my order?", "How do I reset my password?", "When do orders ship?", "Who pays for returns?"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


def prepare(home: Path) -> tuple[str, str]:
    """A dataset version and a finished quick run in a fresh workspace (through the CLI's own core calls)."""
    os.environ["STUDIO_HOME"] = str(home)
    from studio.core.workspace import Workspace
    from studio.data.importer import import_file
    from studio.training import scheduler, submit
    from studio.training.presets import build_config

    ws = Workspace.open(home)
    version = import_file(ws, ROOT / "assets" / "samples" / "support_faq.csv").version
    cfg = build_config("demo-tiny", version.id, "quick-test", {"max_steps": 20})
    run = submit.submit(ws, cfg, preset="quick-test")
    scheduler.schedule(ws)
    done = scheduler.wait_for(ws, run.id, timeout=600)
    assert done.status == "succeeded", done.error
    return version.id, run.id


def start_studio(home: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "STUDIO_HOME": str(home)}
    log = open(home / "studio.log", "w")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port)], stdout=log,
                            stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}", timeout=5).read()
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the studio did not start: " + (home / "studio.log").read_text()[-2000:])


class Session:
    """One browser tab's worth of calls, by the labels the page shows."""

    def __init__(self, url: str):
        from gradio_client import Client

        self.client = Client(url, verbose=False, download_files=False)
        self.api = self.client.view_api(print_info=False, return_format="dict")["named_endpoints"]

    def call(self, name: str, **inputs):
        spec = self.api[name]
        args = [inputs.pop(p["label"]) if p["label"] in inputs else p["parameter_default"] for p in spec["parameters"]]
        out = self.client.predict(*args, api_name=name)
        out = out if len(spec["returns"]) > 1 else [out]
        labels = [r["label"] for r in spec["returns"]]
        return dict(zip(labels, out, strict=False))


def value(update):
    return update.get("value") if isinstance(update, dict) and "__type__" in update else update


def session_loop(url: str, dataset: str, run: str, stop: threading.Event, timings: dict, errors: dict, seed: int):
    rng = random.Random(seed)
    session = Session(url)
    session.call("/data_versions")  # what a page load shows: the saved versions
    picked = None
    while not stop.is_set():
        action = rng.choices(["list runs", "preview data", "chat"], weights=[4, 3, 2])[0]
        started = time.perf_counter()
        try:
            if action == "list runs":
                session.call("/runs_list")
            elif action == "preview data":
                session.call("/data_show", Version=dataset)
            else:
                if picked is None:
                    picked = session.call("/chat_pick", **{"Chat with": run})
                session.call("/chat_send", **{"Chat with": run, "Your question": rng.choice(QUESTIONS),
                                              "Left pane": value(picked["Left pane"]),
                                              "Right pane": value(picked["Right pane"]), "Max new tokens": 16})
            timings[action].append(time.perf_counter() - started)
        except Exception as exc:  # noqa: BLE001 - every failure is counted and one example kept
            errors[action].append(f"{type(exc).__name__}: {str(exc)[:200]}")


def stream_loop(url: str, model: str, stop: threading.Event, ttft: list, errors: list):
    from huggingface_hub import InferenceClient

    client = InferenceClient(base_url=url, timeout=120)
    while not stop.is_set():
        started = time.perf_counter()
        first = None
        try:
            for chunk in client.chat_completion([{"role": "user", "content": random.choice(QUESTIONS)}], model=model,
                                                max_tokens=24, stream=True):
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = time.perf_counter() - started
            ttft.append(first if first is not None else time.perf_counter() - started)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--home", default=None, help="workspace (default: a temporary folder)")
    parser.add_argument("--out", default=None, help="write results.json here")
    args = parser.parse_args()

    home = Path(args.home or tempfile.mkdtemp(prefix="load-mix-"))
    print(f"preparing {home} (a dataset and a finished run)...", file=sys.stderr, flush=True)
    dataset, run = prepare(home)
    from studio.core.workspace import Workspace
    from studio.serving import endpoints, launch
    from studio.training import runs, submit
    from studio.training.presets import build_config

    ws = Workspace.open(home)
    endpoint = launch.start_for_run(ws, run)
    port = free_port()
    studio = start_studio(home, port)
    # a run that trains through the whole load (the studio's own scheduler starts it)
    training = submit.submit(ws, build_config("demo-tiny", dataset, "quick-test", {"max_steps": 100000}),
                             preset="quick-test")
    stop = threading.Event()
    timings: dict = defaultdict(list)
    errors: dict = defaultdict(list)
    ttft: list = []
    stream_errors: list = []
    threads = [threading.Thread(target=session_loop, args=(f"http://127.0.0.1:{port}", dataset, run, stop, timings,
                                                           errors, n), daemon=True) for n in range(args.sessions)]
    threads += [threading.Thread(target=stream_loop, args=(endpoint.url, run, stop, ttft, stream_errors), daemon=True)
                for _ in range(args.streams)]
    print(f"load: {args.sessions} sessions, {args.streams} streams, {args.seconds:.0f} s...", file=sys.stderr,
          flush=True)
    for thread in threads:
        thread.start()
    time.sleep(args.seconds)
    stop.set()
    for thread in threads:
        thread.join(timeout=180)
    from studio.training import scheduler

    trained = runs.get_run(ws, training.id)
    steps = [e["step"] for e in trained.folder.read_events() if e["type"] == "step"]
    scheduler.cancel(ws, training.id, wait=60)
    endpoints.stop_endpoint(ws, endpoint.id, reason="benchmark over")
    studio.terminate()
    studio.wait(timeout=60)

    rows = []
    for action in ("list runs", "preview data", "chat"):
        times = timings.get(action, [])
        rows.append({"action": action, "count": len(times), "errors": len(errors.get(action, [])),
                     "p50_ms": round(statistics.median(times) * 1000) if times else None,
                     "p95_ms": round(percentile(times, 0.95) * 1000) if times else None,
                     "example_error": (errors.get(action) or [None])[0]})
    rows.append({"action": f"stream (TTFT, {args.streams} clients)", "count": len(ttft), "errors": len(stream_errors),
                 "p50_ms": round(statistics.median(ttft) * 1000) if ttft else None,
                 "p95_ms": round(percentile(ttft, 0.95) * 1000) if ttft else None,
                 "example_error": (stream_errors or [None])[0]})
    events_ok = steps == list(range(steps[0], steps[0] + len(steps))) if steps else False
    result = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} cores", "sessions": args.sessions, "streams": args.streams,
              "seconds": args.seconds, "rows": rows, "training_steps_during_load": len(steps),
              "training_events_once_each": events_ok}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    print("| action | count | errors | p50 ms | p95 ms |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['action']} | {row['count']} | {row['errors']} | {row['p50_ms']} | {row['p95_ms']} |")
    print(f"\nTraining during the load: {len(steps)} steps, each step's event written once: {events_ok}.")
    for row in rows:
        if row["example_error"]:
            print(f"- {row['action']}: e.g. {row['example_error']}")
    return 0 if all(r["errors"] == 0 for r in rows) and events_ok else 1


if __name__ == "__main__":
    sys.exit(main())

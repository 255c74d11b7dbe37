"""`python -m studio.training.relay STAGE`: the Ray job's entry point (launchers/ray.py submits it).

Runs on a cluster node, in the job's working dir, which holds the staged run: STAGE/ (config.yaml,
manifest.json, events.jsonl, start-adapter/, the last checkpoint), dataset/ (the version's files) and, for a
base model that is a local folder, model/. It copies the run to a fresh folder, runs the same
`python -m studio.training RUN_DIR` there as a child, and relays what the studio needs through its own
output, which Ray keeps as the job's log: the training output as is, and, on lines of their own that start
with MARK, each new events.jsonl line, each new status.json, and at the end one bundle (adapter/,
manifest.json, status.json, the exit code; the last checkpoint too when the run did not finish, so resume
continues there) as base64 chunks. The studio reads the log through the cluster's dashboard, so nothing
but the dashboard address has to be reachable and no storage has to be shared. SIGTERM (Ray's stop_job) is
passed on: the run stops at the next step, saves, and the bundle still goes out.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

MARK = "@@studio"
CHUNK = 48_000  # bytes of bundle per log line (64 KB of base64)


class Relay:
    def __init__(self, run: Path):
        self.run = run
        self.lock = threading.Lock()
        self.events_offset = 0
        self.status_text = ""

    def say(self, kind: str, payload: str) -> None:
        """One record on a line of its own (the training output may have left half a line)."""
        with self.lock:
            sys.stdout.write(f"\n{MARK} {kind} {payload}\n")
            sys.stdout.flush()

    def copy_output(self, stream) -> None:
        """The training process's output into the job's log, unchanged (progress bars included)."""
        while chunk := stream.read1(65536):
            with self.lock:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()

    def relay_files(self) -> None:
        """New complete lines of events.jsonl, and status.json when it changed."""
        try:
            with (self.run / "events.jsonl").open("rb") as f:
                f.seek(self.events_offset)
                data = f.read()
        except OSError:
            data = b""
        complete = data[: data.rfind(b"\n") + 1]
        self.events_offset += len(complete)
        for line in complete.decode("utf-8", errors="replace").splitlines():
            if line.strip():
                self.say("event", line)
        try:
            status = (self.run / "status.json").read_text(encoding="utf-8")
        except OSError:
            return
        if status != self.status_text:
            try:
                json.loads(status)
            except ValueError:  # caught mid-write: the next look gets it whole
                return
            self.status_text = status
            self.say("status", json.dumps(json.loads(status)))

    def bundle(self, code: int) -> None:
        """adapter/, manifest.json, status.json, exit.json (+ the last checkpoint if the run did not finish)."""
        (self.run / "exit.json").write_text(json.dumps({"code": code}), encoding="utf-8")
        status = {}
        try:
            status = json.loads((self.run / "status.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pass
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for name in ("adapter", "manifest.json", "status.json", "exit.json"):
                if (self.run / name).exists():
                    tar.add(self.run / name, arcname=name)
            if status.get("state") != "succeeded":
                last = newest_checkpoint(self.run / "checkpoints")
                if last is not None:
                    tar.add(last, arcname=f"checkpoints/{last.name}")
        data = buffer.getvalue()
        chunks = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)] or [b""]
        for number, chunk in enumerate(chunks):
            self.say("bundle", f"{number} {len(chunks)} {base64.b64encode(chunk).decode()}")
        self.say("end", json.dumps({"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "code": code}))


def newest_checkpoint(folder: Path) -> Path | None:
    found = [(int(p.name.split("-")[1]), p) for p in folder.glob("checkpoint-*")
             if p.name.split("-")[1].isdigit() and (p / "trainer_state.json").exists()]
    return max(found)[1] if found else None


def stage_run(stage: Path) -> Path:
    """A private copy of the staged run (Ray shares one unpacked working dir between identical jobs), with
    the manifest pointing at the dataset and model that travelled with it."""
    here = stage.resolve().parent
    run = Path(tempfile.mkdtemp(prefix="studio-run-")) / stage.name
    shutil.copytree(stage, run)
    manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    manifest["dataset"]["path"] = str(here / "dataset")
    if (here / "model").is_dir():
        manifest["base_model"]["source"] = str(here / "model")
    (run / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return run


def main(stage: str) -> int:
    run = stage_run(Path(stage))
    relay = Relay(run)
    child = subprocess.Popen([sys.executable, "-m", "studio.training", str(run)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def pass_on(signum, _frame):  # stop_job: the run stops at the next step and saves; we still report
        child.send_signal(signum)

    signal.signal(signal.SIGTERM, pass_on)
    signal.signal(signal.SIGINT, pass_on)
    reader = threading.Thread(target=relay.copy_output, args=(child.stdout,), daemon=True)
    reader.start()
    while child.poll() is None:
        relay.relay_files()
        time.sleep(0.5)
    reader.join(timeout=10)
    relay.relay_files()
    relay.bundle(child.returncode)
    shutil.rmtree(run.parent, ignore_errors=True)
    return child.returncode


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m studio.training.relay STAGE", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))

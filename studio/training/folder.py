"""The run folder: the contract between the studio and its training process (DESIGN.md).

runs/<id>/config.yaml       the frozen TrainConfig (written by the studio, read by the process)
runs/<id>/manifest.json     what the run used: dataset hash, model and revision, libraries, hardware
runs/<id>/events.jsonl      one JSON object per line: start, step, eval, checkpoint, notice, end
runs/<id>/status.json       the process's own state: running | succeeded | failed | cancelled (+ reason)
runs/<id>/train.log         the process's stdout and stderr (each attempt starts with a marker line)
runs/<id>/exit.json         how the last attempt's process ended (exit code or signal), by its shepherd
runs/<id>/ranks/<k>.json    a run of several processes: each rank's pid and start time (launchers/accelerate.py)
runs/<id>/accelerate.yaml   a run of several processes: the `accelerate launch` config it was started with
runs/<id>/checkpoints/      Trainer checkpoints (adapter + optimizer + scheduler + RNG state)
runs/<id>/data-cache/       a dataset version too big to read into memory (run.MMAP_SPLIT_MB), as memory-mapped
                            Arrow files, and the trainers' tokenised rows beside them
runs/<id>/adapter/          the peft adapter, the tokenizer and chat template it was trained with,
                            and generation_config.json with the end-of-turn ids

The training process writes; the studio reads (and writes config.yaml and the first manifest.json
before the process starts). Light on imports: the studio reads folders without torch.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.core.files import read_json, read_jsonl, write_json_atomic

TERMINAL_STATES = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class RunFolder:
    path: Path

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def manifest(self) -> Path:
        return self.path / "manifest.json"

    @property
    def events(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def status(self) -> Path:
        return self.path / "status.json"

    @property
    def log(self) -> Path:
        return self.path / "train.log"

    @property
    def exit(self) -> Path:
        return self.path / "exit.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def adapter(self) -> Path:
        return self.path / "adapter"

    # --- reading (the studio) -------------------------------------------------------------------

    def read_status(self) -> dict[str, Any]:
        return read_json(self.status)

    def read_manifest(self) -> dict[str, Any]:
        return read_json(self.manifest)

    def read_events(self) -> list[dict[str, Any]]:
        """Every complete event line; a half-written last line (the process is writing) is skipped."""
        return read_jsonl(self.events)

    def tail_log(self, lines: int = 20) -> list[str]:
        try:
            with self.log.open(encoding="utf-8", errors="replace") as f:
                return [line.rstrip("\n") for line in deque(f, maxlen=lines)]
        except OSError:
            return []

    def last_checkpoint(self) -> Path | None:
        """The newest complete checkpoint (one whose trainer_state.json was written), or None."""
        found = []
        if self.checkpoints.is_dir():
            for child in self.checkpoints.iterdir():
                match = re.fullmatch(r"checkpoint-(\d+)", child.name)
                if match and (child / "trainer_state.json").exists():
                    found.append((int(match.group(1)), child))
        return max(found)[1] if found else None

    def has_adapter(self) -> bool:
        return (self.adapter / "adapter_config.json").exists()

    # --- writing (the training process) ---------------------------------------------------------

    def emit(self, event_type: str, **fields: Any) -> dict[str, Any]:
        event = {"type": event_type, "time": round(time.time(), 3), **fields}
        line = json.dumps(event, default=str)
        with self.events.open("a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
        return event

    def write_status(self, state: str, **fields: Any) -> None:
        write_json_atomic(self.status, {"state": state, "pid": os.getpid(), "updated_at": time.time(), **fields})


class Clock:
    """Seconds of training across attempts: a resumed run continues the elapsed time of the earlier ones."""

    def __init__(self, before: float = 0.0):
        self.before = before
        self.started = time.time()

    def elapsed(self) -> float:
        return round(self.before + time.time() - self.started, 1)


def previous_elapsed(folder: RunFolder) -> float:
    """The elapsed time the last attempt reached (events carry the running total)."""
    values = [e["elapsed"] for e in folder.read_events() if e.get("elapsed") is not None]
    return float(values[-1]) if values else 0.0

"""The run folder: the contract between the studio and its training process (DESIGN.md).

runs/<id>/config.yaml       the frozen TrainConfig (written by the studio, read by the process)
runs/<id>/manifest.json     what the run used: dataset hash, model and revision, libraries, hardware
runs/<id>/events.jsonl      one JSON object per line: start, step, eval, checkpoint, notice, end
runs/<id>/status.json       the process's own state: running | succeeded | failed | cancelled (+ reason)
runs/<id>/train.log         the process's stdout and stderr
runs/<id>/checkpoints/      Trainer checkpoints (adapter + optimizer + scheduler + RNG state)
runs/<id>/adapter/          the peft adapter, the tokenizer and chat template it was trained with,
                            and generation_config.json with the end-of-turn ids

The training process writes; the studio reads (and writes config.yaml and the first manifest.json
before the process starts). Light on imports: the studio reads folders without torch.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TERMINAL_STATES = ("succeeded", "failed", "cancelled")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write to a temporary file in the same folder, then rename: a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def adapter(self) -> Path:
        return self.path / "adapter"

    # --- reading (the studio) -------------------------------------------------------------------

    def read_status(self) -> dict[str, Any]:
        try:
            return json.loads(self.status.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def read_manifest(self) -> dict[str, Any]:
        try:
            return json.loads(self.manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def read_events(self) -> list[dict[str, Any]]:
        """Every complete event line; a half-written last line (the process is writing) is skipped."""
        try:
            text = self.events.read_text(encoding="utf-8")
        except OSError:
            return []
        events = []
        for line in text.splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events

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

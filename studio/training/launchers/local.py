"""The local launcher: `python -m studio.training RUN_DIR` as a supervised process on this machine.

The process runs in its own session (it outlives the studio and is re-adopted by pid and start time),
logs to the run's train.log, and sees only the device its slot names (CUDA_VISIBLE_DEVICES).
"""

from __future__ import annotations

import os
import signal
import sys

from studio.core import procs
from studio.core.db import now
from studio.core.procs import Ending
from studio.training.launchers.base import CPU_SLOT, Attempt, Handle, Launcher


def training_argv(run_dir) -> list[str]:
    return [sys.executable, "-m", "studio.training", str(run_dir)]


class LocalLauncher(Launcher):
    name = "local"

    def _proc(self, attempt: Attempt) -> procs.Proc:
        return procs.Proc(pid=attempt.handle.pid, started=attempt.handle.started, log=attempt.folder.log,
                          exit_file=attempt.folder.exit)

    def argv(self, attempt: Attempt) -> list[str]:
        return training_argv(attempt.folder.path)

    def environment(self, attempt: Attempt) -> dict[str, str]:
        """What the process gets on top of the studio's environment."""
        env = {"TOKENIZERS_PARALLELISM": "false",
               "PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")}
        if attempt.slot != CPU_SLOT:
            env["CUDA_VISIBLE_DEVICES"] = str(attempt.slot)
        return env

    def start(self, attempt: Attempt) -> Handle:
        folder = attempt.folder
        env = self.environment(attempt)
        # a fresh status: the previous attempt's (cancelled, failed) must not be read as this one's
        folder.status.unlink(missing_ok=True)
        with folder.log.open("ab") as log:
            log.write(f"\n=== attempt {attempt.number} started {now()} ===\n".encode())
        proc = procs.start(self.argv(attempt), log=folder.log, exit_file=folder.exit, cwd=folder.path,
                           env=env)
        return Handle(pid=proc.pid, started=proc.started)

    def poll(self, attempt: Attempt) -> bool:
        return procs.alive(self._proc(attempt))

    def cancel(self, attempt: Attempt) -> bool:
        return procs.signal_group(self._proc(attempt), signal.SIGTERM)

    def kill(self, attempt: Attempt, grace: float) -> None:
        procs.kill(self._proc(attempt), grace=grace)

    def ending(self, attempt: Attempt) -> Ending:
        return procs.read_ending(attempt.folder.exit)

"""The one process supervisor: training runs, endpoints and exports are all started, watched, stopped
and re-adopted here.

A supervised process starts from an argv list (never a shell string) in a session of its own, so it
leads its own process group and outlives the studio; stdout and stderr are appended to its log. It runs
under the shepherd (studio/core/shepherd.py), which records how it ended in its exit file, so the exit
status is known even after the studio that started it has died and another re-adopted it.

A `Proc` is the group leader's pid and start time: a pid the system reused for another process is never
taken for ours. Stopping sends SIGTERM to the whole group (dataloader workers and other children too),
then SIGKILL to the group after a grace period. The registry rows keep pid and start time; the log and
the exit file live in the process's own folder.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from studio.core.files import write_json_atomic
from studio.core.paths import PROJECT_ROOT

KILL_WAIT_S = 10.0  # after SIGKILL the kernel frees the processes at once; a GPU context may take a moment
_POLL_S = 0.1


@dataclass(frozen=True)
class Proc:
    pid: int | None
    started: float | None  # the leader's start time (psutil's create_time); None: not known, trust the pid
    log: Path
    exit_file: Path


@dataclass(frozen=True)
class Ending:
    """How a supervised process ended: its exit code, or the signal that killed it (None: not recorded)."""

    code: int | None = None
    signal: int | None = None
    by_stop: bool = False  # the supervisor killed it after the grace period
    grace: float | None = None

    @property
    def known(self) -> bool:
        return self.code is not None or self.signal is not None

    @property
    def clean(self) -> bool:
        return self.code == 0

    def describe(self) -> str:
        """In words, with the likely cause of a kill."""
        if self.by_stop:
            return f"it was killed (SIGKILL) because it had not stopped {self.grace:.0f} s after it was asked to"
        if self.code is not None:
            return f"it exited with code {self.code}"
        if self.signal is not None:
            name = _signal_name(self.signal)
            if self.signal == signal.SIGKILL:
                return (f"it was killed by {name} (signal {self.signal}); without a kill from a person this is "
                        "usually the system's out-of-memory killer: the machine ran out of RAM")
            if self.signal == signal.SIGSEGV:
                return f"it crashed ({name}, signal {self.signal}) in native code (a CUDA or library fault)"
            return f"it was stopped by {name} (signal {self.signal})"
        return "how it ended was not recorded (it was killed outright, or started by an older studio)"


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


# ------------------------------------------------------------------------------------------ start


def start(argv: list[str], *, log: Path, exit_file: Path, cwd: Path, env: dict[str, str] | None = None) -> Proc:
    """Start `argv` under the shepherd in a new session, appending its output to `log`.

    `env` is added to the studio's environment; the project root goes first on PYTHONPATH so that
    `python -m studio....` finds this very checkout."""
    import psutil

    exit_file.unlink(missing_ok=True)  # an earlier attempt's ending is not this one's
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
    shepherd = [sys.executable, "-m", "studio.core.shepherd", str(exit_file), "--", *argv]
    with log.open("ab") as out:
        child = subprocess.Popen(shepherd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 cwd=cwd, env=full_env, start_new_session=True)
    try:
        started = psutil.Process(child.pid).create_time()
    except psutil.Error:  # ended already: alive() then says so
        started = None
    return Proc(pid=child.pid, started=started, log=log, exit_file=exit_file)


# ------------------------------------------------------------------------------------------ watching


def alive(proc: Proc) -> bool:
    """True while the process we started, or anything left of its process group, still runs.

    The leader's start time must match (pids get reused). When the leader is gone, a member of its group
    may still run (a child whose shepherd was killed alone): the group id cannot be reused while any
    member lives, so such a member is ours."""
    import psutil

    if not proc.pid:
        return False
    _reap(proc.pid)
    try:
        leader = psutil.Process(proc.pid)
        if leader.status() != psutil.STATUS_ZOMBIE:
            return proc.started is None or abs(leader.create_time() - proc.started) < 1.0
    except psutil.NoSuchProcess:
        pass
    except psutil.Error:
        return False
    return bool(_group_members(proc.pid))


def is_running(pid: int | None, started: float | None) -> bool:
    """True if process `pid` runs and is the one that started at `started` (not a reused pid).

    For a process that is not a supervised group leader, e.g. the studio or CLI process doing a publish."""
    import psutil

    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and (started is None or abs(proc.create_time() - started) < 1.0)
    except psutil.Error:
        return False


def own_identity() -> tuple[int, float]:
    """This process's pid and start time, to record as the owner of work it does in-process."""
    import psutil

    return os.getpid(), psutil.Process().create_time()


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group `pgid`."""
    import psutil

    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):  # no such group, or another user's (not ours)
        return []
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return members


def _reap(pid: int) -> None:
    """Collect our own child if it has ended (its ending is in the exit file; this only clears the zombie)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child (re-adopted after a restart): its own parent reaps it
        pass


def ending(proc: Proc) -> Ending | None:
    """How the process ended, or None while it runs."""
    if alive(proc):
        return None
    return read_ending(proc.exit_file)


def read_ending(exit_file: Path) -> Ending:
    try:
        record = json.loads(exit_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return Ending()
    return Ending(code=record.get("code"), signal=record.get("signal"), by_stop=bool(record.get("by_stop")),
                  grace=record.get("grace"))


def tail(log: Path, lines: int = 8, skip: tuple[str, ...] = ()) -> list[str]:
    """The last non-empty lines of a log, leaving out noise such as progress bars (lines containing `skip`)."""
    try:
        with log.open(encoding="utf-8", errors="replace") as f:
            recent = deque(f, maxlen=max(lines * 20, 200))
    except OSError:
        return []
    kept = [ln.rstrip("\n") for ln in recent if ln.strip() and not any(s in ln for s in skip)]
    return kept[-lines:]


# ------------------------------------------------------------------------------------------ stopping


def signal_group(proc: Proc, signum: int) -> bool:
    """Send `signum` to the process's whole group; False if it no longer runs."""
    if not alive(proc):
        return False
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        os.kill(proc.pid, signum)
    return True


def wait(proc: Proc, timeout: float) -> bool:
    """Wait up to `timeout` seconds for the process to end; True if it did."""
    deadline = time.monotonic() + timeout
    while alive(proc):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)
    return True


def stop(proc: Proc, grace: float) -> Ending:
    """SIGTERM to the group; if it still runs after `grace` seconds, SIGKILL to the group.

    Returns how it ended. A process killed here is recorded as such in its exit file."""
    if not signal_group(proc, signal.SIGTERM) or wait(proc, grace):
        return read_ending(proc.exit_file)
    kill(proc, grace=grace)
    return read_ending(proc.exit_file)


def kill(proc: Proc, grace: float | None = None) -> None:
    """SIGKILL to the whole group now, and record that the supervisor did it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return
    wait(proc, KILL_WAIT_S)
    if not read_ending(proc.exit_file).known:
        _record(proc.exit_file, {"code": None, "signal": int(signal.SIGKILL), "by_stop": grace is not None,
                                 "grace": grace, "ended_at": time.time()})


def _record(exit_file: Path, record: dict) -> None:
    try:
        write_json_atomic(exit_file, record)
    except OSError:  # the folder is gone (deleted meanwhile): nothing left to record into
        pass

"""The process supervisor (studio/core/procs.py) with real child processes: start in a session of its own,
exit status and last log lines, stop with escalation to SIGKILL of the whole group, a reused pid, and
re-adoption by a process that did not start it (the starter has died)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from studio.core import procs

PY = sys.executable


def _start(tmp_path: Path, code: str, name: str = "child") -> procs.Proc:
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    return procs.start([PY, "-c", textwrap.dedent(code)], log=folder / "out.log", exit_file=folder / "exit.json",
                       cwd=folder)


def _until(predicate, timeout=20.0, what="the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_exit_code_and_last_log_lines_are_collected(tmp_path):
    proc = _start(tmp_path, """
        import sys
        for i in range(30):
            print(f"line {i}")
        print("loading 50%|#####     | 5/10 [00:01<00:01, 4.0it/s]")
        print("something went wrong", file=sys.stderr)
        sys.exit(3)
    """)
    assert os.getpgid(proc.pid) == proc.pid  # its own process group (and session): it outlives the studio
    assert procs.wait(proc, 20)
    ending = procs.ending(proc)
    assert ending.code == 3 and ending.signal is None and ending.describe() == "it exited with code 3"
    assert procs.tail(proc.log, 3, skip=("it/s]",)) == ["line 28", "line 29", "something went wrong"]
    assert procs.ending(proc) == ending  # read again: it is in the exit file, not in memory


def test_a_clean_exit_and_a_program_that_cannot_start(tmp_path):
    ok = _start(tmp_path, "print('fine')", "ok")
    assert procs.wait(ok, 20) and procs.ending(ok).clean
    missing = procs.start(["/nonexistent/program"], log=tmp_path / "m.log", exit_file=tmp_path / "m.json",
                          cwd=tmp_path)
    assert procs.wait(missing, 20)
    assert procs.ending(missing).code == 127 and "cannot start /nonexistent/program" in missing.log.read_text()


def test_stop_asks_first_then_kills_the_whole_group_of_a_child_that_ignores_sigterm(tmp_path):
    proc = _start(tmp_path, """
        import signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # a grandchild in the same group (as dataloader workers are); it ignores SIGTERM too
        ignore = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"
        subprocess.Popen([sys.executable, "-c", ignore])
        print("ready", flush=True)
        time.sleep(300)
    """)
    _until(lambda: "ready" in proc.log.read_text(), what="the child to start")
    members = procs._group_members(proc.pid)
    assert len(members) == 3  # shepherd, child, grandchild
    started = time.monotonic()
    ending = procs.stop(proc, grace=1.0)
    took = time.monotonic() - started
    assert 1.0 <= took < 15
    assert ending.by_stop and ending.signal == signal.SIGKILL
    assert "had not stopped 1 s after it was asked to" in ending.describe()
    assert not procs.alive(proc)
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                   for pid in members)


def test_stop_of_a_child_that_obeys_sigterm_needs_no_kill(tmp_path):
    proc = _start(tmp_path, """
        import signal, sys, time
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        print("ready", flush=True)
        time.sleep(300)
    """)
    _until(lambda: "ready" in proc.log.read_text(), what="the child to start")
    ending = procs.stop(proc, grace=20)
    assert ending.code == 0 and not ending.by_stop


def test_a_reused_pid_is_not_ours(tmp_path):
    me = psutil.Process()
    assert not procs.alive(procs.Proc(pid=me.pid, started=me.create_time() - 3600, log=tmp_path / "x",
                                      exit_file=tmp_path / "y"))
    assert procs.alive(procs.Proc(pid=me.pid, started=me.create_time(), log=tmp_path / "x", exit_file=tmp_path / "y"))
    assert not procs.alive(procs.Proc(pid=None, started=None, log=tmp_path / "x", exit_file=tmp_path / "y"))
    assert procs.is_running(*procs.own_identity())
    assert not procs.is_running(me.pid, me.create_time() + 3600)


def test_a_process_is_readopted_after_its_starter_dies_and_its_exit_status_still_collected(tmp_path):
    """One process starts the child and exits (as a studio that crashes); this one finds it by pid and start
    time, sees it run, and learns its exit code afterwards although it never was its parent."""
    go = tmp_path / "go"
    starter = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        from studio.core import procs
        folder = Path({str(tmp_path)!r})
        code = ("import pathlib, sys, time\\n"
                "while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.05)\\nsys.exit(5)")
        proc = procs.start([sys.executable, "-c", code], log=folder / "out.log", exit_file=folder / "exit.json",
                           cwd=folder)
        print(json.dumps({{"pid": proc.pid, "started": proc.started}}))
    """)
    out = subprocess.run([PY, "-c", starter], capture_output=True, text=True, timeout=60, check=True)
    handle = json.loads(out.stdout)
    proc = procs.Proc(pid=handle["pid"], started=handle["started"], log=tmp_path / "out.log",
                      exit_file=tmp_path / "exit.json")
    with pytest.raises(ChildProcessError):
        os.waitpid(proc.pid, os.WNOHANG)  # not our child
    assert procs.alive(proc) and procs.ending(proc) is None
    go.touch()
    _until(lambda: not procs.alive(proc), what="the child to end")
    assert procs.ending(proc).code == 5


def test_a_child_killed_alone_is_recorded_with_its_signal(tmp_path):
    """kill -9 of the program itself (as the out-of-memory killer does): the shepherd records the signal."""
    proc = _start(tmp_path, "import time; print('ready', flush=True); time.sleep(300)")
    _until(lambda: "ready" in proc.log.read_text(), what="the child to start")
    [child] = psutil.Process(proc.pid).children()
    child.kill()
    _until(lambda: not procs.alive(proc), what="the shepherd to end")
    ending = procs.ending(proc)
    assert ending.signal == signal.SIGKILL and not ending.by_stop
    assert "out-of-memory killer" in ending.describe()


def test_the_group_still_counts_when_only_the_shepherd_was_killed(tmp_path):
    """A member of the group outlives its leader: it is still ours, and stop still reaches it."""
    proc = _start(tmp_path, "import time; print('ready', flush=True); time.sleep(300)")
    _until(lambda: "ready" in proc.log.read_text(), what="the child to start")
    [child] = psutil.Process(proc.pid).children()
    os.kill(proc.pid, signal.SIGKILL)  # the shepherd alone
    _until(lambda: not psutil.pid_exists(proc.pid) or psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE,
           what="the shepherd to die")
    procs._reap(proc.pid)
    assert procs.alive(proc), "the program still runs in the group"
    procs.stop(proc, grace=5)
    _until(lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, what="the program to stop")
    assert not procs.alive(proc)
    assert not procs.ending(proc).known or procs.ending(proc).signal is not None

"""The launcher seam: the queue hands runs to whatever launcher a run names, through the contract alone
(start, poll, cancel, kill, ending), and a process that ignores a cancel is killed after the grace period
instead of holding its device forever."""

import sys
import time

import pytest
from conftest import save_qa_dataset

from studio.core.errors import InvalidInput
from studio.training import launchers, runs, scheduler, submit
from studio.training.launchers.base import Attempt
from studio.training.launchers.local import LocalLauncher
from studio.training.presets import build_config

HUNG = ("import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a step that never returns to see the cancel\n"
        "print('training step 1', flush=True)\n"
        "time.sleep(600)\n")


class HungLauncher(LocalLauncher):
    """The local launcher (a real supervised process) whose program hangs; it notes every call of the seam."""

    name = "hung-for-test"

    def __init__(self):
        self.calls: list[str] = []

    def argv(self, attempt: Attempt) -> list[str]:
        return [sys.executable, "-c", HUNG]

    def start(self, attempt):
        self.calls.append("start")
        return super().start(attempt)

    def poll(self, attempt):
        self.calls.append("poll")
        return super().poll(attempt)

    def cancel(self, attempt):
        self.calls.append("cancel")
        return super().cancel(attempt)

    def kill(self, attempt, grace):
        self.calls.append("kill")
        return super().kill(attempt, grace)

    def ending(self, attempt):
        self.calls.append("ending")
        return super().ending(attempt)


@pytest.fixture
def hung(monkeypatch):
    launcher = HungLauncher()
    monkeypatch.setitem(launchers.LAUNCHERS, launcher.name, launcher)
    return launcher


def test_a_hung_run_is_cancelled_then_killed_through_its_launcher(ws, hung, monkeypatch):
    monkeypatch.setattr(scheduler, "CANCEL_GRACE_S", 1.0)
    version = save_qa_dataset(ws)
    run = submit.submit(ws, build_config("demo-tiny", version.id, "quick-test"), preset="quick-test",
                        launcher=hung.name)
    assert run.launcher == hung.name
    assert scheduler.schedule(ws) == [run.id]
    running = runs.get_run(ws, run.id)
    assert running.status == "running" and running.pid and running.attempts == 1
    deadline = time.monotonic() + 30
    while "training step 1" not in running.folder.log.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)

    assert scheduler.cancel(ws, run.id).status == "running"  # asked; the process ignores it
    scheduler.reconcile(ws)
    assert runs.get_run(ws, run.id).status == "running"  # within the grace period it may still save
    time.sleep(1.2)
    scheduler.reconcile(ws)  # past the grace period: killed, and the run ends cancelled, with the reason
    done = runs.get_run(ws, run.id)
    assert done.status == "cancelled" and "did not stop within 1 s of the cancel" in done.notice
    assert not hung.poll(done.attempt())
    assert hung.calls[0] == "start" and {"poll", "cancel", "kill", "ending"} <= set(hung.calls)
    assert "=== attempt 1 started" in done.folder.log.read_text()


def test_a_run_names_a_launcher_that_exists(ws):
    version = save_qa_dataset(ws)
    with pytest.raises(InvalidInput, match="'ray-somewhere' is not a way to run training here"):
        submit.submit(ws, build_config("demo-tiny", version.id, "quick-test"), launcher="ray-somewhere")
    assert runs.list_runs(ws) == []
    assert launchers.get(None).name == "local"  # rows from before launchers existed ran locally

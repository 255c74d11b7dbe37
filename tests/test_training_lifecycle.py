"""Runs that are cancelled and resumed, killed with -9 (the training process and the studio), and runs
that fail for a reason a user can act on: all through the real queue and `python -m studio.training`."""

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import save_qa_dataset

from studio.training import runs, scheduler, submit
from studio.training.launchers.local import LocalLauncher
from studio.training.presets import build_config

pytestmark = pytest.mark.slow
LR = 3e-3


def _wait(predicate, timeout=300.0, poll=0.2, what="the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


def _submit(ws, dataset_id, model="demo-tiny", **overrides):
    cfg = build_config(model, dataset_id, "quick-test", overrides)
    return submit.submit(ws, cfg, preset="quick-test", overrides=overrides, force=True)


def _steps(run):
    return [e for e in run.folder.read_events() if e["type"] == "step"]


def test_cancel_mid_run_then_resume_to_completion(ws):
    data = save_qa_dataset(ws)
    run = _submit(ws, data.id, max_steps=24, save_every=1000, eval_every=1000, lr_schedule="linear",
                  warmup_ratio=0.0, learning_rate=LR)
    assert scheduler.schedule(ws) == [run.id]
    _wait(lambda: any(e["step"] >= 3 for e in _steps(run)), what="three steps")
    cancelled = scheduler.cancel(ws, run.id, wait=180)
    assert cancelled.status == "cancelled", cancelled.error
    k = cancelled.step
    assert 3 <= k < 24
    checkpoint = run.folder.checkpoints / f"checkpoint-{k}"
    for name in ("optimizer.pt", "scheduler.pt", "trainer_state.json", "adapter_model.safetensors"):
        assert (checkpoint / name).exists(), name
    assert run.folder.has_adapter()  # what was learnt so far is usable
    end = run.folder.read_events()[-1]
    assert end["type"] == "end" and end["status"] == "cancelled" and end["step"] == k
    before = _steps(run)

    resumed = runs.resume(ws, run.id)
    assert resumed.status == "queued"
    done = scheduler.wait_for(ws, run.id, timeout=300)
    assert done.status == "succeeded" and done.step == 24, done.error
    starts = [e for e in run.folder.read_events() if e["type"] == "start"]
    assert [s["step"] for s in starts] == [0, k] and starts[1]["resumed_from"] == f"checkpoint-{k}"
    after = _steps(run)[len(before):]
    assert after[0]["step"] == k + 1 and after[-1]["step"] == 24
    # the scheduler continued its linear decay instead of restarting: one step's worth lower
    assert before[-1]["learning_rate"] - after[0]["learning_rate"] == pytest.approx(LR / 24, rel=0.05)
    assert after[0]["elapsed"] > before[-1]["elapsed"]  # elapsed counts both attempts
    assert done.attempts == 2


def test_the_last_step_is_logged_whatever_log_every_says(ws):
    """7 steps logged every 5: the run's page and curves end on step 7 (they ended on step 5)."""
    data = save_qa_dataset(ws)
    run = _submit(ws, data.id, max_steps=7, log_every=5, save_every=1000, eval_every=1000)
    scheduler.schedule(ws)
    done = scheduler.wait_for(ws, run.id, timeout=300)
    assert done.status == "succeeded", done.error
    steps = [e["step"] for e in _steps(run)]
    assert steps[-1] == 7 and 5 in steps and 6 not in steps, steps


def test_kill_9_of_the_studio_then_of_the_training_process(ws):
    data = save_qa_dataset(ws)
    run = _submit(ws, data.id, max_steps=20, save_every=4, eval_every=1000)
    env = dict(os.environ, STUDIO_HOME=str(ws.home))
    studio = subprocess.Popen([sys.executable, "-m", "studio", "runs", "worker", "--poll", "0.3"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        running = _wait(lambda: (r := runs.get_run(ws, run.id)).pid and _steps(r) and r, what="the run to train")
    finally:
        studio.kill()  # kill -9 of the studio while it trains
        studio.wait()
    assert LocalLauncher().poll(running.attempt()), "the training process outlives the studio"
    scheduler.reconcile(ws)  # a restarted studio re-adopts it
    assert runs.get_run(ws, run.id).status == "running"

    _wait(lambda: any(e["type"] == "checkpoint" for e in run.folder.read_events()), what="a checkpoint")
    os.killpg(running.pid, signal.SIGKILL)  # kill -9 of the training process
    _wait(lambda: not LocalLauncher().poll(running.attempt()), what="the process to die")
    scheduler.reconcile(ws)
    failed = runs.get_run(ws, run.id)
    assert failed.status == "failed" and "killed or crashed" in failed.error and "Last log lines" in failed.error
    saved = run.folder.last_checkpoint()
    assert saved is not None and saved.name in failed.fix  # nothing saved is lost

    runs.resume(ws, run.id)
    done = scheduler.wait_for(ws, run.id, timeout=300)
    assert done.status == "succeeded" and done.step == 20, done.error
    starts = [e for e in run.folder.read_events() if e["type"] == "start"]
    assert starts[-1]["resumed_from"] == saved.name and starts[-1]["step"] == int(saved.name.split("-")[1])


def test_failures_end_with_a_reason_in_fifo_order_and_the_cli_exits_non_zero(ws, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub is out of reach here anyway; fail fast, not on a timeout
    long_question = "Please tell me, " + "in many many words, " * 20 + "where is my order?"
    empty = save_qa_dataset(ws, [(long_question, "Here."), (long_question + " Now.", "There.")], name="too long",
                            val_pairs=0)
    first = _submit(ws, empty.id, max_length=32)  # every answer falls beyond 32 tokens
    cli = subprocess.run(
        [sys.executable, "-m", "studio", "train", "--data", empty.id, "--model", "nobody/no-such-model",
         "--preset", "quick-test", "--wait"],
        env=dict(os.environ, STUDIO_HOME=str(ws.home)), capture_output=True, text=True, timeout=600,
    )
    assert cli.returncode == 2, cli.stdout + cli.stderr
    assert "queued behind 1 run(s)" in cli.stdout
    assert "not downloaded on this machine and the Hugging Face hub cannot be reached" in cli.stderr

    first = runs.get_run(ws, first.id)
    assert first.status == "failed" and "No training example was left" in first.error
    assert "Raise max_length (now 32)" in first.fix
    second = next(r for r in runs.list_runs(ws) if r.id != first.id)
    assert second.status == "failed" and "pick demo-tiny" in second.fix
    assert first.finished_at <= second.started_at  # FIFO: the second started when the first had ended
    status = second.folder.read_status()
    assert status["state"] == "failed" and status["kind"] == "model_unavailable"
    end = second.folder.read_events()[-1]
    assert end["type"] == "end" and end["kind"] == "model_unavailable" and end["reason"] == second.error

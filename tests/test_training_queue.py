"""The job queue without training: FIFO order, one job per device, atomic claims, reconcile (re-adopt,
dead, reused pid), cancel/resume/delete rules, the fit check's refusal and the CLI line."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import save_qa_dataset

from studio.core.errors import Conflict, NotFound, ResourceError
from studio.training import runs, scheduler, submit, summary
from studio.training.launchers.local import LocalLauncher
from studio.training.presets import build_config


@pytest.fixture
def dataset(ws):
    return save_qa_dataset(ws)


def _submit(ws, dataset, name, **overrides):
    cfg = build_config("demo-tiny", dataset.id, "quick-test", overrides)
    return submit.submit(ws, cfg, preset="quick-test", overrides=overrides, name=name)


def _finish(ws, run_id, status="succeeded"):
    runs.transition(ws, run_id, status, finished_at="2026-01-01T00:00:00+00:00")


def test_submit_freezes_the_config_and_queues(ws, dataset):
    run = _submit(ws, dataset, "first", lora_r=4)
    assert run.status == "queued" and run.name == "first" and run.preset == "quick-test"
    assert run.id.startswith("run-") and run.config["lora_r"] == 4
    folder = run.folder
    assert "lora_r: 4" in folder.config.read_text()
    manifest = folder.read_manifest()
    assert manifest["dataset"]["content_hash"] == dataset.content_hash and manifest["overrides"] == {"lora_r": 4}
    assert manifest["base_model"]["local"] is True and manifest["fit_check"]["fits"] is True
    assert run.max_steps == 100 and run.notice is None  # the training process says why it runs in 32-bit


def test_queue_is_fifo_with_one_job_per_device(ws, dataset):
    a, b, c = (_submit(ws, dataset, n) for n in "abc")
    assert [r.id for r in runs.queue(ws)] == [a.id, b.id, c.id]
    assert scheduler.claim_next(ws, scheduler.CPU_SLOT).id == a.id
    assert scheduler.claim_next(ws, scheduler.CPU_SLOT) is None  # the CPU is busy with a
    assert scheduler.claim_next(ws, 1).id == b.id  # another device takes the next one
    _finish(ws, a.id)
    assert scheduler.claim_next(ws, scheduler.CPU_SLOT).id == c.id
    resumed = runs.resume(ws, scheduler.cancel(ws, _submit(ws, dataset, "d").id).id)
    late = _submit(ws, dataset, "e")
    assert [r.id for r in runs.queue(ws)] == [resumed.id, late.id]


def test_two_schedulers_never_claim_the_same_run(ws, dataset):
    for name in "abcd":
        _submit(ws, dataset, name)
    for _ in range(3):
        barrier = threading.Barrier(4)
        claimed = []

        def claim(barrier=barrier, claimed=claimed):
            barrier.wait()
            run = scheduler.claim_next(ws, scheduler.CPU_SLOT)
            if run:
                claimed.append(run.id)

        threads = [threading.Thread(target=claim) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(claimed) == 1
        _finish(ws, claimed[0])
    assert len(runs.list_runs(ws, "succeeded")) == 3


def _running(ws, dataset, pid, proc_start):
    run = _submit(ws, dataset, "r")
    scheduler.claim_next(ws, scheduler.CPU_SLOT)
    runs.record(ws, run.id, pid=pid, proc_start=proc_start)
    return runs.get_run(ws, run.id)


def test_reconcile_readopts_a_live_process_and_reads_its_progress(ws, dataset):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        run = _running(ws, dataset, proc.pid, psutil.Process(proc.pid).create_time())
        run.folder.emit("start", step=0, max_steps=60)
        run.folder.emit("step", step=7, max_steps=60, loss=5.5)
        assert scheduler.reconcile(ws) == []
        run = runs.get_run(ws, run.id)
        assert run.status == "running" and run.step == 7 and run.loss == 5.5 and run.progress == pytest.approx(7 / 60)
    finally:
        proc.kill()
        proc.wait()


def test_reconcile_fails_a_dead_process_with_its_last_log_lines(ws, dataset):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    started = psutil.Process(proc.pid).create_time()
    proc.wait()
    run = _running(ws, dataset, proc.pid, started)
    run.folder.log.write_text("loading\nstep 3 done\nKilled\n")
    assert scheduler.reconcile(ws) == [run.id]
    run = runs.get_run(ws, run.id)
    assert run.status == "failed" and "killed or crashed" in run.error and "step 3 done | Killed" in run.error
    assert "starts again from the beginning" in run.fix and run.finished_at


def test_reconcile_takes_the_final_state_the_process_wrote(ws, dataset):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    started = psutil.Process(proc.pid).create_time()
    proc.wait()
    run = _running(ws, dataset, proc.pid, started)
    run.folder.status.write_text(json.dumps({"state": "failed", "kind": "oom", "reason": "Out of memory.",
                                             "fix": "Lower micro_batch_size."}))
    scheduler.reconcile(ws)
    run = runs.get_run(ws, run.id)
    assert (run.status, run.error, run.fix) == ("failed", "Out of memory.", "Lower micro_batch_size.")


def test_a_reused_pid_is_not_mistaken_for_the_run(ws, dataset):
    me = psutil.Process(os.getpid())
    run = _running(ws, dataset, me.pid, me.create_time() - 3600)  # same pid, another process's start time
    assert not LocalLauncher().poll(run.attempt())
    scheduler.reconcile(ws)
    assert runs.get_run(ws, run.id).status == "failed"


def test_a_claim_whose_launcher_died_is_failed_after_a_grace_period(ws, dataset):
    run = _submit(ws, dataset, "r")
    scheduler.claim_next(ws, scheduler.CPU_SLOT)
    scheduler.reconcile(ws)
    assert runs.get_run(ws, run.id).status == "running"  # another scheduler may be launching it
    runs.record(ws, run.id, started_at="2020-01-01T00:00:00+00:00")
    scheduler.reconcile(ws)
    assert runs.get_run(ws, run.id).status == "failed"


def test_cancel_resume_and_delete_rules(ws, dataset):
    run = _submit(ws, dataset, "r")
    with pytest.raises(Conflict, match="is queued"):
        runs.delete(ws, run.id)
    with pytest.raises(Conflict, match="already queued"):
        runs.resume(ws, run.id)
    assert scheduler.cancel(ws, run.id).status == "cancelled"
    with pytest.raises(Conflict, match="not running"):
        scheduler.cancel(ws, run.id)
    assert runs.resume(ws, run.id).status == "queued"
    assert scheduler.claim_next(ws, scheduler.CPU_SLOT).id == run.id
    _finish(ws, run.id)
    with pytest.raises(Conflict, match="Re-run it .*studio runs rerun"):
        runs.resume(ws, run.id)
    with ws.db() as db:
        db["evaluations"].insert({"id": "ev-1", "run_id": run.id, "created_at": "now", "path": "x"})
    with pytest.raises(Conflict, match="1 evaluations"):
        runs.delete(ws, run.id)
    with ws.db() as db:
        db["evaluations"].delete("ev-1")
    path = run.folder.path
    runs.delete(ws, run.id)
    assert not path.exists()
    with pytest.raises(NotFound, match=run.id):
        runs.get_run(ws, run.id)


def test_rerun_copies_the_frozen_config(ws, dataset):
    run = _submit(ws, dataset, "r", lora_r=4, seed=7)
    again = submit.rerun(ws, run.id)
    assert again.id != run.id and again.config == run.config and again.name == "r (re-run)"
    assert again.folder.config.read_text() == run.folder.config.read_text()


def test_a_run_too_big_for_this_machine_is_refused_with_the_fix(ws, dataset):
    cfg = build_config("meta-llama/Llama-3.1-8B-Instruct", dataset.id, "balanced")
    with pytest.raises(ResourceError) as err:
        submit.submit(ws, cfg, estimate={"peak_bytes": 10**15, "precision": "32bit", "suggestion": "Use less."})
    assert "in all, so it would run out of memory" in err.value.message and err.value.fix == "Use less."
    assert runs.list_runs(ws) == []
    forced = submit.submit(ws, build_config("demo-tiny", dataset.id, "quick-test"), force=True,
                         estimate={"peak_bytes": 10**15, "precision": "32bit"})
    assert forced.status == "queued"


def test_plan_explains_unknown_models_and_missing_data(ws, dataset, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    planned = submit.plan(ws, build_config("someone/unknown-model", dataset.id, "balanced"))
    assert planned.estimate is None and "size of 'someone/unknown-model' is unknown" in planned.summary
    # a hub model not in this machine's cache: the run downloads it first, which the plan says (no network used)
    assert "not downloaded on this machine yet" in planned.download and planned.download in planned.summary
    catalog = submit.plan(ws, build_config("meta-llama/Llama-3.2-1B-Instruct", dataset.id, "balanced"))
    assert catalog.estimate is not None and "must reach huggingface.co" in catalog.summary
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = submit.plan(ws, build_config("meta-llama/Llama-3.2-1B-Instruct", dataset.id, "balanced"))
    assert "HF_HUB_OFFLINE is set, so a run on it fails" in offline.download
    assert submit.plan(ws, build_config("demo-tiny", dataset.id, "quick-test")).download is None
    # once in the Hugging Face cache (the layout hf_hub_download writes), nothing more is said
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    snapshot = cache / "models--meta-llama--Llama-3.2-1B-Instruct" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    assert submit.plan(ws, build_config("meta-llama/Llama-3.2-1B-Instruct", dataset.id, "balanced")).download is None
    with pytest.raises(NotFound, match="ds-nothing"):
        submit.plan(ws, build_config("demo-tiny", "ds-nothing", "balanced"))


def test_command_line_and_step_line():
    line = submit.command_line("demo-tiny", "ds-1", "quick-test", {"lora_r": 8, "packing": True}, "my run")
    assert line == "studio train --data ds-1 --model demo-tiny --preset quick-test --set lora_r=8 " \
                   "--set packing=true --name 'my run'"
    # a workspace other than the default one is named, so the line works in a new terminal without STUDIO_HOME
    elsewhere = submit.command_line("demo-tiny", "ds-1", "quick-test", home=Path("/srv/team studio"))
    assert elsewhere.startswith("studio train --home '/srv/team studio' --data ds-1 ")
    from studio.core.workspace import DEFAULT_HOME
    assert "--home" not in submit.command_line("demo-tiny", "ds-1", "quick-test", home=DEFAULT_HOME)
    text = summary.step_line({"type": "step", "step": 3, "max_steps": 60, "epoch": 0.5, "loss": 6.2, "eta": 100,
                           "learning_rate": 0.003, "grad_norm": 1.5, "tokens_per_second": 300, "elapsed": 5})
    assert text == "step 3/60 · epoch 0.50 · loss 6.2000 · lr 3.0e-03 · grad norm 1.50 · 300 tok/s · " \
                   "elapsed 5s · eta 1m40s"


def test_worker_stops_when_told(ws):
    stop = threading.Event()
    thread = threading.Thread(target=scheduler.worker, args=(ws,), kwargs={"poll": 0.05, "stop": stop})
    thread.start()
    time.sleep(0.3)
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_a_run_cancelled_before_it_could_save_anything_ends_cancelled(ws, dataset):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    started = psutil.Process(proc.pid).create_time()
    proc.wait()
    run = _running(ws, dataset, proc.pid, started)
    runs.record(ws, run.id, cancel_requested_at="2026-01-01T00:00:00+00:00")
    scheduler.reconcile(ws)
    assert runs.get_run(ws, run.id).status == "cancelled"


def test_admission_on_a_full_gpu_asks_the_endpoints_to_unload_and_says_so(ws, dataset, monkeypatch):
    """The CUDA-only branch, with the GPU list of a machine whose GPU is nearly full (no GPU here)."""
    import studio.core.system
    import studio.serving.endpoints

    asked = []
    monkeypatch.setattr(studio.core.system, "gpus", lambda: [{"index": 0, "name": "NVIDIA L4", "memory_free_gb": 0.05,
                                                        "memory_total_gb": 24.0}])
    real_stop = studio.serving.endpoints.stop_local_endpoints
    monkeypatch.setattr(studio.serving.endpoints, "stop_local_endpoints",
                        lambda w, reason: asked.append(reason) or real_stop(w, reason))
    _submit(ws, dataset, "r")
    run = scheduler.claim_next(ws, 0)
    scheduler.admit(ws, run, 0)
    assert len(asked) == 1 and run.id in asked[0] and "free GPU memory" in asked[0]
    notice = runs.get_run(ws, run.id).notice
    assert "Only 0.05 GB of GPU memory is free" in notice and "may run out of memory" in notice
    scheduler.admit(ws, run, scheduler.CPU_SLOT)  # the CPU has no endpoints to unload
    assert len(asked) == 1


def _curves(train, held_out):
    return {"steps": [{"step": i + 1, "loss": v} for i, v in enumerate(train)],
            "evals": [{"step": s, "eval_loss": v} for s, v in held_out]}


def test_the_loss_curves_are_read_in_words():
    falling = [6.0 - 0.05 * i for i in range(100)]
    memorised = [6.0 * 0.95 ** i for i in range(100)]  # down to 0.04
    assert summary.learning_verdict(_curves(falling, [(50, 6.1)])) is None  # one evaluation says nothing yet
    assert summary.learning_verdict(_curves(falling, [(25, 5.9), (50, 4.8), (100, 3.1)])).startswith("✅")
    flat = summary.learning_verdict(_curves(memorised, [(25, 6.07), (50, 6.05), (100, 6.06)]))
    assert flat.startswith("⚠️ Held-out loss did not improve (6.07 → 6.06)") and "memorised" in flat
    rose = summary.learning_verdict(_curves(memorised, [(25, 4.0), (50, 3.0), (75, 3.6), (100, 4.2)]))
    assert rose.startswith("⚠️ Held-out loss rose from its best, 3 at step 50") and "about 50" in rose
    stuck = summary.learning_verdict(_curves([6.0] * 100, [(50, 6.0), (100, 6.0)]))
    assert "has not learnt much yet" in stuck

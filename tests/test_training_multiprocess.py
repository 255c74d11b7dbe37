"""Runs of several processes (`--processes N`, issue 15): on this CPU machine, 2 ranks over gloo started by
`accelerate launch` as one supervised group. They train like one process with the same global batch, write
each step once, stop together on cancel, and a rank killed with kill -9 fails the run saying which rank.
The queue's claim of N GPUs and the DDP/FSDP choice of the fit check are checked on their own (no GPU here).
"""

import json
import os
import signal
import time

import psutil
import pytest
from conftest import save_qa_dataset

from studio.core.errors import InvalidInput
from studio.models.catalog import catalog_entry
from studio.training import runs, scheduler, submit
from studio.training.fitcheck import estimate
from studio.training.launchers import accelerate as accelerate_launcher
from studio.training.presets import build_config
from studio.training.strategy import spread

STEPS = 6
LONG = 200  # max_steps of the runs that are cancelled or killed on the way
# 1 process x micro-batch 2 and 2 processes x micro-batch 1 see the same 2 rows per step (accelerate hands
# rank r the r-th micro-batch of the same seeded order), so the losses agree up to float rounding: a sum in
# another order (gloo's all-reduce of the gradients, the loss gathered over the ranks) and padding (a batch
# of 2 is padded to the longer row, a batch of 1 is not) move fp32 results by ~1e-6 relative; after 6 Adam
# steps at a learning rate of 3e-3 that stays far below 1e-3 on a loss of ~7 (measured: equal to 1e-6).
# A wrong split (a rank on other rows, or one whose gradients are not averaged in) is far outside it: from one
# step to the next the loss here moves by 0.1 to 0.6 with the rows of the batch.
LOSS_TOLERANCE = 1e-3


def _submit(ws, data_id, processes, micro_batch, **overrides):
    cfg = build_config("demo-tiny", data_id, "quick-test",
                       {"processes": processes, "micro_batch_size": micro_batch, "max_steps": STEPS,
                        "eval_every": 1000, "save_every": 1000, "warmup_ratio": 0.0, **overrides})
    return submit.submit(ws, cfg, preset="quick-test", force=True)


def _group(pgid: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return found


def _ranks(run) -> dict[int, psutil.Process]:
    """The ranks as the processes themselves recorded them (torchrun starts each in a session of its own)."""
    ranks = {}
    for path in (run.folder.path / "ranks").glob("*.json"):
        record = json.loads(path.read_text())
        ranks[record["rank"]] = psutil.Process(record["pid"])
        assert "studio.training" in " ".join(ranks[record["rank"]].cmdline())
        assert ranks[record["rank"]].environ()["RANK"] == str(record["rank"])
    return ranks


def _alive(procs_: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in procs_ if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def _until_training(ws, run_id, steps=1, timeout=180.0) -> runs.Run:
    """Run the queue until the run has logged `steps` steps (every rank is in the training loop)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        scheduler.schedule(ws)
        run = runs.get_run(ws, run_id)
        assert run.status in ("queued", "running"), (run.status, run.error, run.folder.tail_log(20))
        done = [e for e in run.folder.read_events() if e["type"] == "step"]
        if done and done[-1]["step"] >= steps and (run.launcher != "accelerate" or len(_ranks(run)) == 2):
            return run
        time.sleep(0.2)
    pytest.fail("the run did not reach its first step:\n" + "\n".join(runs.get_run(ws, run_id).folder.tail_log(30)))


def _gone(pgid: int, ranks: dict, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while _group(pgid) or _alive(list(ranks.values())):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_two_cpu_processes_train_like_one_with_the_same_global_batch_and_stop_together(ws):
    """One run of 1 process x micro-batch 2 and one of 2 processes x micro-batch 1 (the same global batch),
    each cancelled once it has passed step STEPS (the same max_steps, so the same learning-rate schedule): the
    first STEPS losses agree, each step is written once, and the cancel leaves no process of the group."""
    data = save_qa_dataset(ws)
    curves = {}
    for processes in (1, 2):
        run = _submit(ws, data.id, processes=processes, micro_batch=2 // processes, max_steps=LONG)
        assert run.launcher == ("accelerate" if processes == 2 else "local")
        running = _until_training(ws, run.id, steps=STEPS)
        ranks = _ranks(running) if processes == 2 else {}
        members = _group(running.pid) + list(ranks.values())
        if processes == 2:
            assert sorted(ranks) == [0, 1] and len(members) >= 4  # the shepherd, accelerate's agent, 2 ranks
        done = scheduler.cancel(ws, run.id, wait=120)
        assert done.status == "cancelled", (done.error, "\n".join(done.folder.tail_log(30)))
        assert _gone(running.pid, ranks) and not _alive(members)  # every rank stopped
        events = done.folder.read_events()
        steps = [e for e in events if e["type"] == "step"]
        assert [e["step"] for e in steps] == list(range(1, len(steps) + 1))  # once per step: rank 1 writes none
        assert [e["type"] for e in events].count("start") == 1
        ends = [e for e in events if e["type"] == "end"]
        assert len(ends) == 1 and ends[0]["status"] == "cancelled" and ends[0]["step"] >= STEPS
        assert done.folder.has_adapter()  # both ranks left the loop at one step and rank 0 saved
        curves[processes] = {e["step"]: e["loss"] for e in steps}

    for step in range(1, STEPS + 1):
        assert curves[2][step] == pytest.approx(curves[1][step], abs=LOSS_TOLERANCE), (step, curves)
    assert curves[1][STEPS] < curves[1][1] - 0.1  # it learnt: the comparison is between curves that move

    finished = runs.get_run(ws, run.id)
    manifest = finished.folder.read_manifest()
    assert manifest["distributed"]["processes"] == 2 and manifest["distributed"]["strategy"] == "ddp"
    assert "each holds a full copy of the model" in manifest["distributed"]["reason"]
    assert "(DDP over 2 CPU processes, gloo)" in manifest["distributed"]["reason"]
    assert "--num_processes" in accelerate_launcher.AccelerateLauncher().argv(finished.attempt())
    assert (finished.folder.path / "accelerate.yaml").exists()


def test_a_rank_killed_with_kill_9_fails_the_run_naming_it(ws):
    data = save_qa_dataset(ws)
    run = _submit(ws, data.id, processes=2, micro_batch=1, max_steps=LONG)
    running = _until_training(ws, run.id)
    ranks = _ranks(running)
    os.kill(ranks[1].pid, signal.SIGKILL)

    done = scheduler.wait_for(ws, run.id, timeout=120, poll=0.3)
    assert done.status == "failed"
    assert "Rank 1 of 2 died" in done.error and "SIGKILL" in done.error, done.error
    assert "Resume the run" in done.fix
    assert _gone(running.pid, ranks, timeout=10)  # rank 0 did not hang: the agent tore it down


def test_the_queue_gives_a_run_of_n_processes_n_free_gpus_first_in_first_out(ws):
    """Slot numbers stand for GPUs here: the claim is bookkeeping in SQLite, the same with or without them."""
    data = save_qa_dataset(ws)
    cfg = build_config("demo-tiny", data.id, "quick-test")
    first = submit.submit(ws, cfg, force=True)  # one process
    wide = submit.submit(ws, cfg.model_copy(update={"processes": 2}), force=True)
    last = submit.submit(ws, cfg, force=True)
    assert wide.launcher == "accelerate"

    assert scheduler.claim_next(ws, 1, [0, 1]).id == first.id  # GPU 1 taken by a one-process run
    assert scheduler.claim_next(ws, 0, [0, 1]) is None  # `wide` needs 2 free GPUs: it waits, `last` too
    assert runs.get_run(ws, last.id).status == "queued"
    runs.transition(ws, first.id, "failed", expect=("running",))  # GPU 1 free again
    claimed = scheduler.claim_next(ws, 0, [0, 1, 2])
    assert claimed.id == wide.id and claimed.devices == "0,1"
    assert claimed.attempt().devices == (0, 1)
    assert scheduler.claim_next(ws, 1, [0, 1, 2]) is None  # held by `wide`
    side = scheduler.claim_next(ws, 2, [0, 1, 2])  # one run per GPU, side by side
    assert side.id == last.id and side.gpu == 2 and side.devices is None
    env = accelerate_launcher.AccelerateLauncher().environment(claimed.attempt())
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_the_fit_check_chooses_ddp_when_one_gpu_holds_the_run_else_fsdp():
    model = "meta-llama/Llama-3.1-8B-Instruct"
    shape = catalog_entry(model).shape
    cfg = build_config(model, "ds", "balanced", {"processes": 2})
    stats = {"rows": 1000, "mean_tokens": 300, "max_tokens": 2048}

    def gpu(free_gb):
        return {"index": 0, "name": "NVIDIA L4", "memory_free_gb": free_gb, "memory_total_gb": free_gb}

    alone = estimate(shape, cfg, stats, gpu(80))
    ddp = spread(alone, cfg, shape, gpu(80))
    assert ddp.strategy == "ddp" and ddp.fits and ddp.peak_bytes == alone.peak_bytes
    assert ddp.strategy_reason.startswith("2 GPUs: each GPU holds a full copy of the model and trains on its share")
    assert "(DDP over 2 GPUs)" in ddp.strategy_reason and ddp.strategy_reason in ddp.summary()
    assert ddp.steps == -(-alone.steps // 2)

    small = alone.peak_bytes / 1024**3 * 0.9  # a GPU that cannot hold the whole run
    tight = spread(estimate(shape, cfg, stats, gpu(small)), cfg, shape, gpu(small))
    assert tight.strategy == "fsdp" and tight.strategy_reason.startswith(
        "2 GPUs: the model is split across the GPUs because it does not fit one")
    assert "(FSDP over 2 GPUs" in tight.strategy_reason
    assert "4-bit weights stored in the compute dtype" in tight.strategy_reason
    assert tight.peak_bytes < alone.peak_bytes and tight.fits and not tight.changes


def test_studio_train_processes_shows_the_strategy_and_refuses_more_than_the_machine_has(ws, capsys):
    from studio.cli import main

    data = save_qa_dataset(ws)
    base = ["--home", str(ws.home), "train", "--data", data.id, "--model", "demo-tiny", "--preset", "quick-test"]
    assert main([*base, "--processes", "2", "--dry-run"]) in (0, None)
    shown = capsys.readouterr().out
    assert "processes: 2" in shown and "2 processes on this computer: each holds a full copy of the model" in shown
    assert "(DDP over 2 CPU processes, gloo)" in shown

    too_many = (os.cpu_count() or 1) + 1
    assert main([*base, "--processes", str(too_many)]) == 2
    said = capsys.readouterr()
    assert f"asks for {too_many} processes" in said.out + said.err and "--processes" in said.out + said.err
    with pytest.raises(InvalidInput, match="processes"):  # the plain Python call says the same
        submit.submit(ws, build_config("demo-tiny", data.id, "quick-test", {"processes": too_many}), force=True)
    assert runs.list_runs(ws) == []


def test_the_train_tab_shows_the_processes_control_only_with_several_gpus(ws):
    import gradio as gr

    from studio.core.system import gpus
    from studio.ui import train_tab

    with gr.Blocks() as blocks:
        train_tab.build(ws)
    control = next(b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == "train-processes")
    assert control.visible is (len(gpus()) > 1)  # this machine: no GPU, so hidden
    data = save_qa_dataset(ws)
    values = train_tab.preset_values("quick-test")
    line = train_tab.show_command(data.id, "demo-tiny", "quick-test", "", *values, processes=2)
    assert "--processes 2" in line and "processes=" not in line
    text, _ = train_tab.check_fit(ws, data.id, "demo-tiny", "quick-test", *values, processes=2)
    assert "2 processes on this computer: each holds a full copy of the model" in text  # plain words first
    assert "(DDP over 2 CPU processes, gloo). The memory above is for all the processes together." in text


def test_the_rank_killed_by_a_signal_is_named_not_the_one_that_saw_it_vanish(tmp_path):
    """torchrun takes the lowest rank as the 'root cause' when two fail within one second; the studio names
    the rank that was killed (the one that exited with an error only lost its peer). The text is torch's own."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from studio.core.files import write_json_atomic
    from studio.training.folder import RunFolder
    from studio.training.launchers.base import Attempt

    folder = RunFolder(tmp_path)
    write_json_atomic(folder.manifest, {"distributed": {"processes": 2, "strategy": "ddp"}})
    report = ChildFailedError("studio.training", {
        0: ProcessFailure(local_rank=0, pid=100, exitcode=1, error_file=str(tmp_path / "none")),
        1: ProcessFailure(local_rank=1, pid=101, exitcode=-9, error_file=str(tmp_path / "none"))})
    folder.log.write_text("=== attempt 1 started x ===\n...\ntorch.distributed.elastic.multiprocessing.errors."
                          f"ChildFailedError: {report}\n")
    attempt = Attempt(run_id="r", folder=folder, slot=-1, number=1)
    reason = accelerate_launcher.AccelerateLauncher().failure(attempt)
    assert reason.startswith("Rank 1 of 2 died (killed by SIGKILL") and "DDP run" in reason
    folder.log.write_text("=== attempt 1 started x ===\nValueError: a bad batch\nChildFailedError: "
                          + str(ChildFailedError("studio.training", {0: ProcessFailure(
                              local_rank=0, pid=100, exitcode=1, error_file=str(tmp_path / "none"))})))
    assert accelerate_launcher.AccelerateLauncher().failure(attempt) is None  # rank 0's status.json says why
    with folder.log.open("a") as log:  # an earlier attempt's failure is not the next one's
        log.write(f"\nChildFailedError: {report}\n=== attempt 2 started y ===\nstill starting\n")
    assert accelerate_launcher.AccelerateLauncher().failure(Attempt("r", folder, -1, 2)) is None


def test_the_scaling_benchmark_reads_tokens_per_second_from_step_events():
    """bench/multi_gpu.py's arithmetic (its runs need GPUs to mean anything; it ran once here on the CPU)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import multi_gpu

    events = [{"type": "start", "time": 0.0}] + [
        {"type": "step", "step": s, "time": 10.0 + s, "tokens_seen": 1000 * s} for s in range(1, 11)]
    tps, measured = multi_gpu.tokens_per_second(events, warmup=5)  # steps 5..10: 5,000 tokens in 5 s
    assert tps == pytest.approx(1000.0) and measured == 5
    assert multi_gpu.tokens_per_second(events[:2], warmup=1) == (None, 0)
    results = multi_gpu.efficiency([{"processes": 1, "tokens_per_second": 1000.0},
                                    {"processes": 2, "tokens_per_second": 1800.0}])
    assert results[1]["speedup"] == 1.8 and results[1]["efficiency"] == 0.9

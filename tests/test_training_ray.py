"""Runs on a Ray cluster (issue 15): a real Ray head on 127.0.0.1 (CPU only), started once for this module and
stopped at the end. A demo-tiny run goes there as a Ray job through the job submission API; its progress and
adapter come back into the local run folder through the job's log (no shared storage), and the adapter answers
in Chat; cancel stops the job; an unreachable address is refused before anything is queued."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import free_port, save_qa_dataset

ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'llmops-studio[ray]' (make test does)")

pytestmark = pytest.mark.slow
FAST = {"max_steps": 8, "eval_every": 4, "save_every": 4}


@pytest.fixture(scope="module")
def ray_head():
    """`ray start --head --block` in a session of its own; stopped by its process group and its descendants' pids,
    never by `ray stop`, which would stop every Ray on this machine."""
    import psutil

    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must stay under 107 bytes
    port, dashboard = free_port(), free_port()
    ray_cli = str(Path(sys.executable).with_name("ray"))
    log = open(Path(temp) / "head.log", "wb")  # noqa: SIM115 - closed at the end
    head = subprocess.Popen(
        [ray_cli, "start", "--head", "--block", "--num-cpus", "2", "--num-gpus", "0", "--include-dashboard=true",
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--port", str(port),
         "--node-ip-address", "127.0.0.1", "--temp-dir", temp, "--disable-usage-stats"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        # the jobs run `python` of the node's PATH: this venv's, as a cluster image has the studio's dependencies
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0",
             "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"},
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        from studio.training import cluster

        deadline, problem = time.monotonic() + 300, None
        while True:  # up, and its job agent takes jobs (a few seconds after the dashboard answers)
            try:
                jobs = cluster.client(address)
                job = jobs.submit_job(entrypoint="python -c pass")
                while not jobs.get_job_status(job).is_terminal():
                    time.sleep(0.3)
                break
            except Exception as exc:
                problem = exc
                if head.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the Ray head did not take a job ({problem!r}):\n"
                                + (Path(temp) / "head.log").read_text()[-2000:])
                time.sleep(1)
        yield address
    finally:
        try:  # raylet's workers lead sessions of their own: found as the head's descendants, not its group
            family = psutil.Process(head.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            family = []
        for sig, grace in ((signal.SIGTERM, 3), (signal.SIGKILL, 20)):  # nothing to save: a test's head
            try:
                os.killpg(head.pid, sig)
            except ProcessLookupError:
                break
            try:
                head.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        for proc in family:  # by pid, only what this head started
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _submit(ws, address, **overrides):
    from studio.training import submit
    from studio.training.presets import build_config

    version = save_qa_dataset(ws)
    cfg = build_config("demo-tiny", version.id, "quick-test", {**FAST, **overrides})
    return submit.submit(ws, cfg, preset="quick-test", launcher="ray", launch_options={"ray_address": address})


def test_a_run_goes_to_the_cluster_and_its_adapter_answers_in_chat(ray_head, ws):
    from studio.serving import endpoints
    from studio.serving.chat import Settings, build_messages, chat_body, open_target
    from studio.serving.client import complete_chat
    from studio.training import cluster, scheduler

    run = _submit(ws, ray_head)
    assert run.launcher == "ray" and run.folder.read_manifest()["launch"]["address"] == ray_head
    run = scheduler.wait_for(ws, run.id, timeout=300)
    assert run.status == "succeeded", (run.error, "\n".join(run.folder.tail_log(30)))
    assert run.launch_ref and run.launch_ref.startswith(f"studio-{run.id}-1-")
    assert cluster.client(ray_head).get_job_status(run.launch_ref).value == "SUCCEEDED"
    # everything came back into the local folder, through the job's log only
    events = run.folder.read_events()
    steps = [e["step"] for e in events if e["type"] == "step"]
    assert steps == list(range(1, FAST["max_steps"] + 1)) and events[-1]["type"] == "end"
    assert run.step == FAST["max_steps"] and run.loss is not None
    assert run.folder.has_adapter() and (run.folder.adapter / "adapter_model.safetensors").stat().st_size > 0
    assert run.folder.read_status()["state"] == "succeeded"
    manifest = run.folder.read_manifest()
    assert manifest["dataset"]["path"].startswith(str(ws.home)) and manifest["libraries"]["torch"]
    assert "run succeeded at step 8" in "\n".join(run.folder.tail_log(40))
    assert "@@studio" not in run.folder.log.read_text()
    # Chat: the adapter that came back is served and answers, as for a local run
    target = open_target(ws, run.id)
    try:
        assert target.tuned == run.id
        body = chat_body(run.id, build_messages([], "How do I reset my password?"),
                         Settings(max_new_tokens=12, temperature=0.0).check(), stream=False)
        assert complete_chat(target.url, body).strip()
    finally:
        endpoints.stop_endpoint(ws, target.endpoint_id)


def test_cancel_mid_run_stops_the_job(ray_head, ws):
    from studio.training import cluster, scheduler
    from studio.training.runs import get_run

    run = _submit(ws, ray_head, max_steps=5000, eval_every=5000, save_every=5000)
    deadline = time.monotonic() + 240
    while not any(e["type"] == "step" for e in run.folder.read_events()):  # training is under way there
        assert time.monotonic() < deadline, "\n".join(run.folder.tail_log(30))
        scheduler.schedule(ws)
        time.sleep(0.5)
    run = scheduler.cancel(ws, run.id, wait=120)
    assert run.status == "cancelled", (run.status, run.error, "\n".join(run.folder.tail_log(20)))
    assert cluster.client(ray_head).get_job_status(get_run(ws, run.id).launch_ref).value == "STOPPED"
    assert 0 < run.step < 5000
    # stopped gracefully: the adapter saved at the cancel came back too
    assert run.folder.has_adapter() and run.folder.read_status()["state"] == "cancelled"


def test_an_unreachable_cluster_is_refused_before_anything_is_queued(ws, capsys):
    from studio.cli import main
    from studio.training.cluster import ClusterUnreachable
    from studio.training.runs import list_runs

    address = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(ClusterUnreachable, match=f"Ray cluster at {address} cannot be reached") as caught:
        _submit(ws, address)
    assert "8265" in caught.value.fix
    assert list_runs(ws) == [] and not any(ws.runs_dir.iterdir())
    with ws.db() as db:
        dataset = next(iter(db["datasets"].rows))["id"]
    code = main(["train", "--data", dataset, "--model", "demo-tiny", "--preset", "quick-test",
                 "--ray-address", address.removeprefix("http://")])  # host:port is read as the dashboard
    assert code == 2 and "cannot be reached" in capsys.readouterr().err
    assert list_runs(ws) == [] and not any(ws.runs_dir.iterdir())

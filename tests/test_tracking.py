"""Experiment tracking against a real MLflow tracking server (SQLite backend, artifacts in a temporary folder,
127.0.0.1, stopped at the end): a demo-tiny run logs its config, its loss per step, its dataset version and its
adapter; a local publish registers a model version tagged with the endpoint's URL and "verification passed";
a server that is down is a warning, never a failure. TensorBoard: the run folder's event files hold the loss,
read back with TensorBoard's own reader."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import mlflow  # the mlflow extra, installed by `make test` (pyproject's dev extra)
import pytest
from conftest import free_port, save_qa_dataset

pytestmark = pytest.mark.slow
STEPS = 6  # a few steps are enough to see them logged; the publish uses the session's fully trained run


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on a free port of 127.0.0.1, in a process group of its own, killed at the end."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", str(root / "artifacts"), "--serve-artifacts",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner: one process less
    with open(root / "server.log", "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start:\n{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, demo_model_source, mlflow_server):
    """A demo-tiny quick-test run of a few steps in a workspace whose System tab setting points at the server."""
    from studio.core.workspace import Workspace
    from studio.training import scheduler, submit, tracking
    from studio.training.presets import build_config

    ws = Workspace.open(tmp_path_factory.mktemp("tracked") / "studio-home")
    (ws.models_dir / "demo-tiny").symlink_to(demo_model_source, target_is_directory=True)
    assert tracking.set_uri(ws, mlflow_server) == mlflow_server  # checked against the server, then stored
    version = save_qa_dataset(ws)
    cfg = build_config("demo-tiny", version.id, "quick-test", {"max_steps": STEPS, "eval_every": 3, "save_every": 3})
    run = scheduler.wait_for(ws, submit.submit(ws, cfg, preset="quick-test").id, timeout=300)
    assert run.status == "succeeded", "\n".join(run.folder.tail_log(30))
    return ws, run, version


def test_a_run_logs_its_config_loss_dataset_and_adapter_to_mlflow(tracked_run, mlflow_server):
    ws, run, version = tracked_run
    manifest = run.folder.read_manifest()
    entry = manifest["tracking"]["mlflow"]
    assert entry["uri"] == mlflow_server and entry["experiment"] == "llmops-studio"

    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    logged = client.get_run(entry["run_id"])
    assert logged.info.run_name == run.id and logged.info.status == "FINISHED"
    assert logged.data.tags["studio.run_id"] == run.id
    params = logged.data.params
    assert params["base_model"] == "demo-tiny" and params["dataset_id"] == version.id
    assert params["max_steps"] == str(STEPS) and params["lora_r"] == "16" and params["studio.preset"] == "quick-test"

    losses = client.get_metric_history(entry["run_id"], "loss")
    steps = [e["step"] for e in run.folder.read_events() if e["type"] == "step"]
    assert sorted(m.step for m in losses) == steps and steps[-1] == STEPS  # every logged step, with its value
    by_step = {e["step"]: e["loss"] for e in run.folder.read_events() if e["type"] == "step"}
    assert all(abs(m.value - by_step[m.step]) < 1e-6 for m in losses)
    evals = [e for e in run.folder.read_events() if e["type"] == "eval"]
    assert [m.step for m in client.get_metric_history(entry["run_id"], "eval_loss")] == [e["step"] for e in evals]
    for name in ("learning_rate", "tokens_per_second", "process_memory_gb"):
        assert client.get_metric_history(entry["run_id"], name), name

    inputs = logged.inputs.dataset_inputs
    train_input = next(i for i in inputs if i.dataset.name == f"{version.name} (train)")
    assert train_input.dataset.digest == version.content_hash[:16]
    assert {t.key: t.value for t in train_input.tags}["mlflow.data.context"] == "training"

    adapter = {a.path for a in client.list_artifacts(entry["run_id"], "adapter")}
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors", "adapter/README.md"} <= adapter

    # `studio runs show` says where the run is in MLflow
    from studio.cli.runs import describe

    data, text = describe(ws, run.id, 0)
    assert f"mlflow    run {entry['run_id']}" in text and data["tracking"]["mlflow"]["run_id"] == entry["run_id"]


def test_the_run_folder_holds_tensorboard_events_with_the_loss(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run, _ = tracked_run
    board = Path(run.path) / "tensorboard"
    assert list(board.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(board)).Reload()
    loss = events.Scalars("train/loss")
    by_step = {e["step"]: e["loss"] for e in run.folder.read_events() if e["type"] == "step"}
    assert [s.step for s in loss] == sorted(by_step)
    assert all(abs(s.value - by_step[s.step]) < 1e-4 for s in loss)
    assert [s.step for s in events.Scalars("eval/loss")] == [e["step"] for e in run.folder.read_events()
                                                               if e["type"] == "eval"]


def test_a_local_publish_registers_a_model_version(trained_run, mlflow_server, monkeypatch):
    """The session's trained run (trained before MLflow was set: logged at publish time), published locally."""
    from studio.publishing import deployments, pipeline
    from studio.publishing.source import finished_run
    from studio.serving import endpoints

    ws, run_id = trained_run.ws, trained_run.run_id
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    before = {ep.id for ep in endpoints.list_endpoints(ws)}
    try:
        dep = pipeline.publish(ws, run_id, "local", {"name": "tracked", "merged": False})
    finally:
        for ep in endpoints.list_endpoints(ws, include_stopped=False):
            if ep.kind == "local" and ep.id not in before:
                endpoints.stop_endpoint(ws, ep.id)
    assert dep.status == "healthy" and dep.verdict == "passed", dep.verification.get("summary")
    tracked = dep.options["mlflow"]
    name = finished_run(ws, run_id).adapter_name
    assert tracked["registered_model"] == name and "warning" not in tracked, tracked

    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    version = client.get_model_version(name, tracked["version"])
    assert version.tags["verification"] == "passed" and version.tags["endpoint_url"] == dep.url
    assert version.tags["deployment_id"] == dep.id and version.tags["studio.run_id"] == run_id
    assert version.source == f"runs:/{version.run_id}/adapter"
    logged = client.get_run(version.run_id)  # the run had no MLflow run: its config and adapter are logged now
    assert logged.info.run_name == run_id and logged.data.params["base_model"] == "demo-tiny"
    assert "adapter/adapter_config.json" in {a.path for a in client.list_artifacts(version.run_id, "adapter")}
    assert [a.path for a in client.list_artifacts(version.run_id, "model_card")] == ["model_card/README.md"]
    assert f"registered model '{name}' version {tracked['version']}" in deployments.format_deployment(dep)


def test_a_tracking_server_that_is_down_is_a_warning_not_a_failure(tracked_run, monkeypatch, tmp_path):
    """The publish's registration and the training process's MLflow run, both against a closed port."""
    from studio.core.errors import ResourceError
    from studio.publishing import deployments, mlflow_registry
    from studio.training import tracking
    from studio.training.folder import RunFolder
    from studio.training.reporting import MlflowRun

    ws, run, _ = tracked_run
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ResourceError, match="did not answer"):
        tracking.set_uri(ws, dead)  # refused in the System tab, with the reason
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with ws.db() as db:  # the stored setting wins over the variable: clear it for this test
        db["settings"].delete(tracking.SETTING)
    dep = deployments.create(ws, run_id=run.id, target="local", slot="local:down", model_version="v")
    result = mlflow_registry.register(ws, dep)
    assert result["uri"] == dead and "was not registered" in result["warning"]

    folder = RunFolder(tmp_path)
    folder.manifest.write_text(run.folder.manifest.read_text())
    tracker = MlflowRun(folder, {"uri": dead})
    tracker.start(run.config, run.folder.read_manifest())  # no exception: one notice
    tracker.event({"type": "step", "step": 1, "loss": 1.0})
    tracker.finish("succeeded")
    notices = [e["message"] for e in folder.read_events() if e["type"] == "notice"]
    assert len(notices) == 1 and dead in notices[0] and "the run goes on" in notices[0]

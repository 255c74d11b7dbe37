"""The studio's endpoints: started for a trained run, listed, stopped (also by training's admission
control, with the reason kept), killed then marked failed and cleaned, re-adopted after a restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from device import CUDA

from studio.core.errors import Conflict, InvalidInput, ModelUnavailable, NotFound
from studio.serving import adapters, endpoints, launch

pytestmark = pytest.mark.slow


def studio_cli(home, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "studio", *args, "--home", str(home)], capture_output=True,
                          text=True, timeout=300)


def test_run_endpoint_serves_base_and_tuned_then_admission_control_stops_it(trained_run):
    from studio.evaluation.scores import token_f1
    from studio.serving.chat import Settings, build_messages, chat_body
    from studio.serving.client import client, complete_chat, served_models

    ws, run_id = trained_run.ws, trained_run.run_id
    ep = launch.start_for_run(ws, run_id)
    try:
        assert ep.status == "ready" and ep.run_id == run_id and ep.url.startswith("http://127.0.0.1:")
        assert served_models(ep.url) == ["demo-tiny", run_id]
        assert launch.start_for_run(ws, run_id).id == ep.id  # a live one is reused, not doubled
        assert launch.start_for_run(ws, run_id, port=ep.port, quantize=ep.options["quantize"]).id == ep.id
        with pytest.raises(Conflict, match=f"already served by .* so port {ep.port + 1} cannot apply") as said:
            launch.start_for_run(ws, run_id, port=ep.port + 1)  # reused as it runs: the option is not dropped
        assert f"studio endpoints stop {ep.id}" in said.value.fix
        assert endpoints.find_endpoint_for_run(ws, run_id).id == ep.id
        messages = build_messages([], "How do I reset my password?")
        settings = Settings(max_new_tokens=40)
        tuned = complete_chat(ep.url, chat_body(run_id, messages, settings, stream=False))
        base = complete_chat(ep.url, chat_body(ep.base_name, messages, settings, stream=False))
        assert tuned != base
        # the tuned model learned the answer and stops after it (the saved template's <|im_end|> is an eos)
        trained = "Open the sign-in page, choose Forgot password and follow the link in your email."
        assert token_f1(tuned, trained) > 0.8
        out = client(ep.url).chat_completion(messages, model=run_id, max_tokens=40, temperature=0)
        assert out.choices[0].finish_reason == "stop" and out.usage.completion_tokens < 40
    finally:
        stopped = endpoints.stop_local_endpoints(ws, "stopped to free GPU memory for run run-next")
    assert stopped == [ep.id]
    after = endpoints.get_endpoint(ws, ep.id)
    assert after.status == "stopped" and after.error == "stopped to free GPU memory for run run-next"
    assert not psutil.pid_exists(ep.pid) or psutil.Process(ep.pid).status() == psutil.STATUS_ZOMBIE
    assert endpoints.find_endpoint_for_run(ws, run_id) is None


def test_killed_endpoint_is_marked_failed_with_its_log_then_removed(ws, tmp_path, demo_model_source):
    from test_serve_support import make_adapter

    adapter = make_adapter(demo_model_source, tmp_path / "adapter", seed=3)
    ep = launch.start_endpoint(ws, "demo-tiny", {"support": str(adapter)}, name="to-kill")
    assert endpoints.get_endpoint(ws, "to-kill").status == "ready"
    os.killpg(ep.pid, signal.SIGKILL)
    # SIGKILL reaches each member of the group on its own time: the shepherd may be a zombie while the server,
    # still unmapping its model, is not; the endpoint is failed once nothing of the group runs
    deadline = time.monotonic() + 10
    while (listed := endpoints.list_endpoints(ws)[0]).status != "failed":
        assert time.monotonic() < deadline, f"still {listed.status} 10 s after SIGKILL to its process group"
        time.sleep(0.05)
    assert listed.status == "failed" and "ended unexpectedly" in listed.error and "serving demo-tiny" in listed.error
    assert endpoints.list_endpoints(ws, include_stopped=False) == []
    with pytest.raises(ModelUnavailable, match="failed"):
        from studio.serving.chat import open_target

        open_target(ws, ep.id)
    endpoints.remove_endpoint(ws, ep.id)
    assert endpoints.list_endpoints(ws) == [] and not endpoints.endpoint_dir(ws, ep.id).exists()


def test_endpoint_outlives_the_studio_process_and_is_readopted(ws, tmp_path, demo_model_source):
    """Started by one studio process (the CLI, which then exits), used and stopped by others."""
    from test_serve_support import make_adapter

    adapter = make_adapter(demo_model_source, tmp_path / "adapter", seed=4)
    started = studio_cli(ws.home, "endpoints", "start", "--model", "demo-tiny", "--adapter", f"faq={adapter}",
                         "--name", "kept", "--json")
    assert started.returncode == 0, started.stderr
    record = json.loads(started.stdout)
    assert record["status"] == "ready" and psutil.pid_exists(record["pid"])
    # a new studio (this process) finds it alive, with the same pid, and talks to it
    [adopted] = endpoints.list_endpoints(ws)
    assert (adopted.id, adopted.status, adopted.pid) == (record["id"], "ready", record["pid"])
    from studio.serving.chat import open_target

    target = open_target(ws, "kept")
    assert target.models == ["demo-tiny", "faq"] and target.tuned == "faq"
    asked = studio_cli(ws.home, "chat", "ask", "kept", "Where is my order?", "--max-new-tokens", "5", "--json")
    assert asked.returncode == 0, asked.stderr
    assert json.loads(asked.stdout)["model"] == "faq"
    listed = studio_cli(ws.home, "endpoints", "list")
    assert record["id"] in listed.stdout and "ready" in listed.stdout
    stopped = studio_cli(ws.home, "endpoints", "stop", "kept")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert endpoints.get_endpoint(ws, record["id"]).status == "stopped"


def test_start_refusals_are_clear(ws, tmp_path):
    with pytest.raises(NotFound, match="no run 'run-missing'"):
        launch.start_for_run(ws, "run-missing")
    with pytest.raises(InvalidInput, match="neither a run id nor a folder"):
        launch.start_endpoint(ws, "demo-tiny", {"x": str(tmp_path)})
    with pytest.raises(InvalidInput, match="cannot name an adapter"):
        launch.start_endpoint(ws, "demo-tiny", {"base": str(tmp_path)})
    with pytest.raises(InvalidInput, match="not NAME=RUN"):
        adapters.parse_adapter_specs(["just-a-path"])
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(Conflict, match="already in use"):
            launch.start_endpoint(ws, "demo-tiny", port=busy.getsockname()[1])
    assert endpoints.list_endpoints(ws) == []  # nothing half-registered


def test_four_bit_serving_on_cuda_and_its_refusal_elsewhere(ws):
    """On CUDA the base model is served in NF4 4-bit and answers; without CUDA it is refused with the reason."""
    if not CUDA:
        with pytest.raises(ModelUnavailable, match="4-bit serving needs a CUDA GPU"):
            launch.start_endpoint(ws, "demo-tiny", quantize="4bit")
        [failed] = endpoints.list_endpoints(ws)
        assert failed.status == "failed" and "4-bit serving needs a CUDA GPU" in failed.error
        return
    import httpx

    ep = launch.start_endpoint(ws, "demo-tiny", quantize="4bit")
    try:
        assert ep.status == "ready"
        info = httpx.get(f"{ep.url}/info", timeout=30).json()
        assert info["quantize"] == "4bit" and info["device"].startswith("cuda"), info
        reply = httpx.post(f"{ep.url}/generate", json={"inputs": "Hello", "parameters": {"max_new_tokens": 4}},
                           timeout=60)
        assert reply.status_code == 200 and "generated_text" in reply.json()
    finally:
        endpoints.stop_endpoint(ws, ep.id)


def test_remote_endpoint_registration_checks_the_server(ws):
    with pytest.raises(InvalidInput, match="not an http"):
        endpoints.register_remote(ws, "ftp://somewhere")
    from conftest import free_port

    with pytest.raises(ModelUnavailable, match="No OpenAI-compatible model list"):
        endpoints.register_remote(ws, f"http://127.0.0.1:{free_port()}")
    ep = endpoints.register_remote(ws, "http://tgi.example:8080/v1/", name="prod", check=False)
    assert ep.url == "http://tgi.example:8080" and ep.kind == "remote"
    with pytest.raises(Conflict, match="remote endpoint"):
        endpoints.stop_endpoint(ws, "prod")
    endpoints.remove_endpoint(ws, "prod")
    assert endpoints.list_endpoints(ws) == []


def test_two_starts_of_the_same_runs_endpoint_at_once_run_one_process(trained_run):
    """The Chat tab's two columns (or two browsers) asking for the run's endpoint at the same moment."""
    import threading

    ws, run_id = trained_run.ws, trained_run.run_id
    for ep in endpoints.list_endpoints(ws, include_stopped=False):  # an earlier test's endpoint for this run
        if run_id in ep.adapters:
            endpoints.stop_endpoint(ws, ep.id)
    barrier, got = threading.Barrier(2), []

    def start():
        barrier.wait()
        got.append(launch.start_for_run(ws, run_id))

    threads = [threading.Thread(target=start) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    try:
        assert len(got) == 2 and got[0].id == got[1].id and got[0].status == "ready"
        live = [ep for ep in endpoints.list_endpoints(ws, include_stopped=False) if run_id in ep.adapters]
        assert [ep.id for ep in live] == [got[0].id]
        with ws.db() as db:  # no second process was started and then left over
            assert db.execute("SELECT count(*) FROM endpoints WHERE run_id = ? AND status = 'failed'",
                              [run_id]).fetchone()[0] == 0
    finally:
        endpoints.stop_endpoint(ws, got[0].id)

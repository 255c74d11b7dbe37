"""TGI in Docker: the exact `docker run` argv and compose file for several option sets, detecting a
Docker engine, the no-Docker path (command + compose to copy, verified once you start it) and the
Docker path through a stand-in `docker` executable that starts the embedded endpoint for `run`."""

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
from test_publish_helpers import config_only_adapter, register_run

from studio.core.errors import InvalidInput
from studio.publishing import deployments, pipeline
from studio.publishing.docker import TgiLaunch, compose_file, docker_argv, engine_status, tgi_args
from studio.serving import endpoints, launch

IMAGE = "ghcr.io/huggingface/text-generation-inference:3.3.6"


def test_docker_argv_merged_defaults():
    launch = TgiLaunch(export_dir="/ws/exports/exp-1/model", mount_dir="/ws/exports", container="studio-tgi-published",
                       max_input_tokens=512, max_total_tokens=832)
    assert docker_argv(launch) == [
        "docker", "run", "-d", "--name", "studio-tgi-published", "--gpus", "all", "--shm-size", "1g",
        "-p", "127.0.0.1:8080:80", "-v", "/ws/exports:/data", IMAGE,
        "--model-id", "/data/exp-1/model", "--max-input-tokens", "512", "--max-total-tokens", "832",
        "--usage-stats", "off"]


def test_docker_argv_adapter_on_a_hub_base_quantized_on_one_gpu():
    launch = TgiLaunch(export_dir="/ws/exports/exp-2/model", mount_dir="/ws/exports", container="studio-tgi-a",
                       max_input_tokens=192, max_total_tokens=320, image="my/tgi", tag="latest", gpus="device=1",
                       host="", port=9000, quantize="bitsandbytes-nf4", base_model="Qwen/Qwen2.5-0.5B-Instruct",
                       adapter_name="run-x", env=("HF_TOKEN",))
    assert docker_argv(launch) == [
        "docker", "run", "-d", "--name", "studio-tgi-a", "--gpus", "device=1", "--shm-size", "1g",
        "-p", "9000:80", "-v", "/ws/exports:/data", "-e", "HF_TOKEN", "my/tgi:latest",
        "--model-id", "Qwen/Qwen2.5-0.5B-Instruct", "--max-input-tokens", "192", "--max-total-tokens", "320",
        "--usage-stats", "off", "--lora-adapters", "run-x=/data/exp-2/model", "--quantize", "bitsandbytes-nf4"]
    compose = yaml.safe_load(compose_file(launch))["services"]["tgi"]
    assert compose["command"] == tgi_args(launch) and compose["ports"] == ["9000:80"]
    assert compose["environment"] == ["HF_TOKEN"] and compose["shm_size"] == "1g"
    assert compose["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "capabilities": ["gpu"], "device_ids": ["1"]}]


def test_docker_argv_adapter_on_a_local_base_without_gpus():
    launch = TgiLaunch(export_dir="/ws/exports/exp-3/model", mount_dir="/ws/exports", container="studio-tgi-cpu",
                       max_input_tokens=768, max_total_tokens=1024, gpus="", port=8081,
                       base_model="/ws/models/demo-tiny", adapter_name="run-y")
    assert docker_argv(launch) == [
        "docker", "run", "-d", "--name", "studio-tgi-cpu", "--shm-size", "1g", "-p", "127.0.0.1:8081:80",
        "-v", "/ws/exports:/data", "-v", "/ws/models/demo-tiny:/data/base-model:ro", IMAGE,
        "--model-id", "/data/base-model", "--max-input-tokens", "768", "--max-total-tokens", "1024",
        "--usage-stats", "off", "--lora-adapters", "run-y=/data/exp-3/model"]
    compose = yaml.safe_load(compose_file(launch))["services"]["tgi"]
    assert compose == {"image": IMAGE, "container_name": "studio-tgi-cpu", "command": tgi_args(launch),
                       "ports": ["127.0.0.1:8081:80"], "shm_size": "1g",
                       "volumes": ["/ws/exports:/data", "/ws/models/demo-tiny:/data/base-model:ro"]}


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
def test_without_docker_the_command_is_given_and_verified_once_started(trained_run, tmp_path, monkeypatch):
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

    # the user starts TGI with that command; the embedded endpoint on the same folder stands in for it
    folder = str(ws.exports_dir / export_dir.removeprefix("/data/"))
    server = launch.start_endpoint(ws, folder, None, port=port, name="stand-in-tgi", timeout=120)
    try:
        checked = pipeline.reverify(ws, "tgi-docker:manual")
    finally:
        endpoints.stop_endpoint(ws, server.id)
    assert checked.id == dep.id and checked.status == "healthy" and checked.verdict == "passed"


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
        name = args[args.index("--name") + 1]
        port = args[args.index("-p") + 1].split(":")[-2]
        mount = args[args.index("-v") + 1].split(":")[0]
        image_at = next(i for i, a in enumerate(args) if a.startswith("ghcr.io/"))
        tgi = args[image_at + 1:]
        model = tgi[tgi.index("--model-id") + 1].replace("/data", mount, 1)
        argv = [sys.executable, "-m", "studio.serving.server", "--model", model, "--port", port,
                "--max-total-tokens", tgi[tgi.index("--max-total-tokens") + 1]]
        log = open(state / "server.log", "ab")
        proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
        pidfile(name).write_text(str(proc.pid))
        print("f00dcafe" * 8)
"""


@pytest.mark.slow
def test_with_docker_the_container_is_started_waited_for_and_verified(trained_run, tmp_path, monkeypatch):
    state = tmp_path / "docker-state"
    state.mkdir()
    monkeypatch.setenv("PATH", fake_bin(tmp_path, FAKE_DOCKER) + os.pathsep + os.environ["PATH"])
    monkeypatch.setenv("FAKE_DOCKER_STATE", str(state))
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
    assert dep.status == "healthy" and dep.verdict == "passed" and dep.url == f"http://127.0.0.1:{port}"
    assert deployments.live_in_slot(ws, "tgi-docker:engine").id == dep.id
    assert endpoints.get_endpoint(ws, dep.url, refresh=False).name == "tgi-docker:engine"  # the Chat tab offers it

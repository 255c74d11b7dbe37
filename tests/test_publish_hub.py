"""The Hub and Inference Endpoint targets against a local HTTP server that speaks the part of the Hub
API huggingface_hub calls (whoami, create repo, preupload, commit, tree; Inference Endpoints v2),
recording every request. No network: the Hub client is pointed here with `endpoint=` and the
Inference Endpoints API constant."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
from device import PUBLISH_VERDICTS

from studio.core.errors import InvalidInput
from studio.publishing import deployments, pipeline
from studio.serving import endpoints, launch

GOOD_TOKEN = "hf_planted_secret_3f9c2a7e"  # unique: a grep of every file the studio wrote must not find it


class FakeHub:
    """Repos as {repo_id: {path: bytes}}, commits as a list, endpoints as raw API dicts."""

    def __init__(self):
        self.requests: list[dict] = []
        self.repos: dict[str, dict[str, bytes]] = {}
        self.private: dict[str, bool] = {}
        self.commits: list[str] = []
        self.endpoints: dict[str, dict] = {}
        self.endpoint_url = "http://127.0.0.1:1"  # what a running endpoint reports as its URL
        self.polls_until_running = 2
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def paths(self, method: str | None = None) -> list[str]:
        return [r["path"] for r in self.requests if method in (None, r["method"])]

    def handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, status: int, body=None, content_type="application/json"):
                data = json.dumps(body).encode() if content_type == "application/json" else (body or b"")
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def handle_any(self, method: str):
                url = urlparse(self.path)
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                auth = self.headers.get("Authorization", "")
                hub.requests.append({"method": method, "path": url.path, "query": parse_qs(url.query),
                                     "auth": auth, "body": raw})
                if auth != f"Bearer {GOOD_TOKEN}":
                    return self.reply(401, {"error": "Invalid credentials in Authorization header"})
                parts = url.path.strip("/").split("/")
                if url.path == "/api/whoami-v2":
                    return self.reply(200, {"type": "user", "name": "tester", "orgs": []})
                if url.path == "/api/validate-yaml":  # the model card's metadata, checked before a commit
                    content = json.loads(raw)["content"]
                    ok = content.startswith("---\n") and "base_model:" in content.split("---")[1]
                    return self.reply(200 if ok else 400, {"errors": [] if ok else [{"message": "bad"}],
                                                           "warnings": []})
                if url.path == "/api/repos/create":
                    body = json.loads(raw)
                    repo = f"{body.get('organization') or 'tester'}/{body['name']}"
                    hub.repos.setdefault(repo, {})
                    hub.private[repo] = body.get("visibility", "private" if body.get("private") else "public")
                    return self.reply(200, {"url": f"{hub.url}/{repo}", "name": repo})
                if parts[:2] == ["api", "models"] and len(parts) >= 6:
                    repo, action = f"{parts[2]}/{parts[3]}", parts[4]
                    if repo not in hub.repos:
                        return self.reply(404, {"error": "Repository not found"})
                    if action == "preupload":
                        files = json.loads(raw)["files"]
                        return self.reply(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                           "shouldIgnore": False} for f in files]})
                    if action == "commit":
                        return self.commit(repo, raw)
                    if action == "tree":
                        return self.reply(200, [{"type": "file", "path": p, "size": len(d), "oid": blob(d)}
                                                for p, d in sorted(hub.repos[repo].items())])
                if parts[:2] == ["v2", "endpoint"]:
                    return self.endpoint(method, parts[2:], raw)
                return self.reply(404, {"error": f"no route {method} {url.path}"})

            def commit(self, repo: str, raw: bytes):
                files = hub.repos[repo]
                for line in raw.decode().splitlines():
                    op = json.loads(line)
                    if op["key"] == "file":
                        files[op["value"]["path"]] = base64.b64decode(op["value"]["content"])
                    elif op["key"] == "deletedFile":
                        files.pop(op["value"]["path"], None)
                sha = hashlib.sha1(repr(sorted(files.items())).encode() + str(len(hub.commits)).encode()).hexdigest()
                hub.commits.append(sha)
                return self.reply(200, {"commitUrl": f"{hub.url}/{repo}/commit/{sha}", "commitOid": sha,
                                        "success": True})

            def endpoint(self, method: str, parts: list[str], raw: bytes):
                namespace, name = parts[0], parts[1] if len(parts) > 1 else None
                if method == "POST":
                    body = json.loads(raw)
                    body["_polls"] = 0
                    hub.endpoints[f"{namespace}/{body['name']}"] = body
                    return self.reply(200, raw_endpoint(hub, namespace, body))
                key = f"{namespace}/{name}"
                if key not in hub.endpoints:
                    return self.reply(404, {"error": "Endpoint not found"})
                body = hub.endpoints[key]
                if method == "PUT":
                    update = json.loads(raw)
                    body["model"].update(update.get("model", {}))
                    body["_polls"] = 0
                else:
                    body["_polls"] += 1
                return self.reply(200, raw_endpoint(hub, namespace, body))

            def do_GET(self):
                self.handle_any("GET")

            def do_POST(self):
                self.handle_any("POST")

            def do_PUT(self):
                self.handle_any("PUT")

        return Handler


def blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def raw_endpoint(hub: FakeHub, namespace: str, body: dict) -> dict:
    running = body["_polls"] >= hub.polls_until_running
    stamp = "2026-01-01T00:00:00.000Z"
    return {"name": body["name"], "type": body.get("type", "authenticated"), "healthRoute": "/health",
            "model": {"repository": body["model"]["repository"], "revision": body["model"].get("revision"),
                      "framework": body["model"]["framework"], "task": body["model"].get("task"),
                      "image": body["model"].get("image"), "env": body["model"].get("env")},
            "compute": body.get("compute"), "provider": body.get("provider"),
            "status": {"state": "running" if running else "initializing", "createdAt": stamp, "updatedAt": stamp,
                       "url": hub.endpoint_url if running else None}}


@pytest.fixture
def hub():
    server = FakeHub()
    yield server
    server.server.shutdown()


@pytest.mark.slow
def test_hub_push_merged_private_with_card_and_exact_files(trained_run, hub):
    ws, run_id = trained_run.ws, trained_run.run_id
    options = {"repo_id": "faq-bot", "token": GOOD_TOKEN, "endpoint": hub.url, "serve_check": False}
    plan = pipeline.preview(ws, run_id, "hub", options)
    assert plan.url == f"{hub.url}/faq-bot" and "private repo faq-bot" in plan.steps[1]
    dep = pipeline.publish(ws, run_id, "hub", options)

    assert dep.status == "healthy" and dep.verdict in PUBLISH_VERDICTS, dep.verification
    assert dep.url == f"{hub.url}/tester/faq-bot"
    assert dep.options["details"]["repo_id"] == "tester/faq-bot"
    assert dep.options["details"]["revision"] == hub.commits[-1]
    assert dep.options["options"]["token_set"] is True and GOOD_TOKEN not in json.dumps(dep.options)
    assert hub.private["tester/faq-bot"] == "private"
    files = hub.repos["tester/faq-bot"]
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "README.md"} <= set(files)
    assert "base_model: demo-tiny" in files["README.md"].decode()
    assert hub.paths("POST") == ["/api/repos/create", "/api/validate-yaml", "/api/models/tester/faq-bot/preupload/main",
                                 "/api/models/tester/faq-bot/commit/main"]
    assert all(r["auth"] == f"Bearer {GOOD_TOKEN}" for r in hub.requests)

    # the adapter pushed to the same repo replaces the merged files (an earlier push's files are deleted);
    # this time the pushed files are also served here for a moment and must answer like the studio model
    second = pipeline.publish(ws, run_id, "hub", options | {"merged": False, "serve_check": True})
    assert second.status == "healthy" and second.previous_id == dep.id
    assert second.verdict in PUBLISH_VERDICTS and second.verification["matched"] == second.verification["total"] >= 1
    assert not [e for e in endpoints.list_endpoints(ws, include_stopped=False) if e.name.startswith("check-")]
    assert "adapter_model.safetensors" in hub.repos["tester/faq-bot"]
    assert "model.safetensors" not in hub.repos["tester/faq-bot"]
    assert deployments.get_deployment(ws, dep.id).status == "replaced"

    # someone else pushes to the repo: re-verifying the deployment notices
    hub.repos["tester/faq-bot"]["README.md"] = b"changed by hand"
    again = pipeline.reverify(ws, second.id, {"token": GOOD_TOKEN})
    assert again.status == "unhealthy" and "files" in again.verification["causes"]
    assert "README.md differs" in again.verification["summary"]

    # rollback puts the merged export back into the repo
    back = pipeline.rollback(ws, "hub:faq-bot", {"token": GOOD_TOKEN})
    assert back.status == "healthy" and back.model_version == dep.model_version
    assert "model.safetensors" in hub.repos["tester/faq-bot"]
    assert deployments.get_deployment(ws, second.id).status == "rolled_back"

    # the token went to the Hub on every request, and into no file the studio wrote: database, logs,
    # manifests, exports, model cards, the audit log
    leaked = [str(p) for p in ws.home.rglob("*") if p.is_file() and GOOD_TOKEN.encode() in p.read_bytes()]
    assert not leaked, leaked


def test_hub_refuses_a_wrong_token_with_the_fix(ws, hub):
    from studio.publishing.targets.hub import HubTarget

    target = HubTarget.from_dict(ws, {"repo_id": "faq-bot", "token": "hf_wrong", "endpoint": hub.url})
    with pytest.raises(InvalidInput) as info:
        target.full_repo_id(target.api())
    assert "refused the token (HTTP 401)" in info.value.message
    assert "huggingface.co/settings/tokens" in info.value.fix
    assert hub.requests[-1]["auth"] == "Bearer hf_wrong"


def test_the_servers_token_goes_only_to_hugging_face(ws, hub, monkeypatch):
    """A Hub address typed into the form must not receive the server's HF_TOKEN; the admin's own HF_ENDPOINT may."""
    from studio.publishing.targets.hub import HubTarget

    monkeypatch.setenv("HF_TOKEN", GOOD_TOKEN)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    target = HubTarget.from_dict(ws, {"repo_id": "faq-bot", "endpoint": hub.url})
    with pytest.raises(InvalidInput, match="not a Hugging Face host") as info:
        target.full_repo_id(target.api())
    assert "token field" in info.value.fix and hub.requests == []

    monkeypatch.setenv("HF_ENDPOINT", hub.url)  # set by the server's admin: trusted
    target.full_repo_id(target.api())
    assert hub.requests[-1]["auth"] == f"Bearer {GOOD_TOKEN}"


@pytest.mark.slow
def test_inference_endpoint_created_from_the_pushed_repo_followed_until_running(trained_run, hub, monkeypatch):
    from huggingface_hub import constants

    from studio.publishing.source import finished_run

    monkeypatch.setattr(constants, "INFERENCE_ENDPOINTS_ENDPOINT", f"{hub.url}/v2")
    ws, run_id = trained_run.ws, trained_run.run_id
    export = pipeline.ensure_export(ws, finished_run(ws, run_id), "merged")
    # stands in for the endpoint's TGI: the pushed (merged) folder served by the embedded endpoint
    local = launch.start_endpoint(ws, str(export.model_dir), None, name="fake-ie", timeout=120)
    hub.endpoint_url = local.url
    try:
        options = {"repo_id": "faq-ie", "token": GOOD_TOKEN, "endpoint": hub.url, "instance_type": "nvidia-l4",
                   "region": "eu-west-1", "scale_to_zero_minutes": 30, "poll": 0.05}
        plan = pipeline.preview(ws, run_id, "inference-endpoint", options)
        assert "create the Inference Endpoint 'faq-ie' (aws eu-west-1, gpu nvidia-l4 x1" in plan.steps[3]
        seen = []
        dep = pipeline.publish(ws, run_id, "inference-endpoint", options, progress=lambda f, m: seen.append(m))
    finally:
        endpoints.stop_endpoint(ws, local.id)
    created = json.loads(next(r["body"] for r in hub.requests if r["path"] == "/v2/endpoint/tester"))
    assert created["name"] == "faq-ie" and created["type"] == "authenticated"
    assert created["model"]["repository"] == "tester/faq-ie" and created["model"]["revision"] == hub.commits[-1]
    assert created["model"]["framework"] == "pytorch" and created["model"]["task"] == "text-generation"
    assert created["model"]["image"] == {"custom": {"healthRoute": "/health",
                                                    "url": "ghcr.io/huggingface/text-generation-inference:3.3.6"}}
    assert created["model"]["env"]["MODEL_ID"] == "/repository"
    assert int(created["model"]["env"]["MAX_TOTAL_TOKENS"]) > int(created["model"]["env"]["MAX_INPUT_TOKENS"])
    assert created["compute"] == {"accelerator": "gpu", "instanceSize": "x1", "instanceType": "nvidia-l4",
                                  "scaling": {"maxReplica": 1, "minReplica": 0, "scaleToZeroTimeout": 30}}
    assert created["provider"] == {"region": "eu-west-1", "vendor": "aws"}
    assert any("initializing" in m for m in seen)  # followed until it ran
    assert dep.url == local.url and dep.slot == "inference-endpoint:faq-ie"
    assert dep.status == "healthy" and dep.verdict in PUBLISH_VERDICTS  # the pushed model answers like the studio's
    assert dep.verification["total"] == dep.verification["matched"] >= 1


def test_hub_push_reports_an_unreachable_hub(ws):
    from studio.core.errors import ModelUnavailable
    from studio.publishing.targets.hub import HubTarget, hub_errors

    target = HubTarget.from_dict(ws, {"repo_id": "me/faq-bot", "token": GOOD_TOKEN, "endpoint": "http://127.0.0.1:9"})
    with pytest.raises(ModelUnavailable) as info:
        with hub_errors("creating the repo", target.endpoint()):
            target.api().create_repo("me/faq-bot", exist_ok=True)
    assert "cannot be reached" in info.value.message and "http://127.0.0.1:9" in info.value.message

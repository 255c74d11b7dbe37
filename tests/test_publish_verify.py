"""The verification's diagnosis, one cause at a time, against a small TGI-shaped server whose replies are
set per question (no model needed): match, EOS not honoured, token limits, adapter ignored, template,
plain difference, unreachable, and a studio model that never stops."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import free_port

from studio.publishing.verify import Served, format_verification, verify, word_diff

STUDIO, BASE = "Refunds go to your card.", "zq zq zq"


class Scripted:
    """question -> {"chat": (text, finish) or (status, error), "raw": (text, finish)}"""

    def __init__(self, script: dict):
        self.script = script
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def handler(self):
        script = self.script

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def send(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/v1/chat/completions":
                    assert body["temperature"] == 0  # greedy
                    entry = script[body["messages"][-1]["content"]]["chat"]
                    if isinstance(entry[0], int):
                        return self.send(entry[0], {"error": entry[1], "error_type": "validation"})
                    return self.send(200, {
                        "id": "x", "object": "chat.completion", "created": 0, "model": "tgi",
                        "system_fingerprint": "3.3.6", "usage": {"prompt_tokens": 5, "completion_tokens": 5,
                                                                 "total_tokens": 10},
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": entry[0]},
                                     "finish_reason": entry[1], "logprobs": None}]})
                if self.path == "/generate":
                    assert body["parameters"]["do_sample"] is False
                    question = body["inputs"].split("user\n")[1].split("<|im_end|>")[0]
                    text, finish = script[question].get("raw", ("", "length"))
                    return self.send(200, {"generated_text": text, "details": {
                        "finish_reason": finish, "generated_tokens": 5, "seed": None, "prefill": [], "tokens": []}})
                self.send(404, {"error": "not found", "error_type": "http"})

        return Handler


def reference(*questions, studio_finish="eos") -> dict:
    return {"max_new_tokens": 32, "prompts": [
        {"messages": [{"role": "user", "content": q}], "prompt_tokens": 12,
         "prompt_text": f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n",
         "tuned": {"text": STUDIO, "finish": studio_finish, "tokens": 7},
         "base": {"text": BASE, "finish": "length", "tokens": 32}} for q in questions]}


@pytest.fixture
def scripted():
    servers = []

    def make(script):
        servers.append(Scripted(script))
        return servers[-1]

    yield make
    for s in servers:
        s.server.shutdown()


CASES = {
    "match": ({"chat": (STUDIO, "stop")}, None, "passed"),
    "eos": ({"chat": (STUDIO + " Anything else? " * 3, "length")}, "eos", "failed"),
    "truncation": ({"chat": (422, "`inputs` tokens + `max_tokens` must be <= 16. Given: 12 `inputs` tokens and "
                                  "32 `max_tokens`")}, "truncation", "failed"),
    "adapter": ({"chat": (BASE, "length"), "raw": (BASE, "length")}, "adapter", "failed"),
    "template": ({"chat": ("Hello! How can I help?", "stop"), "raw": (STUDIO, "eos_token")}, "template", "failed"),
    "differs": ({"chat": ("Refunds go to your bank card.", "stop"), "raw": ("Refunds go to your bank card.",
                                                                            "eos_token")},
                "differs", "passed_with_differences"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_cause_is_named(case, scripted):
    behaviour, cause, verdict = CASES[case]
    server = scripted({"Where do refunds go?": behaviour})
    result = verify(Served(url=server.url, model="run-x", adapter_id="run-x"), reference("Where do refunds go?"))
    assert result["verdict"] == verdict, result
    assert result["items"][0]["cause"] == cause
    assert result["healthy"] is (verdict != "failed")
    assert ("Verification: " + verdict.replace("_", " ")) in format_verification(result)


def test_an_endpoint_that_went_away_fails_the_verification():
    result = verify(Served(url=f"http://127.0.0.1:{free_port()}"), reference("q?"))
    assert result["verdict"] == "failed" and result["causes"] == ["error"]
    assert result["items"][0]["endpoint"].startswith("(no answer:")


def test_a_studio_model_that_never_stops_fails_even_when_matched(scripted):
    server = scripted({"q?": {"chat": (STUDIO, "length")}})
    result = verify(Served(url=server.url), reference("q?", studio_finish="length"))
    assert result["items"][0]["match"] and result["causes"] == ["no_eos"] and result["verdict"] == "failed"
    assert "does not stop within the token budget" in result["summary"]


def test_word_diff_marks_what_changed():
    assert word_diff("Refunds go to your card.", "Refunds go to your bank card.") == \
        "Refunds go to your {+bank+} card."
    assert word_diff("a b c", "a x c") == "a [-b-] {+x+} c"


def test_the_try_it_request_starts_with_the_system_prompt_the_model_was_verified_with():
    """The Publish tab's curl example asks as verification did: the run's dataset system prompt first
    (recorded at publish; older deployments: the golden set's), shell-quoted even with a quote in it."""
    import shlex

    from studio.publishing.deployments import Deployment, curl_example

    def body(dep: Deployment) -> dict:
        argv = shlex.split(curl_example(dep, "Where is my order?"))
        return json.loads(argv[argv.index("-d") + 1])

    system = "You answer for the support team; don't guess."
    dep = Deployment(id="dep-1", run_id="run-1", target="local", slot="local:faq", status="healthy", created_at="",
                     url="http://127.0.0.1:9", options={"system_prompt": system, "served": {"model": "faq"}})
    assert body(dep)["messages"] == [{"role": "system", "content": system},
                                     {"role": "user", "content": "Where is my order?"}]
    dep.options["system_prompt"] = ""
    assert body(dep)["messages"] == [{"role": "user", "content": "Where is my order?"}]
    del dep.options["system_prompt"]
    dep.verification = {"prompts_from": {"kind": "golden", "system_prompt": system}}
    assert body(dep)["messages"][0] == {"role": "system", "content": system} and body(dep)["model"] == "faq"

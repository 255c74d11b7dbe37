"""The embedded endpoint against the clients a user would use: huggingface_hub.InferenceClient, the
openai client on /v1, and raw HTTP checked against TGI's OpenAPI schemas. One endpoint process for
the module: demo-tiny with two LoRA adapters."""

from __future__ import annotations

import concurrent.futures as cf

import httpx
import pytest
from conftest import free_port
from test_serve_support import Server, check, make_adapter, schema, sse_events

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def endpoint(demo_model_source, tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    a = make_adapter(demo_model_source, folder / "adapter-a", seed=1)
    b = make_adapter(demo_model_source, folder / "adapter-b", seed=2)
    server = Server(["--model", str(demo_model_source), "--served-name", "demo-tiny",
                     "--adapter", f"tuned={a}", "--adapter", f"other={b}", "--max-total-tokens", "256"],
                    free_port(), folder / "server.log").wait()
    yield server
    server.stop()


@pytest.fixture
def client(endpoint):
    from huggingface_hub import InferenceClient

    return InferenceClient(base_url=endpoint.url)


def test_text_generation_base_and_adapter_differ(client):
    base = client.text_generation("Where is my parcel?", max_new_tokens=12)
    tuned = client.text_generation("Where is my parcel?", max_new_tokens=12, adapter_id="tuned")
    assert base and tuned and base != tuned
    # greedy is repeatable, and streaming gives the same text token by token
    assert client.text_generation("Where is my parcel?", max_new_tokens=12, adapter_id="tuned") == tuned
    events = list(client.text_generation("Where is my parcel?", max_new_tokens=12, adapter_id="tuned", stream=True,
                                         details=True))
    assert 1 <= len(events) <= 12 and events[-1].generated_text == tuned
    assert "".join(e.token.text for e in events if not e.token.special) == tuned


def test_details_and_stream_details(client):
    out = client.text_generation("refund", max_new_tokens=5, details=True, decoder_input_details=True)
    assert out.details.finish_reason == "length" and out.details.generated_tokens == 5
    assert len(out.details.tokens) == 5 and out.details.prefill[0].logprob is None
    assert all(t.logprob is not None for t in out.details.prefill[1:])
    events = list(client.text_generation("refund", max_new_tokens=5, details=True, stream=True))
    assert [e.generated_text for e in events[:-1]] == [None] * 4
    assert events[-1].generated_text == out.generated_text and events[-1].details.finish_reason == "length"


def test_seeded_sampling_is_repeatable_and_reported(client):
    kw = dict(max_new_tokens=8, do_sample=True, temperature=0.9, top_p=0.9, seed=42, details=True)
    first, second = client.text_generation("hello", **kw), client.text_generation("hello", **kw)
    assert first.generated_text == second.generated_text and first.details.seed == 42


def test_stop_sequence_ends_the_answer(client):
    full = client.text_generation("hello", max_new_tokens=10, adapter_id="other", details=True)
    texts = [t.text for t in full.details.tokens]
    stop = next(t for t in texts[1:] if t.strip())  # a later token of the greedy answer ends it there
    out = client.text_generation("hello", max_new_tokens=10, adapter_id="other", stop=[stop], details=True)
    assert out.details.finish_reason == "stop_sequence"
    assert out.generated_text == "".join(texts[: texts.index(stop, 1) + 1])


def test_chat_completion_picks_the_adapter_by_model(client, endpoint):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How do I return an item?"}]
    base = client.chat_completion(messages, model="demo-tiny", max_tokens=10, temperature=0)
    tuned = client.chat_completion(messages, model="tuned", max_tokens=10, temperature=0)
    assert tuned.model == "tuned" and base.model == "demo-tiny"
    assert base.choices[0].message.content != tuned.choices[0].message.content
    assert tuned.usage.completion_tokens == 10 and tuned.choices[0].finish_reason == "length"
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat_completion(
        messages, model="tuned", max_tokens=10, temperature=0, stream=True))
    assert streamed == tuned.choices[0].message.content


def test_openai_client_on_v1(endpoint):
    import openai

    oa = openai.OpenAI(base_url=endpoint.url + "/v1", api_key="not-needed")
    assert [m.id for m in oa.models.list()] == ["demo-tiny", "tuned", "other"]
    messages = [{"role": "user", "content": "hi"}]
    out = oa.chat.completions.create(model="other", messages=messages, max_tokens=6, temperature=0,
                                     logprobs=True, top_logprobs=2)
    assert out.choices[0].message.role == "assistant" and out.usage.completion_tokens == 6
    assert len(out.choices[0].logprobs.content[0].top_logprobs) == 2
    chunks = list(oa.chat.completions.create(model="other", messages=messages, max_tokens=6, temperature=0,
                                             stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == out.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 6
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        oa.chat.completions.create(model="nobody", messages=messages)
    assert "adapter `nobody` is not served" in str(refused.value.body)


def test_raw_http_matches_tgi_schemas(endpoint):
    url = endpoint.url
    body = {"inputs": "Where is my parcel?", "parameters": {"max_new_tokens": 4, "details": True,
                                                            "adapter_id": "tuned", "top_n_tokens": 2}}
    check(httpx.post(url + "/generate", json=body).json(), schema("GenerateResponse"))
    compat = httpx.post(url + "/", json={**body, "stream": False}).json()
    assert isinstance(compat, list)
    check(compat[0], schema("GenerateResponse"))
    with httpx.stream("POST", url + "/generate_stream", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    assert len(events) == 4
    for event in events:
        check(event, schema("StreamResponse"))
    check(events[-1]["details"], schema("StreamDetails"))
    chat = {"model": "tuned", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "max_tokens": 3}
    check(httpx.post(url + "/v1/chat/completions", json=chat).json(), schema("ChatCompletion"))
    with httpx.stream("POST", url + "/v1/chat/completions", json={**chat, "stream": True}) as response:
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    for event in events[:-1]:
        check(event, schema("ChatCompletionChunk"))
    info = httpx.get(url + "/info").json()
    check(info, schema("Info"))
    assert [a["id"] for a in info["adapters"]] == ["tuned", "other"] and info["batching"] == "continuous"
    for model in httpx.get(url + "/v1/models").json()["data"]:
        check(model, schema("ModelInfo"))
    assert httpx.get(url + "/health").status_code == 200
    metrics = httpx.get(url + "/metrics").text
    assert "tgi_request_success" in metrics and "tgi_batch_current_size" in metrics


def test_stop_markers_come_from_the_saved_chat_template_and_generation_config(endpoint):
    from transformers import AutoTokenizer

    info = httpx.get(endpoint.url + "/info").json()
    tokenizer = AutoTokenizer.from_pretrained(info["adapters"][0]["path"])
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for adapter in info["adapters"]:
        assert adapter["chat_template"] == "adapter" and im_end in adapter["eos_token_ids"]


BAD_REQUESTS = [
    ("/generate", b'{"inputs": "hi", "parameters": {', "not valid JSON"),
    ("/generate", {"inputs": "hi", "parameters": {"adapter_id": "nobody"}}, "adapter `nobody` is not served"),
    ("/generate", {"inputs": "hi", "parameters": {"max_new_tokens": 100000}}, "must be <= 256"),
    ("/generate", {"inputs": "hi", "parameters": {"max_new_tokens": 0}}, "strictly positive"),
    ("/generate", {"inputs": "", "parameters": {}}, "`inputs` cannot be empty"),
    ("/generate_stream", {"inputs": "   "}, "`inputs` cannot be empty"),
    ("/generate", {"inputs": "hi", "parameters": {"watermark": True}}, "`watermark` is not supported"),
    ("/generate", {"inputs": "hi", "parameters": {"grammar": {"type": "regex", "value": "a+"}}}, "`grammar`"),
    ("/generate", {"inputs": "hi", "parameters": {"best_of": 2}}, "`best_of`"),
    ("/generate", {"inputs": "hi", "parameters": {"temperature": 0}}, "`temperature` must be strictly positive"),
    ("/generate", {"inputs": "hi", "parameters": {"min_p": 0.1}}, "unknown parameter `parameters.min_p`"),
    ("/generate", {"prompt": "hi"}, "`inputs` is required"),
    ("/v1/chat/completions", {"model": "nobody", "messages": [{"role": "user", "content": "hi"}]}, "nobody"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": ""}]}, "`messages` cannot be empty"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "n": 2}, "`n` > 1"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "tools": [{}]}, "tools"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}, "<= 256"),
]


@pytest.mark.parametrize(("route", "body", "message"), BAD_REQUESTS)
def test_bad_requests_get_tgi_error_shape_and_status(endpoint, route, body, message):
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    response = httpx.post(endpoint.url + route, **kwargs)
    assert response.status_code == 422
    payload = response.json()
    check(payload, schema("ErrorResponse"))
    assert payload["error_type"] == "validation" and message in payload["error"]


def test_unknown_adapter_through_inference_client_is_a_validation_error(client):
    from huggingface_hub.errors import ValidationError

    with pytest.raises(ValidationError, match="not served"):
        client.text_generation("hi", adapter_id="nobody")
    with pytest.raises(ValidationError, match="must be <= 256"):
        list(client.text_generation("hi", max_new_tokens=100000, stream=True))


def test_concurrent_requests_are_batched_without_mixing_answers(endpoint, client):
    """8 clients at once, on three different models: each gets exactly what it gets alone."""
    jobs = [(f"question number {i} about orders", [None, "tuned", "other"][i % 3]) for i in range(8)]
    alone = [client.text_generation(p, max_new_tokens=16, adapter_id=a) for p, a in jobs]
    before = _forward_counts(endpoint)
    with cf.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda job: client.text_generation(job[0], max_new_tokens=16, adapter_id=job[1]),
                                 jobs))
    assert together == alone
    forwards, rows = (after - b for after, b in zip(_forward_counts(endpoint), before, strict=True))
    assert rows / forwards > 1.5  # decoding steps served several requests at once


def _forward_counts(endpoint) -> tuple[float, float]:
    values = {}
    for line in httpx.get(endpoint.url + "/metrics").text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values.get("tgi_batch_forward_size_count", 0), values.get("tgi_batch_forward_size_sum", 0)


def test_studio_serve_resolves_names_into_the_endpoint_command(ws, tmp_path, demo_model_source):
    import json
    import subprocess
    import sys

    adapter = make_adapter(demo_model_source, tmp_path / "adapter", seed=5)
    out = subprocess.run([sys.executable, "-m", "studio", "serve", "--model", "demo-tiny", "--adapter",
                          f"faq={tmp_path}", "--port", "9123", "--dry-run", "--json", "--home", str(ws.home)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    argv = json.loads(out.stdout)["argv"]
    assert argv[1:3] == ["-m", "studio.serving.server"] and f"faq={adapter}" in argv  # a run folder → its adapter/
    assert argv[argv.index("--model") + 1] == str(ws.models_dir / "demo-tiny")
    bad = subprocess.run([sys.executable, "-m", "studio", "serve", "--model", "demo-tiny", "--adapter", "faq",
                          "--dry-run", "--home", str(ws.home)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "not NAME=RUN" in bad.stderr


def test_endpoint_process_refuses_a_folder_without_an_adapter(tmp_path, demo_model_source):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "studio.serving.server", "--model", str(demo_model_source), "--adapter",
                          f"x={tmp_path}", "--port", str(free_port())], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "holds no adapter_config.json" in out.stderr


def test_a_client_that_leaves_frees_its_row(endpoint):
    """Closing a stream mid-way cancels the request: the batch empties long before 200 tokens."""
    import time

    body = {"inputs": "Tell me everything", "parameters": {"max_new_tokens": 200}}
    before = _metric(endpoint, "tgi_request_generated_tokens_total")
    with httpx.stream("POST", endpoint.url + "/generate_stream", json=body) as response:
        for n, _ in enumerate(response.iter_lines()):
            if n >= 4:
                break
    deadline = time.monotonic() + 10
    while _metric(endpoint, "tgi_batch_current_size") != 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert _metric(endpoint, "tgi_request_generated_tokens_total") == before  # it never finished
    assert httpx.post(endpoint.url + "/generate", json={"inputs": "hi", "parameters": {"max_new_tokens": 2}}).json()


def _metric(endpoint, name: str) -> float:
    for line in httpx.get(endpoint.url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_an_evaluations_requests_are_marked_batch_and_a_bad_mark_is_refused(endpoint):
    """The evaluation's client sends `X-Studio-Priority: batch` (the engine admits chat before such requests)."""
    from studio.serving.client import client as studio_client

    before = _metric(endpoint, "studio_admitted_batch_total")
    assert studio_client(endpoint.url, priority="batch").text_generation("hi", max_new_tokens=2)
    assert _metric(endpoint, "studio_admitted_batch_total") == before + 1
    bad = httpx.post(endpoint.url + "/generate", json={"inputs": "hi", "parameters": {"max_new_tokens": 2}},
                     headers={"X-Studio-Priority": "urgent"})
    assert bad.status_code == 422 and "X-Studio-Priority" in bad.json()["error"]

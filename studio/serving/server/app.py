"""The endpoint's HTTP API: TGI's routes and bodies (shared/tgi/openapi.json) for what it implements.

POST /, /generate, /generate_stream (SSE), /v1/chat/completions (plain and SSE); GET /v1/models,
/info, /health, /metrics. Errors always come as {"error": ..., "error_type": ...} with TGI's status
codes: 401 no or wrong API key (when started with one), 422 validation, 424 generation, 429 overloaded.
Unlike TGI, an unknown adapter is an error.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from studio import __version__
from studio.serving.server.engine import Engine, Job
from studio.serving.server.model import Served
from studio.serving.server.prepare import Prepared, prepare_chat, prepare_generate
from studio.serving.server.scheduler import PRIORITIES, PRIORITY_HEADER
from studio.serving.server.schemas import (
    ApiError,
    ChatRequest,
    CompatGenerateRequest,
    GenerateRequest,
    invalid,
    parse,
)

ROUTER = "studio-embedded-endpoint"
FINISH_TO_OPENAI = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}


class Gate:
    """Admission: at most `limit` requests in flight, the rest get TGI's 429 `overloaded`."""

    def __init__(self, limit: int):
        self.limit, self.inflight = limit, 0

    def check(self) -> None:
        if self.inflight >= self.limit:
            raise ApiError(429, "overloaded", "Model is overloaded")

    def enter(self) -> None:
        self.check()
        self.inflight += 1

    def leave(self) -> None:
        self.inflight -= 1


def create_app(served: Served, engine: Engine, *, max_concurrent_requests: int = 128,
               api_key: str | None = None) -> FastAPI:
    app = FastAPI(title="LLMOps Studio embedded endpoint (TGI API)", version=__version__)
    gate = Gate(max_concurrent_requests)

    if api_key:
        expected = f"Bearer {api_key}".encode()

        @app.middleware("http")
        async def _require_key(request: Request, call_next):
            given = request.headers.get("authorization", "").encode()
            if request.url.path != "/health" and not hmac.compare_digest(given, expected):
                return JSONResponse({"error": "Unauthorized: send this endpoint's API key as 'Authorization: Bearer "
                                              "<key>'", "error_type": "unauthorized"}, status_code=401)
            return await call_next(request)

    metrics = engine.metrics
    fingerprint = f"{__version__}-studio"

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        metrics.fail(exc.error_type)
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"error": str(exc.detail), "error_type": "http"}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return JSONResponse(invalid(str(exc.errors()[0].get("msg"))).body(), status_code=422)

    def priority_of(request: Request) -> str:
        """`X-Studio-Priority: batch` marks an evaluation's request: admitted after waiting chat requests."""
        value = request.headers.get(PRIORITY_HEADER, "interactive").strip().lower()
        if value not in PRIORITIES:
            raise invalid(f"header X-Studio-Priority must be one of {', '.join(PRIORITIES)}; got `{value}`")
        return value

    async def run(prep: Prepared, priority: str) -> AsyncIterator[dict]:
        """Submit to the engine and yield its events; abandoning the iterator cancels the request."""
        gate.enter()
        metrics.inc("tgi_request_count")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[dict] = asyncio.Queue()
        started = time.monotonic()

        def emit(event: dict) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the event loop has shut down
                pass

        job = Job(prep.input_ids, prep.adapter, prep.fmt, prep.sampling, emit, priority=priority)
        engine.submit(job)
        try:
            while True:
                event = await events.get()
                if event["type"] == "error":
                    metrics.fail("generation")
                    yield event
                    return
                yield event
                if "end" in event:  # the last token: then the end itself, for those who wait for it
                    metrics.inc("tgi_request_success")
                    metrics.observe("tgi_request_duration", time.monotonic() - started)
                    yield event["end"]
                    return
        finally:
            job.cancelled.set()
            gate.leave()

    async def body_of(request: Request, model):
        raw = await request.body()
        try:
            data = json.loads(raw or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise invalid(f"the request body is not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise invalid("the request body must be a JSON object")
        return parse(model, data)

    # ------------------------------------------------------------------ /generate and friends

    async def generate_response(req: GenerateRequest, priority: str) -> dict:
        prep = prepare_generate(served, req)
        tokens, top, prefill, end = [], [], [], None
        async for event in run(prep, priority):
            if event["type"] == "token":
                tokens.append(event["token"])
                top.append(event.get("top_tokens", []))
            elif event["type"] == "prefill":
                prefill = event["tokens"]
            elif event["type"] == "error":
                raise ApiError(424, "generation", event["message"])
            else:
                end = event
        text = (req.inputs if req.parameters.return_full_text else "") + end["generated_text"]
        response: dict[str, Any] = {"generated_text": text}
        if req.parameters.details:
            response["details"] = {
                "finish_reason": end["finish_reason"], "generated_tokens": end["generated_tokens"],
                "seed": end["seed"], "prefill": prefill, "tokens": tokens, "best_of_sequences": None,
            }
            if prep.sampling.top_n_tokens:
                response["details"]["top_tokens"] = top
        return response

    def generate_stream(req: GenerateRequest, priority: str) -> StreamingResponse:
        prep = prepare_generate(served, req)  # validation errors leave as a 422 before the stream starts
        gate.check()

        async def events() -> AsyncIterator[str]:
            try:
                async for chunk in token_events():
                    yield chunk
            except ApiError as exc:
                yield _sse(exc.body())

        async def token_events() -> AsyncIterator[str]:
            index = 0
            async for event in run(prep, priority):
                if event["type"] == "token":
                    index += 1
                    out = {"index": index, "token": event["token"], "generated_text": None, "details": None}
                    if prep.sampling.top_n_tokens:
                        out["top_tokens"] = event["top_tokens"]
                    end = event.get("end")
                    if end is not None:  # the last event carries the whole text (and details when asked)
                        out["generated_text"] = (req.inputs if req.parameters.return_full_text else "") \
                            + end["generated_text"]
                        if req.parameters.details:
                            out["details"] = {k: end[k] for k in (
                                "finish_reason", "generated_tokens", "input_length", "seed")}
                    yield _sse(out)
                elif event["type"] == "error":
                    yield _sse({"error": event["message"], "error_type": "generation"})

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/generate")
    async def generate(request: Request):
        return JSONResponse(await generate_response(await body_of(request, GenerateRequest), priority_of(request)))

    @app.post("/generate_stream")
    async def generate_stream_route(request: Request):
        return generate_stream(await body_of(request, GenerateRequest), priority_of(request))

    @app.post("/")
    async def compat_generate(request: Request):
        req = await body_of(request, CompatGenerateRequest)
        if req.stream:
            return generate_stream(req, priority_of(request))
        return JSONResponse([await generate_response(req, priority_of(request))])

    # ------------------------------------------------------------------ chat completions

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = await body_of(request, ChatRequest)
        prep = prepare_chat(served, req)
        priority = priority_of(request)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
                "model": prep.model_name, "system_fingerprint": fingerprint}
        if req.stream:
            gate.check()
            return StreamingResponse(chat_stream(req, prep, head, priority), media_type="text/event-stream")
        text = Visible(prep.sampling.stop)
        logprobs, end = [], None
        async for event in run(prep, priority):
            if event["type"] == "token":
                if not event["token"]["special"]:
                    text.add(event["token"]["text"])
                    logprobs.append(_chat_logprob(event))
            elif event["type"] == "error":
                raise ApiError(424, "generation", event["message"])
            elif event["type"] == "end":
                end = event
        completion = len(prep.input_ids), end["generated_tokens"]
        return JSONResponse({
            **head, "object": "chat.completion",
            "choices": [{
                "index": 0, "message": {"role": "assistant", "content": text.final()},
                "logprobs": {"content": logprobs} if req.logprobs else None,
                "finish_reason": FINISH_TO_OPENAI[end["finish_reason"]],
            }],
            "usage": {"prompt_tokens": completion[0], "completion_tokens": completion[1],
                      "total_tokens": sum(completion)},
        })

    async def chat_stream(req: ChatRequest, prep: Prepared, head: dict, priority: str) -> AsyncIterator[str]:
        try:
            async for chunk in chat_chunks(req, prep, head, priority):
                yield chunk
        except ApiError as exc:
            yield _sse(exc.body(), space=True)

    async def chat_chunks(req: ChatRequest, prep: Prepared, head: dict, priority: str) -> AsyncIterator[str]:
        text = Visible(prep.sampling.stop)
        usage = req.stream_options is not None and req.stream_options.include_usage

        def chunk(content: str, finish: str | None = None, logprob: dict | None = None) -> str:
            return _sse({**head, "object": "chat.completion.chunk", "choices": [{
                "index": 0, "delta": {"role": "assistant", "content": content},
                "logprobs": {"content": [logprob]} if logprob is not None else None, "finish_reason": finish,
            }], "usage": None}, space=True)

        async for event in run(prep, priority):
            if event["type"] == "token":
                if not event["token"]["special"]:
                    piece = text.add(event["token"]["text"])
                    if piece or req.logprobs:
                        yield chunk(piece, logprob=_chat_logprob(event) if req.logprobs else None)
            elif event["type"] == "error":
                yield _sse({"error": event["message"], "error_type": "generation"}, space=True)
                return
            elif event["type"] == "end":
                yield chunk(text.rest(), finish=FINISH_TO_OPENAI[event["finish_reason"]])
                if usage:
                    n_in, n_out = len(prep.input_ids), event["generated_tokens"]
                    yield _sse({**head, "object": "chat.completion.chunk", "choices": [], "usage": {
                        "prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}},
                        space=True)
        yield "data: [DONE]\n\n"

    # ------------------------------------------------------------------ about the endpoint

    @app.get("/health")
    async def health():
        if not engine.alive:
            return JSONResponse({"error": "unhealthy", "error_type": "healthcheck"}, status_code=503)
        return PlainTextResponse("")

    @app.get("/info")
    async def info():
        return {
            "model_id": served.served_name, "model_sha": None, "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": gate.limit, "max_best_of": 1, "max_stop_sequences": 4,
            "max_input_tokens": served.max_input_tokens, "max_total_tokens": served.max_total_tokens,
            "validation_workers": 1, "max_client_batch_size": 1, "router": ROUTER, "version": __version__,
            "sha": None, "docker_label": None,
            # beyond TGI's Info: what a client needs to pick an adapter and trust the replies
            "model_source": served.source,
            "adapters": [{"id": name, "path": served.adapter_dirs[name], "chat_template": fmt.template_from or None,
                          "eos_token_ids": sorted(fmt.eos_ids), "stop": fmt.stop}
                         for name, fmt in served.adapters.items()],
            "base_chat_template": served.base.template_from or None,
            "batching": "continuous", "max_batch_size": engine.max_batch_size,
            "max_batch_rows": engine.max_batch_rows, "prefill_chunk": engine.prefill_chunk,
            "device": served.device, "dtype": served.dtype, "quantize": served.quantize,
        }

    @app.get("/v1/models")
    async def models():
        created = int(time.time())
        names = [served.served_name, *served.adapters]
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": created, "owned_by": ROUTER} for name in names]}

    @app.get("/metrics")
    async def metrics_route():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    return app


class Visible:
    """The answer's text as a chat client should see it: without the stop sequence, and without
    streaming any text that might turn out to be the start of one."""

    def __init__(self, stops: list[str]):
        self.stops, self.text, self.sent = stops, "", 0

    def _cut(self) -> int | None:
        found = [self.text.find(s) for s in self.stops if s in self.text]
        return min(found) if found else None

    def add(self, piece: str) -> str:
        self.text += piece
        cut = self._cut()
        limit = cut if cut is not None else len(self.text) - self._held()
        out = self.text[self.sent:limit] if limit > self.sent else ""
        self.sent = max(self.sent, limit)
        return out

    def _held(self) -> int:
        """Length of the longest tail of the text that begins some stop sequence."""
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self.text)), best, -1):
                if self.text.endswith(stop[:n]):
                    best = n
                    break
        return best

    def rest(self) -> str:
        final = self.final()
        out = final[self.sent:] if len(final) > self.sent else ""
        self.sent = len(final)
        return out

    def final(self) -> str:
        cut = self._cut()
        return self.text if cut is None else self.text[:cut]


def _chat_logprob(event: dict) -> dict:
    token = event["token"]
    return {"token": token["text"], "logprob": token["logprob"],
            "top_logprobs": [{"token": t["text"], "logprob": t["logprob"]} for t in event.get("top_tokens", [])]}


def _sse(payload: dict, space: bool = False) -> str:
    return ("data: " if space else "data:") + json.dumps(payload, ensure_ascii=False) + "\n\n"

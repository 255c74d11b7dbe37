"""Chat: what to send (the conversation, the settings beside the chat, the exact request body), the
request as curl / Python to copy, and what to chat with (a run's endpoint, started when needed, an
endpoint of the registry, or a server URL). Sending goes through studio/serving/client.py.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass, field
from typing import Any

from studio.core import access
from studio.core.errors import InvalidInput, ModelUnavailable
from studio.serving import endpoints, launch
from studio.serving.client import request_kwargs, served_models


@dataclass
class Settings:
    """How to answer: the controls beside the chat."""

    system_prompt: str = ""
    temperature: float = 0.0  # 0 = always the most likely word (repeatable); higher = more varied
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int | None = None

    def check(self) -> Settings:
        if not 0 <= self.temperature <= 2:
            raise InvalidInput(f"Temperature {self.temperature} is out of range.", "Use a value from 0 to 2.")
        if not 0 < self.top_p <= 1:
            raise InvalidInput(f"Top-p {self.top_p} is out of range.", "Use a value above 0 and at most 1.")
        if not 1 <= self.max_new_tokens <= 32768:
            raise InvalidInput(f"Max new tokens {self.max_new_tokens} is out of range.", "Use 1 to 32768.")
        if self.seed is not None and self.seed < 0:
            raise InvalidInput(f"Seed {self.seed} is negative.", "Use 0 or more, or leave it empty.")
        return self


def flatten(content: Any) -> str:
    """Message content as text: Gradio 6 hands over a list like [{"type": "text", "text": ...}]."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or content.get("value") or "")
    if isinstance(content, (list, tuple)):
        return "".join(flatten(part) for part in content)
    return str(content)


def build_messages(history: list[dict], user_text: str, system_prompt: str = "") -> list[dict]:
    """The conversation to send: system prompt, earlier turns (text only), then the new question."""
    if not (user_text or "").strip():
        raise InvalidInput("The question is empty.", "Type the question to ask the model.")
    messages = [{"role": "system", "content": system_prompt.strip()}] if system_prompt.strip() else []
    for turn in history or []:
        role = turn.get("role")
        text = flatten(turn.get("content"))
        if role in ("user", "assistant") and text:
            messages.append({"role": role, "content": text})
    messages.append({"role": "user", "content": user_text})
    return messages


def chat_body(model: str, messages: list[dict], settings: Settings, stream: bool = True) -> dict:
    """The exact JSON body of a chat completion request (what the client sends, None fields left out)."""
    body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": settings.max_new_tokens,
                            "temperature": settings.temperature}
    if settings.top_p < 1:
        body["top_p"] = settings.top_p
    if settings.seed is not None:
        body["seed"] = settings.seed
    body["stream"] = stream
    return body


# ---------------------------------------------------------------- the request, to copy


def as_curl(url: str, body: dict) -> str:
    data = json.dumps(body, ensure_ascii=False, indent=2)
    flags = "-N " if body.get("stream") else ""
    return (f"curl {flags}{shlex.quote(url.rstrip('/') + '/v1/chat/completions')} \\\n"
            f"  -H 'Content-Type: application/json' \\\n  -d {shlex.quote(data)}")


def as_python(url: str, body: dict) -> str:
    args = ",\n    ".join(f"{k}={v!r}" for k, v in request_kwargs(body).items())
    messages = json.dumps(body["messages"], ensure_ascii=False, indent=4)
    lines = [
        "from huggingface_hub import InferenceClient",
        "",
        f"client = InferenceClient(base_url={url.rstrip('/')!r})",
        f"messages = {messages}",
    ]
    if body.get("stream"):
        lines += [f"for chunk in client.chat_completion(\n    messages,\n    {args},\n):",
                  "    print(chunk.choices[0].delta.content or '', end='', flush=True)"]
    else:
        lines += [f"out = client.chat_completion(\n    messages,\n    {args},\n)",
                  "print(out.choices[0].message.content)"]
    return "\n".join(lines)


def settings_dict(settings: Settings) -> dict:
    return asdict(settings)


# ---------------------------------------------------------------- what to chat with


@dataclass
class Target:
    """An endpoint to chat with, and the two models to put side by side on it."""

    url: str
    base: str  # the `model` value of the base model
    tuned: str | None  # the run's adapter (or the endpoint's first adapter), if any
    models: list[str]
    run_id: str | None = None
    endpoint_id: str | None = None
    started: bool = False  # this call started the endpoint
    api_key: str | None = field(default=None, repr=False)  # a remote server's key, from the environment


def open_target(ws, ref: str, *, start: bool = True) -> Target:
    """A run id (its endpoint, started when needed), an endpoint id or name, or a server URL."""
    access.require(ws, "chat")
    ref = (ref or "").strip()
    if not ref:
        raise InvalidInput("Nothing to chat with was chosen.", "Pick a finished run or an endpoint.")
    if ref.startswith(("http://", "https://")):
        models = served_models(ref)
        return Target(url=ref.rstrip("/"), base=models[0], tuned=models[1] if len(models) > 1 else None,
                      models=models)
    if ref.startswith("run-"):
        running = endpoints.find_endpoint_for_run(ws, ref)
        if running is None and not start:
            raise ModelUnavailable(f"No endpoint is running for run '{ref}'.", "Start one first.")
        endpoint = running or launch.start_for_run(ws, ref)
        if running is not None:
            endpoint = launch.wait_ready(ws, endpoint.id)
        return Target(url=endpoint.url, base=endpoint.base_name, tuned=ref,
                      models=[endpoint.base_name, *endpoint.adapters], run_id=ref, endpoint_id=endpoint.id,
                      started=running is None)
    endpoint = endpoints.get_endpoint(ws, ref)
    if not endpoint.live:
        raise ModelUnavailable(f"Endpoint '{endpoint.name}' is {endpoint.status}. {endpoint.error or ''}".strip(),
                               "Start it again, or pick another one.")
    if endpoint.status == "starting":
        endpoint = launch.wait_ready(ws, endpoint.id)
    models = [endpoint.base_name, *endpoint.adapters]
    return Target(url=endpoint.url, base=endpoint.base_name, tuned=next(iter(endpoint.adapters), None),
                  models=models, run_id=endpoint.run_id, endpoint_id=endpoint.id, api_key=endpoint.api_key)

"""Request bodies of TGI's API (shared/tgi/openapi.json) and their validation, with TGI's messages.

Every field of TGI's schema is known here; a field this endpoint cannot honour (grammar, watermark,
best_of > 1, tools, response_format, n > 1, logit_bias) and any field TGI does not have are refused
with a 422 `validation` error: a client must never believe it got what it did not ask for.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

MAX_STOP_SEQUENCES = 4
MAX_TOP_N_TOKENS = 5
# What clients send for "no particular model": absent, TGI's own "tgi", and the "dummy" that
# huggingface_hub.InferenceClient puts in chat requests made without a model name.
BASE_ALIASES = {"", "tgi", "dummy", "base"}


class ApiError(Exception):
    """An error answered in TGI's shape: {"error": message, "error_type": kind} with its status."""

    def __init__(self, status: int, error_type: str, message: str):
        super().__init__(message)
        self.status, self.error_type, self.message = status, error_type, message

    def body(self) -> dict:
        return {"error": self.message, "error_type": self.error_type}


def invalid(message: str) -> ApiError:
    return ApiError(422, "validation", f"Input validation error: {message}")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GenerateParameters(Strict):
    adapter_id: str | None = None
    best_of: int | None = None
    decoder_input_details: bool = False
    details: bool = False
    do_sample: bool = False
    frequency_penalty: float | None = None
    grammar: Any = None
    max_new_tokens: int | None = None
    repetition_penalty: float | None = None
    return_full_text: bool | None = None
    seed: int | None = None
    stop: list[str] = []
    temperature: float | None = None
    top_k: int | None = None
    top_n_tokens: int | None = None
    top_p: float | None = None
    truncate: int | None = None
    typical_p: float | None = None
    watermark: bool = False


class GenerateRequest(Strict):
    inputs: str
    parameters: GenerateParameters = GenerateParameters()


class CompatGenerateRequest(GenerateRequest):
    stream: bool = False


class TextChunk(Strict):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str
    content: str | list[dict] | None = None
    name: str | None = None
    tool_calls: list | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        if self.tool_calls:
            raise invalid("messages with `tool_calls` are not supported by this endpoint")
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        parts = []
        for chunk in self.content:
            if chunk.get("type") != "text":
                raise invalid(f"message content of type `{chunk.get('type')}` is not supported (text only)")
            try:
                parts.append(TextChunk.model_validate(chunk).text)
            except ValidationError as exc:
                raise translate(exc) from None
        return "".join(parts)


class StreamOptions(Strict):
    include_usage: bool = False


class ChatRequest(Strict):
    messages: list[Message]
    model: str | None = None
    frequency_penalty: float | None = None
    logit_bias: Any = None
    logprobs: bool | None = None
    max_tokens: int | None = None
    n: int | None = None
    presence_penalty: float | None = None
    response_format: Any = None
    seed: int | None = None
    stop: list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    tool_choice: Any = None
    tool_prompt: str | None = None
    tools: list | None = None
    top_logprobs: int | None = None
    top_p: float | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop(cls, value):  # OpenAI allows a single string
        return [value] if isinstance(value, str) else value


def parse(model: type[BaseModel], body: Any) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise translate(exc) from None


def translate(exc: ValidationError) -> ApiError:
    """Pydantic's first complaint as one TGI-style sentence naming the field."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return invalid(f"unknown parameter `{where}`: this endpoint does not support it (see /docs)")
    if err["type"] == "missing":
        return invalid(f"`{where}` is required")
    return invalid(f"`{where}`: {err['msg']}")


def check_sampling(*, temperature, top_k, top_p, typical_p, repetition_penalty, frequency_penalty,
                   presence_penalty=None, seed, stop, chat: bool = False) -> None:
    if temperature is not None and (temperature < 0 or (temperature == 0 and not chat)):
        raise invalid("`temperature` must be strictly positive" if not chat else "`temperature` must be >= 0")
    if top_k is not None and top_k <= 0:
        raise invalid("`top_k` must be strictly positive")
    if top_p is not None and not 0 < top_p <= 1:
        raise invalid("`top_p` must be > 0.0 and <= 1.0")
    if typical_p is not None and not 0 < typical_p <= 1:
        raise invalid("`typical_p` must be > 0.0 and <= 1.0")
    if repetition_penalty is not None and repetition_penalty <= 0:
        raise invalid("`repetition_penalty` must be strictly positive")
    for name, value in (("frequency_penalty", frequency_penalty), ("presence_penalty", presence_penalty)):
        if value is not None and not -2 <= value <= 2:
            raise invalid(f"`{name}` must be >= -2.0 and <= 2.0")
    if seed is not None and seed < 0:
        raise invalid("`seed` must be >= 0")
    if stop and len(stop) > MAX_STOP_SEQUENCES:
        raise invalid(f"`stop` supports up to {MAX_STOP_SEQUENCES} stop sequences. Given: {len(stop)}")
    if stop and any(s == "" for s in stop):
        raise invalid("`stop` sequences cannot be empty strings")


def check_generate_unsupported(p: GenerateParameters) -> None:
    if p.best_of not in (None, 1):
        raise invalid("`best_of` > 1 is not supported by this endpoint")
    if p.grammar is not None:
        raise invalid("`grammar` (guided generation) is not supported by this endpoint")
    if p.watermark:
        raise invalid("`watermark` is not supported by this endpoint")
    if p.top_n_tokens is not None and not 0 <= p.top_n_tokens <= MAX_TOP_N_TOKENS:
        raise invalid(f"`top_n_tokens` must be >= 0 and <= {MAX_TOP_N_TOKENS}")
    if p.truncate is not None and p.truncate <= 0:
        raise invalid("`truncate` must be strictly positive")


def check_chat_unsupported(r: ChatRequest) -> None:
    if r.n not in (None, 1):
        raise invalid("`n` > 1 is not supported by this endpoint")
    if r.logit_bias:
        raise invalid("`logit_bias` is not supported by this endpoint")
    if r.response_format is not None:
        raise invalid("`response_format` (guided generation) is not supported by this endpoint")
    if r.tools or r.tool_prompt is not None or r.tool_choice not in (None, "auto", "none"):
        raise invalid("tools (`tools`, `tool_choice`, `tool_prompt`) are not supported by this endpoint")
    if r.top_logprobs is not None:
        if not 0 <= r.top_logprobs <= MAX_TOP_N_TOKENS:
            raise invalid(f"`top_logprobs` must be >= 0 and <= {MAX_TOP_N_TOKENS}")
        if not r.logprobs:
            raise invalid("`top_logprobs` needs `logprobs` set to true")
    if r.stream_options is not None and not r.stream:
        raise invalid("`stream_options` is only allowed with `stream` set to true")

"""Talking to an endpoint over HTTP: one client, huggingface_hub.InferenceClient, for the embedded endpoint,
a real TGI server, vLLM or SGLang alike, with its failures turned into errors that say what to do; and
the probes the registry uses (/health, /v1/models, /info).

The Chat tab, the evaluation and publish's verification all go through here.
"""

from __future__ import annotations

from collections.abc import Iterator

from studio.core.errors import InvalidInput, ModelUnavailable

CHAT_TIMEOUT_S = 300.0


def client(url: str, timeout: float = CHAT_TIMEOUT_S, api_key: str | None = None, priority: str | None = None):
    """`priority="batch"` marks an evaluation's requests: the embedded endpoint admits waiting chat requests
    before them (other servers ignore the header)."""
    from huggingface_hub import InferenceClient

    headers = {"X-Studio-Priority": priority} if priority else None
    return InferenceClient(base_url=url.rstrip("/"), timeout=timeout, api_key=api_key, headers=headers)


def request_kwargs(body: dict) -> dict:
    return {k: v for k, v in body.items() if k != "messages"}


def stream_chat(url: str, body: dict, api_key: str | None = None) -> Iterator[str]:
    """Yield the answer's text piece by piece."""
    inference = client(url, api_key=api_key)  # held while streaming: a collected client closes the stream under us
    with _errors(url):
        for chunk in inference.chat_completion(body["messages"], **{**request_kwargs(body), "stream": True}):
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content


def complete_chat(url: str, body: dict, api_key: str | None = None, priority: str | None = None) -> str:
    with _errors(url):
        inference = client(url, api_key=api_key, priority=priority)
        out = inference.chat_completion(body["messages"], **{**request_kwargs(body), "stream": False})
    return out.choices[0].message.content or ""


class _errors:
    """Client failures as StudioErrors that say what to do."""

    def __init__(self, url: str):
        self.url = url

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or isinstance(exc, GeneratorExit):
            return False
        import httpx
        from huggingface_hub.errors import HfHubHTTPError, InferenceTimeoutError, TextGenerationError

        if isinstance(exc, TextGenerationError):
            raise InvalidInput(f"The endpoint refused the request: {exc}", "Change the request as the message says.")
        if isinstance(exc, HfHubHTTPError):
            detail = _error_text(exc)
            raise InvalidInput(f"The endpoint at {self.url} answered {detail}", "Check the model name and settings.")
        if isinstance(exc, InferenceTimeoutError):
            raise ModelUnavailable(f"The endpoint at {self.url} did not answer in time.",
                                   "Ask for fewer new tokens, or check that it is not overloaded.")
        if isinstance(exc, (httpx.HTTPError, ConnectionError)) or "connect" in type(exc).__name__.lower():
            raise ModelUnavailable(f"The endpoint at {self.url} cannot be reached ({type(exc).__name__}).",
                                   "Start it again (Chat tab or `studio endpoints start`), or check the URL.")
        return False


def _error_text(exc) -> str:
    response = getattr(exc, "response", None)
    try:
        payload = response.json()
        return f"{response.status_code}: {payload.get('error') or payload}"
    except Exception:
        return str(exc).splitlines()[0]


def served_models(url: str, timeout: float = 10.0, api_key: str | None = None) -> list[str]:
    """The names an endpoint answers to (GET /v1/models): the base model first, then its adapters."""
    import httpx

    url = url.rstrip("/")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(url + "/v1/models", timeout=timeout, headers=headers)
        if response.status_code == 401:
            given = "refused the one given" if api_key else "none was given"
            raise InvalidInput(
                f"The server at {url} asks for an API key and {given}.",
                "Register it with --api-key-env NAME, NAME being an environment variable of the studio that holds "
                "its key (the key itself is never stored).")
        response.raise_for_status()
        names = [m["id"] for m in response.json()["data"]]
    except (httpx.HTTPError, KeyError, TypeError, ValueError) as exc:
        raise ModelUnavailable(
            f"No OpenAI-compatible model list at {url}/v1/models ({type(exc).__name__}: {exc}).",
            "Check the URL: it should be a running TGI, vLLM or SGLang server (or a studio endpoint).",
        ) from exc
    try:  # our endpoint (and TGI) also tell which adapters exist through /info
        info = httpx.get(url + "/info", timeout=timeout, headers=headers).json()
        names += [a["id"] for a in info.get("adapters") or [] if a["id"] not in names]
    except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
        pass
    if not names:
        raise ModelUnavailable(f"The server at {url} lists no models.", "Check that it has finished loading.")
    return names


def endpoint_info(url: str, timeout: float = 10.0) -> dict:
    import httpx

    try:
        return httpx.get(url.rstrip("/") + "/info", timeout=timeout).json()
    except (httpx.HTTPError, ValueError):
        return {}




def healthy(url: str, timeout: float = 2.0) -> bool:
    """True if the server at `url` answers /health with 200."""
    import httpx

    try:
        return httpx.get(url.rstrip("/") + "/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False

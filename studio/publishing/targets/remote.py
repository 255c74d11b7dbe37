"""A TGI, vLLM or SGLang server that already runs, given by URL (and an API key): check it is up and
accepts the key, learn what it serves (/info on TGI, /v1/models on OpenAI-compatible servers), confirm
the adapter is there, register it for the Chat tab; the verification then catches an adapter that TGI
silently replaced by the base model. Also the commands that start each server on the export.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator

from studio.core.errors import Conflict, InvalidInput, ModelUnavailable
from studio.publishing.source import RunSource, token_limits
from studio.publishing.targets.base import Deployed, Options, Plan, Progress, Target
from studio.publishing.verify import Served

if TYPE_CHECKING:
    from studio.publishing.export import Export

VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM's --max-lora-rank accepts


class RemoteOptions(Options):
    url: str = Field(..., description="The server's address, like https://tgi.example.org or http://10.0.0.5:8000.")
    api_key: str | None = Field(None, description="Its API key or token, when it asks for one (never stored).")
    merged: bool = Field(True, description="On: the server serves the merged model. Off: it serves the base model "
                         "with this run's adapter loaded under the name below.")
    model_name: str | None = Field(None, description="The name the server knows the adapter (or model) by; "
                                   "empty: the run's name (as the studio serves it).")
    engine: Literal["auto", "tgi", "vllm", "sglang"] = Field("auto", description="Which server it is; 'auto' asks "
                                                              "it (/info answers on TGI).")
    timeout: float = Field(30, gt=0, description="Seconds to wait for each answer from the server.")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        v = (v or "").strip().rstrip("/")
        if v.endswith("/v1"):
            v = v[:-3]
        if not v.startswith(("http://", "https://")) or len(v) < 10:
            raise ValueError("give an http(s) address, like http://host:8080")
        return v


@dataclass
class ServerFacts:
    engine: str
    model_id: str | None
    models: list[str]
    max_input_tokens: int | None = None
    max_total_tokens: int | None = None
    roots: dict[str, str] = field(default_factory=dict)  # vLLM: /v1/models id -> the folder or hub id it loaded
    parents: dict[str, str] = field(default_factory=dict)  # vLLM: adapter id -> the base model's id


def probe_server(url: str, api_key: str | None, timeout: float) -> ServerFacts:
    """Is it up, does it accept the key, which server is it and what does it serve."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def get(path: str) -> httpx.Response:
        try:
            response = httpx.get(url + path, headers=headers, timeout=timeout)
        except httpx.HTTPError as exc:
            raise ModelUnavailable(
                f"The server at {url} cannot be reached ({type(exc).__name__}: {exc}).",
                "Check the address and port, that the server runs, and that this machine may reach it.",
            ) from exc
        if response.status_code in (401, 403):
            what = "refused the API key" if api_key else "asks for an API key and none was given"
            raise InvalidInput(
                f"The server at {url} {what} (HTTP {response.status_code} on {path}).",
                "Give the right key in the API key field (--api-key): the one the server was started with "
                "(vLLM/SGLang --api-key, or behind a gateway), not a Hub token.",
            )
        return response

    health = get("/health")
    if health.status_code >= 500:
        raise ModelUnavailable(f"The server at {url} is up but not healthy (HTTP {health.status_code}).",
                               "Wait until it has loaded the model, then publish again.")
    info = get("/info")
    facts = ServerFacts(engine="openai", model_id=None, models=[])
    if info.status_code == 200 and "model_id" in (info.json() if _is_json(info) else {}):
        data = info.json()
        facts = ServerFacts(engine="tgi", model_id=data["model_id"], models=[data["model_id"]],
                            max_input_tokens=data.get("max_input_tokens"),
                            max_total_tokens=data.get("max_total_tokens"))
    models = get("/v1/models")
    if models.status_code == 200 and _is_json(models):
        entries = [m for m in models.json().get("data", []) if m.get("id")]
        ids = [m["id"] for m in entries]
        facts.models = list(dict.fromkeys(facts.models + ids))
        facts.roots = {m["id"]: m["root"] for m in entries if m.get("root")}
        facts.parents = {m["id"]: m["parent"] for m in entries if m.get("parent")}
        if facts.engine != "tgi":
            facts.model_id = ids[0] if ids else None
            if any(m.get("owned_by") == "vllm" for m in entries):
                facts.engine = "vllm"
    elif facts.engine != "tgi":
        raise ModelUnavailable(f"The server at {url} answers neither /info (TGI) nor /v1/models (vLLM, SGLang).",
                               "Check that the address is the server's root, not a page in front of it.")
    return facts


def _same_model(root: str, expected: str) -> bool:
    """The same weights: one folder (after links), one hub id, or a hub id and a local copy of it."""
    a, b = root.rstrip("/"), expected.rstrip("/")
    if a == b:
        return True
    if Path(a).exists() and Path(b).exists():
        return Path(a).resolve() == Path(b).resolve()
    return Path(a).name.lower() == Path(b).name.lower()


def _is_json(response) -> bool:
    return "json" in response.headers.get("content-type", "")


def vllm_rank(r: int) -> int:
    return next((v for v in VLLM_LORA_RANKS if v >= r), max(r, VLLM_LORA_RANKS[-1]))


class RemoteTarget(Target):
    kind = "remote"
    label = "A running TGI, vLLM or SGLang server (by URL)"
    help = ("Point at a server that already runs: the studio checks it is up, that it serves this model or "
            "adapter, verifies its replies and registers it. Start it with the export and the command shown.")
    Options = RemoteOptions

    def slot(self, source: RunSource) -> str:
        return f"remote:{self.options.url}"

    def served_name(self, source: RunSource) -> str:
        return self.options.model_name or source.adapter_name

    def launch_commands(self, source: RunSource, folder: str) -> dict[str, str]:
        """How to start each engine on the exported folder (shown; run on the server)."""
        limits = token_limits(self.ws, source)
        name = self.served_name(source)
        rank = vllm_rank(source.lora_r or 16)
        if self.options.merged:
            return {
                "tgi": f"text-generation-launcher --model-id {folder} --max-input-tokens {limits.max_input_tokens} "
                       f"--max-total-tokens {limits.max_total_tokens} --usage-stats off",
                "vllm": f"vllm serve {folder} --served-model-name {name} --max-model-len {limits.max_total_tokens}",
                "sglang": f"python -m sglang.launch_server --model-path {folder} --served-model-name {name} "
                          f"--context-length {limits.max_total_tokens}",
            }
        from studio.models.resolve import resolve

        base = resolve(self.ws, source.base_model).source  # a hub id, or the local folder it lives in
        return {
            "tgi": f"text-generation-launcher --model-id {base} --lora-adapters {name}={folder} "
                   f"--max-input-tokens {limits.max_input_tokens} --max-total-tokens {limits.max_total_tokens} "
                   "--usage-stats off",
            "vllm": f"vllm serve {base} --enable-lora --lora-modules {name}={folder} --max-lora-rank {rank} "
                    f"--max-model-len {limits.max_total_tokens}",
            "sglang": f"python -m sglang.launch_server --model-path {base} --enable-lora --lora-paths {name}={folder} "
                      f"--max-lora-rank {rank} --context-length {limits.max_total_tokens}",
        }

    def _check_base(self, source: RunSource, facts: ServerFacts) -> None:
        """An adapter only fits the base it was trained on: refuse a server whose base model is another."""
        from studio.models.resolve import resolve

        bases = [m for m in facts.models if m in facts.roots and m not in facts.parents]
        if not bases:
            return  # TGI, or a server that does not say what it loaded: the verification will tell
        expected = resolve(self.ws, source.base_model).source
        root = facts.roots[bases[0]]
        if not _same_model(root, expected):
            raise Conflict(
                f"The server at {self.options.url} serves another base model: '{bases[0]}' loaded from {root}; "
                f"run {source.run_id} was trained on {source.base_model} ({expected}).",
                "An adapter works only on its own base model: point at a server started with "
                f"--model {expected}, or publish the merged model.",
            )

    def plan(self, source: RunSource, export_dir: str | None = None) -> Plan:
        o = self.options
        commands = self.launch_commands(source, export_dir or "/path/to/export/model")
        return Plan(
            target=self.kind, slot=self.slot(source), export_kind=self.export_kind(),
            steps=[f"export {'the merged model' if o.merged else 'the adapter'} (copy its model/ folder to the "
                   "server and start the server with it, e.g. with a command below)",
                   f"check {o.url} is up (/health) and accepts the key, read /info or /v1/models",
                   "confirm it serves " + ("the model" if o.merged else f"the adapter '{self.served_name(source)}'"),
                   "verify the replies (an adapter TGI does not know silently falls back to the base model: the "
                   "verification compares with the base model's replies to catch it)",
                   "register it so the Chat tab can talk to it"],
            url=o.url, limits=token_limits(self.ws, source),
            notes=[f"{engine}: {cmd}" for engine, cmd in commands.items()],
        )

    def deploy(self, source: RunSource, export: Export, progress: Progress) -> Deployed:
        o = self.options
        progress(0.1, f"asking {o.url} what it serves")
        facts = probe_server(o.url, o.api_key, o.timeout)
        engine = facts.engine if o.engine == "auto" else o.engine
        name = self.served_name(source)
        checks = []
        if not o.merged:
            listed = name in facts.models
            self._check_base(source, facts)
            if engine in ("vllm", "sglang", "openai") and not listed:
                folder = str(export.model_dir)
                raise Conflict(
                    f"The server at {o.url} does not serve an adapter named '{name}'; it lists: "
                    f"{', '.join(facts.models) or 'nothing'}.",
                    f"Load it with: curl -X POST {o.url}/v1/load_lora_adapter -H 'Content-Type: application/json' "
                    f"-d '{{\"lora_name\": \"{name}\", \"lora_path\": \"{folder}\"}}' (vLLM started with "
                    "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and --enable-lora; the folder must be on the server), "
                    f"or restart it with the adapter: {self.launch_commands(source, folder)['vllm']}",
                )
            if engine == "tgi" and not listed:
                checks.append({"ok": True, "cause": "adapter_unlisted",
                               "text": "TGI does not list its adapters; the verification compares the replies with "
                                       "the base model's to make sure the adapter is applied."})
        model = name if not o.merged else (o.model_name or facts.model_id or "tgi")
        served = Served(url=o.url, model=model, adapter_id=None if o.merged else name, api_key=o.api_key,
                        max_total_tokens=facts.max_total_tokens, token_ids=engine == "vllm")
        return Deployed(url=o.url, served=served, checks=checks, details={
            "engine": engine, "model_id": facts.model_id, "models": facts.models,
            "max_input_tokens": facts.max_input_tokens, "max_total_tokens": facts.max_total_tokens,
            "launch_commands": self.launch_commands(source, str(export.model_dir))})

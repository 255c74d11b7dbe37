"""Where a run is published. One small interface, one plain class per target:

    plan(source)                 -> Plan      what will happen (command, repo, limits), no side effects
    deploy(source, export, cb)   -> Deployed  do it; how to talk to the result (None: the user runs it)

Each target's options are a pydantic model (extra="forbid"); the field descriptions are the help text
of the Publish tab and of `studio publish`. Secrets (api_key, token) are never stored with a deployment.
The Hub and Inference Endpoint targets live in studio/publish/hub.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from studio.errors import Conflict, InvalidInput, ModelUnavailable
from studio.publish import docker
from studio.publish.source import RunSource, TokenLimits, token_limits
from studio.publish.verify import Served

if TYPE_CHECKING:
    from studio.publish.export import Export
    from studio.workspace import Workspace

Progress = Callable[[float, str], None]
SECRET_FIELDS = {"api_key", "token"}
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM's --max-lora-rank accepts


@dataclass
class Plan:
    target: str
    slot: str  # publishing again into the same slot replaces; rollback puts the previous version back
    export_kind: str  # merged | adapter
    steps: list[str]
    command: list[str] | None = None
    files: dict[str, str] = field(default_factory=dict)  # name -> content to copy (a compose file)
    limits: TokenLimits | None = None
    url: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "limits"}
        if self.command:
            out["command_text"] = docker.command_text(self.command)
        if self.limits:
            out["limits"] = {"max_input_tokens": self.limits.max_input_tokens,
                             "max_total_tokens": self.limits.max_total_tokens, "basis": self.limits.basis}
        return out


@dataclass
class Deployed:
    url: str
    served: Served | None  # None: nothing answers yet (the user runs the command), so no verification
    details: dict[str, Any] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)  # extra findings: {"ok", "cause", "text"}
    message: str = ""
    cleanup: Callable[[], None] | None = None  # e.g. stop a temporary endpoint after verification


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def public(self) -> dict[str, Any]:
        """The options as stored with the deployment: secrets left out."""
        data = self.model_dump(exclude=SECRET_FIELDS)
        data.update({f"{k}_set": bool(getattr(self, k)) for k in SECRET_FIELDS if k in type(self).model_fields})
        return data


def _slug(value: str) -> str:
    value = (value or "").strip()
    if not value or not all(c.isalnum() or c in "-_." for c in value) or len(value) > 48:
        raise ValueError("use 1 to 48 letters, digits, '-', '_' or '.'")
    return value


class Target:
    kind: ClassVar[str]
    label: ClassVar[str]
    help: ClassVar[str]
    Options: ClassVar[type[Options]]

    def __init__(self, ws: Workspace, options: Options):
        self.ws = ws
        self.options = options

    @classmethod
    def from_dict(cls, ws: Workspace, options: dict[str, Any] | None) -> Target:
        clean = {k: v for k, v in (options or {}).items() if v is not None and not k.endswith("_set")}
        try:
            return cls(ws, cls.Options.model_validate(clean))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'options'}: {e['msg']}" for e in exc.errors()
            )
            raise InvalidInput(f"The {cls.kind} target's options are not valid: {problems}.",
                               f"See `studio publish --help` for the {cls.kind} options.") from exc

    def export_kind(self) -> str:
        return "merged" if getattr(self.options, "merged", True) else "adapter"

    def slot(self, source: RunSource) -> str:
        raise NotImplementedError

    def plan(self, source: RunSource, export_dir: str | None = None) -> Plan:
        """export_dir: the export's model folder when one exists already (commands then name it)."""
        raise NotImplementedError

    def deploy(self, source: RunSource, export: Export, progress: Progress) -> Deployed:
        raise NotImplementedError


# -- the embedded endpoint --------------------------------------------------------------------------------


class LocalOptions(Options):
    name: str = Field("published", description="A name for this local deployment. Publishing again under the "
                      "same name replaces what runs there; rollback puts the previous version back.")
    merged: bool = Field(True, description="Serve the merged model (one folder, as a production server would) "
                         "rather than the base model with the adapter on top.")
    port: int | None = Field(None, description="The port on this machine (empty: keep the previous one, or "
                             "pick a free one).")
    quantize: Literal["none", "4bit"] = Field("none", description="'none' serves exactly the exported weights; "
                                              "'4bit' saves GPU memory (CUDA only) at a small cost in fidelity.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _slug(v)


class LocalTarget(Target):
    kind = "local"
    label = "This machine (embedded endpoint)"
    help = "Serve it here with the studio's own TGI-compatible server; no Docker needed."
    Options = LocalOptions

    def endpoint_name(self) -> str:
        return f"publish-{self.options.name}"

    def slot(self, source: RunSource) -> str:
        return f"local:{self.options.name}"

    def plan(self, source: RunSource, export_dir: str | None = None) -> Plan:
        o = self.options
        what = "the merged model" if o.merged else f"{source.base_model} with the adapter '{source.adapter_name}'"
        return Plan(
            target=self.kind, slot=self.slot(source), export_kind=self.export_kind(),
            steps=[
                f"export {'the merged model' if o.merged else 'the adapter'} of {source.run_id} (a background job)",
                f"stop the endpoint '{self.endpoint_name()}' if it runs, and start one serving {what}"
                + (f" on port {o.port}" if o.port else ""),
                "verify: the run's prompts through the studio model and the endpoint, greedy, compared",
            ],
            url=f"http://127.0.0.1:{o.port}" if o.port else None,
        )

    def deploy(self, source: RunSource, export: Export, progress: Progress) -> Deployed:
        from studio import endpoints

        o = self.options
        port = o.port
        for ep in endpoints.list_endpoints(self.ws, include_stopped=False):
            if ep.kind == "local" and ep.name == self.endpoint_name():
                progress(0.1, f"stopping the endpoint that served the previous version ({ep.url})")
                endpoints.stop_endpoint(self.ws, ep.id, reason="replaced by a new publish")
                port = port or ep.port
        progress(0.2, "starting the endpoint (loading the model)")
        adapters = None if o.merged else {source.adapter_name: str(export.model_dir)}
        base = str(export.model_dir) if o.merged else source.base_model
        kwargs = dict(run_id=source.run_id, name=self.endpoint_name(), quantize=o.quantize)
        try:
            ep = endpoints.start_endpoint(self.ws, base, adapters, port=port, **kwargs)
        except Conflict:
            if o.port:
                raise
            # the previous endpoint's port is still held by its closing connections (TIME_WAIT)
            progress(0.3, f"port {port} is not free yet; serving on another port")
            ep = endpoints.start_endpoint(self.ws, base, adapters, port=None, **kwargs)
        model = ep.base_name if o.merged else source.adapter_name
        served = Served(url=ep.url, model=model, adapter_id=None if o.merged else source.adapter_name)
        return Deployed(url=ep.url, served=served, details={"endpoint_id": ep.id, "port": ep.port})


# -- TGI in Docker ---------------------------------------------------------------------------------------


class DockerOptions(Options):
    name: str = Field("published", description="A name for this deployment; the container is called "
                      "studio-tgi-NAME. Publishing again under the same name replaces the container.")
    merged: bool = Field(True, description="Serve the merged model (recommended: TGI would merge an adapter "
                         "in fp16 itself). Off: the base model with --lora-adapters.")
    image: str = Field(docker.IMAGE, description="The TGI image.")
    tag: str = Field(docker.TAG, description="The TGI image tag (version).")
    gpus: str = Field("all", description="Docker's --gpus value: 'all', a count, or 'device=0'; empty for none.")
    host: str = Field("127.0.0.1", description="The address the port is published on; 0.0.0.0 opens it to the "
                      "network.")
    port: int = Field(8080, ge=1, le=65535, description="The port on this machine mapped to TGI's port 80.")
    quantize: Literal[docker.QUANTIZE] | None = Field(  # type: ignore[valid-type]
        None, description="Let TGI quantize the weights at load time (saves GPU memory); empty for 16-bit.")
    max_input_tokens: int | None = Field(None, ge=1, description="Override the prompt limit derived from the "
                                         "data.")
    max_total_tokens: int | None = Field(None, ge=2, description="Override the prompt + answer limit derived "
                                         "from the data.")
    timeout: float = Field(900, gt=0, description="Seconds to wait for TGI's /health after the container starts.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _slug(v)


class DockerTarget(Target):
    kind = "tgi-docker"
    label = "TGI in Docker on this machine"
    help = ("Start Text Generation Inference in Docker with the exported folder mounted at /data; without a "
            "Docker engine, get the exact command and a compose file to run elsewhere.")
    Options = DockerOptions

    def slot(self, source: RunSource) -> str:
        return f"tgi-docker:{self.options.name}"

    def launch(self, source: RunSource, export_dir: str) -> docker.TgiLaunch:
        o = self.options
        limits = self.limits(source)
        base = None
        if not o.merged:
            from studio.models import resolve

            resolved = resolve(self.ws, source.base_model)
            base = resolved.source
        return docker.TgiLaunch(
            export_dir=export_dir, mount_dir=str(self.ws.exports_dir), container=f"studio-tgi-{o.name}",
            max_input_tokens=limits.max_input_tokens, max_total_tokens=limits.max_total_tokens,
            image=o.image, tag=o.tag, gpus=o.gpus, host=o.host, port=o.port, quantize=o.quantize,
            base_model=base, adapter_name=None if o.merged else source.adapter_name,
            env=("HF_TOKEN",) if base and not base.startswith("/") else (),  # TGI downloads a hub base model
        )

    def limits(self, source: RunSource) -> TokenLimits:
        o = self.options
        derived = token_limits(self.ws, source)
        total = o.max_total_tokens or derived.max_total_tokens
        inp = o.max_input_tokens or min(derived.max_input_tokens, total - 1)
        if inp >= total:
            raise InvalidInput(f"max_input_tokens ({inp}) must be smaller than max_total_tokens ({total}).",
                               "Raise max_total_tokens or lower max_input_tokens.")
        basis = derived.basis if not (o.max_total_tokens or o.max_input_tokens) else "set by you"
        return TokenLimits(max_input_tokens=inp, max_total_tokens=total, basis=basis)

    def plan(self, source: RunSource, export_dir: str | None = None) -> Plan:
        launch = self.launch(source, export_dir or str(self.ws.exports_dir / "<export-id>" / "model"))
        ok, why = docker.engine_status()
        url = f"http://{launch.host if launch.host not in ('', '0.0.0.0') else '127.0.0.1'}:{launch.port}"
        steps = [f"export {'the merged model' if self.options.merged else 'the adapter'} of {source.run_id}",
                 f"mount {launch.mount_dir} at /data in the container"]
        if ok:
            steps += [f"replace the container {launch.container} and start TGI (Docker {why})",
                      f"wait up to {self.options.timeout:.0f} s for {url}/health", "verify the replies"]
        else:
            steps += [f"Docker cannot run here ({why}): the command and the compose file are shown to copy; "
                      "after you start it, re-verify the deployment"]
        return Plan(target=self.kind, slot=self.slot(source), export_kind=self.export_kind(), steps=steps,
                    command=docker.docker_argv(launch), files={"compose.yaml": docker.compose_file(launch)},
                    limits=self.limits(source), url=url,
                    notes=[] if ok else [f"Docker: {why}."])

    def deploy(self, source: RunSource, export: Export, progress: Progress) -> Deployed:
        launch = self.launch(source, str(export.model_dir))
        argv = docker.docker_argv(launch)
        plan = self.plan(source, str(export.model_dir))
        files = {"compose.yaml": docker.compose_file(launch)}
        (export.folder / "compose.yaml").write_text(files["compose.yaml"], encoding="utf-8")
        (export.folder / "docker-run.sh").write_text("#!/bin/sh\n" + docker.command_text(argv) + "\n")
        details = {"command": argv, "command_text": docker.command_text(argv), "container": launch.container,
                   "compose_file": str(export.folder / "compose.yaml"), "limits": plan.to_dict()["limits"]}
        ok, why = docker.engine_status()
        if not ok:
            return Deployed(url=plan.url, served=None, details=details, message=(
                f"Docker cannot run here ({why}). Run this on a machine with Docker and a GPU (the export folder "
                f"{export.folder} must be there too), then re-verify:\n{docker.command_text(argv)}"))
        progress(0.1, f"starting {launch.image}:{launch.tag} as {launch.container}")
        docker.run_container(argv, launch.container, plan.url, timeout=self.options.timeout, progress=progress)
        adapter = None if self.options.merged else source.adapter_name
        return Deployed(url=plan.url, served=Served(url=plan.url, model=adapter or "tgi", adapter_id=adapter,
                                                    max_total_tokens=launch.max_total_tokens), details=details)


# -- a remote TGI / vLLM / SGLang -------------------------------------------------------------------------


class RemoteOptions(Options):
    url: str = Field(..., description="The server's address, like https://tgi.example.org or http://10.0.0.5:8000.")
    api_key: str | None = Field(None, description="Its API key or token, when it asks for one (never stored).")
    merged: bool = Field(True, description="On: the server serves the merged model. Off: it serves the base model "
                         "with this run's adapter loaded under the name below.")
    model_name: str | None = Field(None, description="The name the server knows the adapter (or model) by; "
                                   "empty: the run id.")
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
            raise InvalidInput(
                f"The server at {url} refused the API key (HTTP {response.status_code}).",
                "Give the right key in the API key field (--api-key); it is the server's, not the Hub's.",
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
        ids = [m.get("id") for m in models.json().get("data", []) if m.get("id")]
        facts.models = list(dict.fromkeys(facts.models + ids))
        if facts.engine != "tgi":
            facts.model_id = ids[0] if ids else None
    elif facts.engine != "tgi":
        raise ModelUnavailable(f"The server at {url} answers neither /info (TGI) nor /v1/models (vLLM, SGLang).",
                               "Check that the address is the server's root, not a page in front of it.")
    return facts


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
        base = source.base_model
        return {
            "tgi": f"text-generation-launcher --model-id {base} --lora-adapters {name}={folder} "
                   f"--max-input-tokens {limits.max_input_tokens} --max-total-tokens {limits.max_total_tokens} "
                   "--usage-stats off",
            "vllm": f"vllm serve {base} --enable-lora --lora-modules {name}={folder} --max-lora-rank {rank} "
                    f"--max-model-len {limits.max_total_tokens}",
            "sglang": f"python -m sglang.launch_server --model-path {base} --enable-lora --lora-paths {name}={folder} "
                      f"--max-lora-rank {rank} --context-length {limits.max_total_tokens}",
        }

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
            if engine in ("vllm", "sglang", "openai") and not listed:
                raise Conflict(
                    f"The server at {o.url} does not serve an adapter named '{name}'; it lists: "
                    f"{', '.join(facts.models) or 'nothing'}.",
                    f"Start it with the adapter loaded under that name, e.g. "
                    f"{self.launch_commands(source, str(export.model_dir))['vllm']}",
                )
            if engine == "tgi" and not listed:
                checks.append({"ok": True, "cause": "adapter_unlisted",
                               "text": "TGI does not list its adapters; the verification compares the replies with "
                                       "the base model's to make sure the adapter is applied."})
        _register_for_chat(self.ws, o.url, f"deployed {name} at {o.url}")
        model = name if not o.merged else (o.model_name or facts.model_id or "tgi")
        served = Served(url=o.url, model=model, adapter_id=None if o.merged else name, api_key=o.api_key,
                        max_total_tokens=facts.max_total_tokens)
        return Deployed(url=o.url, served=served, checks=checks, details={
            "engine": engine, "model_id": facts.model_id, "models": facts.models,
            "max_input_tokens": facts.max_input_tokens, "max_total_tokens": facts.max_total_tokens,
            "launch_commands": self.launch_commands(source, str(export.model_dir))})


def _register_for_chat(ws: Workspace, url: str, name: str) -> None:
    """Make a deployed URL one of the endpoints the Chat tab offers (once)."""
    from studio import endpoints
    from studio.errors import NotFound

    try:
        endpoints.get_endpoint(ws, url, refresh=False)
    except NotFound:
        endpoints.register_remote(ws, url, name=name, check=False)


def target_classes() -> dict[str, type[Target]]:
    from studio.publish.hub import HubTarget, InferenceEndpointTarget

    return {cls.kind: cls for cls in (LocalTarget, DockerTarget, RemoteTarget, HubTarget, InferenceEndpointTarget)}


def make_target(ws: Workspace, kind: str, options: dict[str, Any] | None = None) -> Target:
    classes = target_classes()
    if kind not in classes:
        raise InvalidInput(f"'{kind}' is not a publishing target.", f"Choose one of: {', '.join(classes)}.")
    return classes[kind].from_dict(ws, options)

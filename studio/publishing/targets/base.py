"""Where a run is published. One small interface, one plain class per target:

    plan(source)                 -> Plan      what will happen (command, repo, limits), no side effects
    deploy(source, export, cb)   -> Deployed  do it; how to talk to the result (None: the user runs it)

Each target's options are a pydantic model (extra="forbid"); the field descriptions are the help text
of the Publish tab and of `studio publish`. Secrets (api_key, token) are never stored with a deployment.
The remote server target lives in studio/publish/remote.py, the Hub and Inference Endpoint ones in hub.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from studio.core.errors import Conflict, InvalidInput
from studio.publishing import docker
from studio.publishing.source import RunSource, TokenLimits, token_limits
from studio.publishing.verify import Served

if TYPE_CHECKING:
    from studio.core.workspace import Workspace
    from studio.publishing.export import Export

Progress = Callable[[float, str], None]
SECRET_FIELDS = {"api_key", "token"}


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
        from studio.serving import endpoints

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
        model = "tgi" if o.merged else source.adapter_name  # the base model's name on TGI and ours alike
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
            from studio.models.catalog import resolve

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


def register_for_chat(ws: Workspace, url: str, name: str) -> None:
    """Make a deployed URL one of the endpoints the Chat tab offers (once)."""
    from studio.core.errors import NotFound
    from studio.serving import endpoints

    try:
        endpoints.get_endpoint(ws, url, refresh=False)
    except NotFound:
        endpoints.register_remote(ws, url, name=name, check=False)


def target_classes() -> dict[str, type[Target]]:
    from studio.publishing.targets.hub import HubTarget, InferenceEndpointTarget
    from studio.publishing.targets.remote import RemoteTarget

    return {cls.kind: cls for cls in (LocalTarget, DockerTarget, RemoteTarget, HubTarget, InferenceEndpointTarget)}


def make_target(ws: Workspace, kind: str, options: dict[str, Any] | None = None) -> Target:
    classes = target_classes()
    if kind not in classes:
        raise InvalidInput(f"'{kind}' is not a publishing target.", f"Choose one of: {', '.join(classes)}.")
    return classes[kind].from_dict(ws, options)

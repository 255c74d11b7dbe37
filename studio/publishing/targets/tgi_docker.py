"""Serving engines in Docker on this machine: the shared container target (export mounted at /data, the
exact `docker run` command and a compose file, start and wait for /health, verify), and TGI's flavour of
it. vLLM's and SGLang's are in engine_docker.py. Without a Docker engine: the command and the compose
file to run elsewhere, verified once you start it (re-verify)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, field_validator

from studio.core.errors import InvalidInput
from studio.publishing import docker
from studio.publishing.source import RunSource, TokenLimits, token_limits
from studio.publishing.targets.base import Deployed, Options, Plan, Progress, Target, slug
from studio.publishing.verify import Served

if TYPE_CHECKING:
    from studio.publishing.export import Export


class ContainerOptions(Options):
    name: str = Field("published", description="A name for this deployment; the container is called "
                      "studio-ENGINE-NAME. Publishing again under the same name replaces the container.")
    merged: bool = Field(True, description="Serve the merged model (recommended). Off: the base model with the "
                         "run's adapter as a LoRA module.")
    gpus: str = Field("all", description="Docker's --gpus value: 'all', a count, or 'device=0'; empty for none.")
    host: str = Field("127.0.0.1", description="The address the port is published on; 0.0.0.0 opens it to the "
                      "network.")
    max_total_tokens: int | None = Field(None, ge=2, description="Override the prompt + answer limit derived "
                                         "from the data.")
    api_key: str | None = Field(None, description="Make the server require this key (Authorization: Bearer). "
                                "Never stored: the command passes it from your environment.")
    timeout: float = Field(900, gt=0, description="Seconds to wait for /health after the container starts.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return slug(v)


class ContainerTarget(Target):
    """One engine image in Docker; subclasses set `engine` and build their Launch."""

    engine: ClassVar[str]

    @property
    def spec(self) -> docker.EngineImage:
        return docker.ENGINES[self.engine]

    def container(self) -> str:
        return f"studio-{self.engine}-{self.options.name}"

    def slot(self, source: RunSource) -> str:
        return f"{self.kind}:{self.options.name}"

    def base_source(self, source: RunSource) -> str | None:
        if self.options.merged:
            return None
        from studio.models.resolve import resolve

        return resolve(self.ws, source.base_model).source

    def limits(self, source: RunSource) -> TokenLimits:
        derived = token_limits(self.ws, source)
        total = self.options.max_total_tokens or derived.max_total_tokens
        basis = derived.basis if not self.options.max_total_tokens else "set by you"
        return TokenLimits(max_input_tokens=min(derived.max_input_tokens, total - 1), max_total_tokens=total,
                           basis=basis)

    def launch(self, source: RunSource, export_dir: str) -> docker.Launch:
        """The container to start: what every engine shares here, plus `engine_fields` of this engine."""
        o = self.options
        limits = self.limits(source)
        base = self.base_source(source)
        return docker.Launch(
            export_dir=export_dir, mount_dir=str(self.ws.exports_dir), container=self.container(),
            max_input_tokens=limits.max_input_tokens, max_total_tokens=limits.max_total_tokens,
            engine=self.engine, image=o.image, tag=o.tag, gpus=o.gpus, host=o.host, port=o.port,
            base_model=base, adapter_name=None if o.merged else source.adapter_name, api_key=bool(o.api_key),
            env=("HF_TOKEN",) if base and not base.startswith("/") else (),  # a hub base model is downloaded
            **self.engine_fields(source),
        )

    def engine_fields(self, source: RunSource) -> dict:
        """The Launch fields only this engine sets (its quantisation, served name, LoRA rank)."""
        return {}

    def served(self, source: RunSource, launch: docker.Launch, url: str) -> Served:
        raise NotImplementedError

    def plan(self, source: RunSource, export_dir: str | None = None) -> Plan:
        launch = self.launch(source, export_dir or str(self.ws.exports_dir / "<export-id>" / "model"))
        ok, why = docker.engine_status()
        url = f"http://{launch.host if launch.host not in ('', '0.0.0.0') else '127.0.0.1'}:{launch.port}"
        label = self.spec.label
        steps = [f"export {'the merged model' if self.options.merged else 'the adapter'} of {source.run_id}",
                 f"mount {launch.mount_dir} at /data in the container"]
        if ok:
            steps += [f"replace the container {launch.container} and start {label} (Docker {why})",
                      f"wait up to {self.options.timeout:.0f} s for {url}/health", "verify the replies"]
        else:
            steps += [f"Docker cannot run here ({why}): the command and the compose file are shown to copy; "
                      "after you start it, re-verify the deployment"]
        notes = [] if ok else [f"Docker: {why}."]
        if self.options.api_key:
            var = launch.spec.api_key_env or docker.SGLANG_KEY_VAR
            notes.append(f"Set {var} to the key in the shell that runs the command (it is not written in it).")
        return Plan(target=self.kind, slot=self.slot(source), export_kind=self.export_kind(), steps=steps,
                    command=docker.docker_argv(launch), files={"compose.yaml": docker.compose_file(launch)},
                    limits=self.limits(source), url=url, notes=notes)

    def deploy(self, source: RunSource, export: Export, progress: Progress) -> Deployed:
        launch = self.launch(source, str(export.model_dir))
        argv = docker.docker_argv(launch)
        plan = self.plan(source, str(export.model_dir))
        files = {"compose.yaml": docker.compose_file(launch)}
        (export.folder / "compose.yaml").write_text(files["compose.yaml"], encoding="utf-8")
        (export.folder / "docker-run.sh").write_text("#!/bin/sh\n" + docker.command_text(argv) + "\n")
        details = {"command": argv, "command_text": docker.command_text(argv), "container": launch.container,
                   "engine": self.engine, "image": f"{launch.image}:{launch.tag}",
                   "compose_file": str(export.folder / "compose.yaml"), "limits": plan.to_dict()["limits"]}
        served = self.served(source, launch, plan.url)
        details["model_name"] = served.model
        ok, why = docker.engine_status()
        if not ok:
            return Deployed(url=plan.url, served=None, details=details, message=(
                f"Docker cannot run here ({why}). Run this on a machine with Docker and a GPU (the export folder "
                f"{export.folder} must be there too), then re-verify:\n{docker.command_text(argv)}"))
        progress(0.1, f"starting {launch.image}:{launch.tag} as {launch.container}")
        key = self.options.api_key
        env = {launch.spec.api_key_env: key} if key and launch.spec.api_key_env else {}
        docker.run_container(docker.with_secret(argv, key), launch.container, plan.url, label=self.spec.label,
                             timeout=self.options.timeout, progress=progress, env=env)
        return Deployed(url=plan.url, served=served, details=details)


class DockerOptions(ContainerOptions):
    merged: bool = Field(True, description="Serve the merged model (recommended: TGI would merge an adapter "
                         "in fp16 itself). Off: the base model with --lora-adapters.")
    image: str = Field(docker.IMAGE, description="The TGI image.")
    tag: str = Field(docker.TAG, description="The TGI image tag (version).")
    port: int = Field(8080, ge=1, le=65535, description="The port on this machine mapped to TGI's port 80.")
    quantize: Literal[docker.QUANTIZE] | None = Field(  # type: ignore[valid-type]
        None, description="Let TGI quantize the weights at load time (saves GPU memory); empty for 16-bit.")
    max_input_tokens: int | None = Field(None, ge=1, description="Override the prompt limit derived from the "
                                         "data.")


class DockerTarget(ContainerTarget):
    kind = "tgi-docker"
    engine = "tgi"
    label = "TGI in Docker on this machine"
    help = ("Start Text Generation Inference in Docker with the exported folder mounted at /data; without a "
            "Docker engine, get the exact command and a compose file to run elsewhere.")
    Options = DockerOptions

    def engine_fields(self, source: RunSource) -> dict:
        return {"quantize": self.options.quantize}

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

    def served(self, source: RunSource, launch: docker.Launch, url: str) -> Served:
        adapter = launch.adapter_name  # TGI: the base model answers to "tgi"; an adapter by adapter_id
        return Served(url=url, model=adapter or "tgi", adapter_id=adapter, api_key=self.options.api_key,
                      max_total_tokens=launch.max_total_tokens)

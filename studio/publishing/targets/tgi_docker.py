"""The TGI-in-Docker target: run Text Generation Inference in Docker with the exported folder mounted at
/data; without a Docker engine, the exact command and a compose file to run elsewhere."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator

from studio.core.errors import InvalidInput
from studio.publishing import docker
from studio.publishing.source import RunSource, TokenLimits, token_limits
from studio.publishing.targets.base import Deployed, Options, Plan, Progress, Target, slug
from studio.publishing.verify import Served

if TYPE_CHECKING:
    from studio.publishing.export import Export


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
        return slug(v)


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
            from studio.models.resolve import resolve

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

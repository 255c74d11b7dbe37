"""The local target: serve the export here with the studio's own TGI-compatible endpoint; no Docker needed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator

from studio.core.errors import Conflict
from studio.publishing.source import RunSource
from studio.publishing.targets.base import Deployed, Options, Plan, Progress, Target, slug
from studio.publishing.verify import Served

if TYPE_CHECKING:
    from studio.publishing.export import Export


class LocalOptions(Options):
    name: str = Field("published", description="A name for this local deployment. Publishing again under the "
                      "same name replaces what runs there; rollback puts the previous version back.")
    merged: bool = Field(True, description="Serve the merged model (one folder, as a production server would) "
                         "rather than the base model with the adapter on top.")
    port: int | None = Field(None, ge=1024, le=65535, description="The port on this machine (empty: keep the "
                             "previous one, or pick a free one).")
    quantize: Literal["none", "4bit"] = Field("none", description="'none' serves exactly the exported weights; "
                                              "'4bit' saves GPU memory (CUDA only) at a small cost in fidelity.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return slug(v)


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
        what = (f"the merged model as '{source.adapter_name}'" if o.merged
                else f"{source.base_model} with the adapter '{source.adapter_name}'")
        return Plan(
            target=self.kind, slot=self.slot(source), export_kind=self.export_kind(),
            steps=[
                f"export {'the merged model' if o.merged else 'the adapter'} of {source.run_id} (a background job)",
                f"stop what '{o.name}' serves on this machine now, if anything (endpoint "
                f"{self.endpoint_name()}), and start one serving {what}"
                + (f" on port {o.port}" if o.port else ""),
                "verify: the run's prompts through the studio model and the endpoint, greedy, compared",
            ],
            url=f"http://127.0.0.1:{o.port}" if o.port else None,
        )

    def deploy(self, source: RunSource, export: Export, progress: Progress) -> Deployed:
        from studio.serving import endpoints, launch

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
        # merged: the folder is served under the run's name; adapter: the base under its own, the adapter under
        # the run's (both names a client can use, listed by /v1/models)
        kwargs = dict(run_id=source.run_id, name=self.endpoint_name(), quantize=o.quantize,
                      served_name=source.adapter_name if o.merged else None,
                      # the export's own dtype: on CUDA "auto" would serve a float32 export in bf16
                      extra_args=["--dtype", export.dtype] if o.quantize == "none" and export.dtype else None)
        try:
            ep = launch.start_endpoint(self.ws, base, adapters, port=port, **kwargs)
        except Conflict:
            if o.port:
                raise
            # the previous endpoint's port is still held by its closing connections (TIME_WAIT)
            progress(0.3, f"port {port} is not free yet; serving on another port")
            ep = launch.start_endpoint(self.ws, base, adapters, port=None, **kwargs)
        served = Served(url=ep.url, model=source.adapter_name, adapter_id=None if o.merged else source.adapter_name)
        return Deployed(url=ep.url, served=served, details={"endpoint_id": ep.id, "port": ep.port})

"""The vLLM target: serve the export on this machine with a real vLLM server the studio installs
(`studio engines install vllm`) and supervises.

Merged: a server of its own per name, on the merged folder, serving it under that name; publishing again
restarts it on the new export. Adapter: one server per base model with LoRA on, shared by every run of
that base; the run's adapter is loaded at runtime under the name (no restart), replacing what that name
served before. Then the usual verification, token ids compared (vLLM returns them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from studio.core.errors import Conflict
from studio.publishing.source import RunSource, token_limits
from studio.publishing.targets.base import Deployed, Options, Plan, Progress, Target, slug
from studio.publishing.verify import Served

if TYPE_CHECKING:
    from studio.publishing.export import Export


class VllmOptions(Options):
    name: str | None = Field(None, description="The name clients ask for (the `model` field). Empty: the run's "
                             "name. Publishing again under the same name replaces what it serves; rollback puts "
                             "the previous version back.")
    merged: bool = Field(True, description="Serve the merged model on a server of its own. Off: load the adapter "
                         "into the shared server of its base model (no restart; several runs on one server).")
    port: int | None = Field(None, description="The port of a new server on this machine (empty: keep the "
                             "previous one's, or pick a free one).")
    max_model_len: int | None = Field(None, ge=16, description="vLLM's --max-model-len (prompt + answer); empty: "
                                      "derived from the data.")
    timeout: float = Field(600, gt=0, description="Seconds to wait for a new server to answer /health.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return slug(v) if v else None


def served_name(source: RunSource, name: str | None) -> str:
    """The name a client uses: the chosen one, else the run's (unique in the workspace: source.served_name)."""
    return name or source.adapter_name


class VllmTarget(Target):
    kind = "vllm"
    label = "vLLM on this machine"
    help = ("Serve it here with a real vLLM server (installed once: `studio engines install vllm`), the engine "
            "production servers run; the studio starts and supervises it.")
    Options = VllmOptions

    def name(self, source: RunSource) -> str:
        return served_name(source, self.options.name)

    def slot(self, source: RunSource) -> str:
        return f"vllm:{self.name(source)}"

    def server_name(self, source: RunSource) -> str:
        from studio.serving.engines.vllm import lora_rank

        if self.options.merged:
            return f"vllm-{self.name(source)}"
        return f"vllm-{source.base_model.replace('/', '--')}-r{lora_rank(source.lora_r or 8)}"

    def max_model_len(self, source: RunSource) -> int:
        return self.options.max_model_len or max(512, token_limits(self.ws, source).max_total_tokens)

    def plan(self, source: RunSource, export_dir: str | None = None) -> Plan:
        from studio.serving.engines.manage import find_engine, package_for

        name, engine = self.name(source), find_engine("vllm")
        package, version = package_for("vllm")
        if self.options.merged:
            serve = f"start the vLLM server '{self.server_name(source)}' on the merged folder, served as '{name}'"
        else:
            serve = (f"use (or start) the vLLM server '{self.server_name(source)}' serving {source.base_model} with "
                     f"LoRA, and load the adapter as '{name}' (POST /v1/load_lora_adapter; no restart)")
        notes = [] if engine else [f"The vllm engine is not installed yet: `studio engines install vllm` installs "
                                   f"{package} {version} (a few minutes, once per machine)."]
        return Plan(target=self.kind, slot=self.slot(source), export_kind=self.export_kind(),
                    steps=[f"export {'the merged model' if self.options.merged else 'the adapter'} of "
                           f"{source.run_id}", serve,
                           "verify: the run's prompts through the studio model and vLLM, greedy, token ids compared"],
                    limits=token_limits(self.ws, source), notes=notes,
                    url=f"http://127.0.0.1:{self.options.port}" if self.options.port else None)

    def deploy(self, source: RunSource, export: Export, progress: Progress) -> Deployed:
        from studio.serving.engines import vllm

        name = self.name(source)
        if self.options.merged:
            server = self._merged_server(source, export, progress)
        else:
            rank = vllm.lora_rank(source.lora_r or 8)
            server = vllm.find_server(self.ws, source.base_model, min_rank=rank)
            if server is None:
                progress(0.1, f"starting a vLLM server for {source.base_model} with LoRA up to rank {rank} "
                         "(about a minute on a CPU)")
                server = self._start(vllm, source.base_model, served=source.base_model, port=self.options.port,
                                     name=self.server_name(source), lora=True, rank=rank, source=source)
            else:
                progress(0.1, f"reusing the vLLM server '{server.name}' at {server.url}")
            progress(0.7, f"loading the adapter as '{name}' (no restart)")
            server = vllm.load_adapter(self.ws, server, name, export.model_dir, source=source.run_id)
        served = Served(url=server.url, model=name, adapter_id=None if self.options.merged else name,
                        max_total_tokens=server.options.get("max_model_len"), token_ids=True)
        return Deployed(url=server.url, served=served, details={
            "endpoint_id": server.id, "server": server.name, "pid": server.pid, "served_name": name,
            "engine": server.options.get("engine_version"), "models": [server.base_name, *server.adapters]})

    def _merged_server(self, source: RunSource, export: Export, progress: Progress):
        from studio.serving import endpoints
        from studio.serving.engines import vllm

        port = self.options.port
        previous = vllm.find_server(self.ws, source.base_model, name=self.server_name(source))
        if previous is not None:
            progress(0.1, f"stopping the vLLM server that served the previous version ({previous.url})")
            endpoints.stop_endpoint(self.ws, previous.id, reason="replaced by a new publish")
            port = port or previous.port
        progress(0.2, "starting vLLM on the merged model (about a minute on a CPU)")
        try:
            return self._start(vllm, str(export.model_dir), served=self.name(source), port=port,
                               name=self.server_name(source), lora=False, rank=0, source=source)
        except Conflict:
            if self.options.port or port is None:
                raise
            progress(0.25, f"port {port} is not free yet; serving on another port")
            return self._start(vllm, str(export.model_dir), served=self.name(source), port=None,
                               name=self.server_name(source), lora=False, rank=0, source=source)

    def _start(self, vllm, model: str, *, served: str, port: int | None, name: str, lora: bool, rank: int,
               source: RunSource):
        return vllm.start_server(self.ws, model, served_name=served, name=name, base_model=source.base_model,
                                 run_id=source.run_id, port=port, lora=lora, max_lora_rank=rank or 16,
                                 max_model_len=self.max_model_len(source), timeout=self.options.timeout)

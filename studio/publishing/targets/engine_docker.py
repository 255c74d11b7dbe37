"""vLLM and SGLang in Docker on this machine (the vllm/vllm-openai and lmsysorg/sglang images), beside TGI:
the same container target (tgi_docker.ContainerTarget), each with its own server flags (docker.py).

Both serve the merged model under the run's name, or the base model (under its catalog name) with the
run's adapter as a LoRA module under the run's name. A client picks the adapter with `model=NAME` on
vLLM and `model=BASE:NAME` on SGLang (its OpenAI API's adapter syntax)."""

from __future__ import annotations

from pydantic import Field

from studio.publishing import docker
from studio.publishing.source import RunSource
from studio.publishing.targets.tgi_docker import ContainerOptions, ContainerTarget
from studio.publishing.verify import Served


def _lora_rank(r: int) -> int:
    from studio.serving.engines.vllm import lora_rank

    return lora_rank(r or 8)


class VllmDockerOptions(ContainerOptions):
    image: str = Field(docker.ENGINES["vllm"].image, description="The vLLM image.")
    tag: str = Field(docker.ENGINES["vllm"].tag, description="The vLLM image tag (version).")
    port: int = Field(8000, ge=1, le=65535, description="The port on this machine mapped to vLLM's port 8000.")


class SglangDockerOptions(ContainerOptions):
    image: str = Field(docker.ENGINES["sglang"].image, description="The SGLang image.")
    tag: str = Field(docker.ENGINES["sglang"].tag, description="The SGLang image tag (version).")
    port: int = Field(30000, ge=1, le=65535, description="The port on this machine mapped to SGLang's port "
                      "30000.")


class _OpenAIEngineTarget(ContainerTarget):
    def engine_fields(self, source: RunSource) -> dict:
        merged = self.options.merged
        return {"served_name": source.adapter_name if merged else source.base_model,
                "max_lora_rank": self.max_lora_rank(source)}

    def max_lora_rank(self, source: RunSource) -> int:
        return _lora_rank(source.lora_r)


class VllmDockerTarget(_OpenAIEngineTarget):
    kind = "vllm-docker"
    engine = "vllm"
    label = "vLLM in Docker on this machine"
    help = ("Start vLLM's OpenAI server (the vllm/vllm-openai image) in Docker with the exported folder mounted "
            "at /data; without a Docker engine, get the exact command and a compose file to run elsewhere.")
    Options = VllmDockerOptions

    def served(self, source: RunSource, launch: docker.Launch, url: str) -> Served:
        name = launch.adapter_name or launch.served_name
        return Served(url=url, model=name, api_key=self.options.api_key, max_total_tokens=launch.max_total_tokens,
                      token_ids=True)


class SglangDockerTarget(_OpenAIEngineTarget):
    kind = "sglang-docker"
    engine = "sglang"
    label = "SGLang in Docker on this machine"
    help = ("Start SGLang's server (the lmsysorg/sglang image) in Docker with the exported folder mounted at "
            "/data; without a Docker engine, get the exact command and a compose file to run elsewhere.")
    Options = SglangDockerOptions

    def max_lora_rank(self, source: RunSource) -> int:
        return source.lora_r or 16  # SGLang takes any rank

    def served(self, source: RunSource, launch: docker.Launch, url: str) -> Served:
        model = f"{launch.served_name}:{launch.adapter_name}" if launch.adapter_name else launch.served_name
        return Served(url=url, model=model, api_key=self.options.api_key, max_total_tokens=launch.max_total_tokens)

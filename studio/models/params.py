"""Parameters counted from a model's own config: the model is built on the meta device (shapes, no memory,
no weights) with accelerate's init_empty_weights and its tensors are counted, so tied embeddings, head_dim,
grouped-query attention, biases, extra norms and mixture-of-experts layers come out as the architecture
has them. The fit check (studio/training/fitcheck.py) and `studio models list` use it.

A count is cached per config for the life of the process: building an 8B model on the meta device takes
~0.2 s (the first one in a process ~3 s more, importing the model code).
"""

from __future__ import annotations

import functools
import json
from typing import Any

from pydantic import BaseModel

from studio.core.errors import ModelUnavailable

# config.json keys that describe a file rather than the architecture; building from them would fail or
# quantize (a pre-quantized checkpoint's quantization_config).
_NOT_ARCHITECTURE = ("quantization_config", "auto_map", "_name_or_path", "transformers_version", "architectures")


class ParamCount(BaseModel):
    total: int  # every parameter once (a tied LM head shares the embedding's)
    matrices: int  # the weight matrices of the blocks: what 4-bit quantization stores in NF4
    other: int  # embeddings, an untied LM head, norms, biases: kept in the compute dtype
    largest: int  # the largest single weight matrix in the blocks (4-bit dequantizes one at a time)
    active: int  # used for each token: for a mixture of experts only the routed experts count
    tied: bool  # the LM head is the input embedding
    lora_io: dict[str, int]  # per linear layer name (q_proj, ...): sum over the blocks of in + out features

    def adapter_per_rank(self, targets: list[str]) -> int:
        """LoRA parameters per unit of rank on `targets` (each adapted layer adds r x (in + out)).
        No target known to this model: every linear layer of the blocks, as peft's "all-linear" does."""
        chosen = [t for t in targets if t in self.lora_io] or list(self.lora_io)
        return sum(self.lora_io[t] for t in chosen)


def count_params(config: dict[str, Any]) -> ParamCount:
    """Count the parameters of the model `config` (config.json's keys, model_type included) describes.

    Raises ModelUnavailable when transformers cannot build that architecture from its config."""
    clean = {k: v for k, v in config.items() if k not in _NOT_ARCHITECTURE}
    return _count(json.dumps(clean, sort_keys=True))


@functools.lru_cache(maxsize=64)
def _count(config_json: str) -> ParamCount:
    from studio.core.imports import heavy_imports

    with heavy_imports():
        import torch
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM

    config = json.loads(config_json)
    model_type = config.pop("model_type", None)
    try:
        hf_config = AutoConfig.for_model(model_type, **config)
        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(hf_config)
    except (ValueError, KeyError, TypeError, ImportError) as exc:
        raise ModelUnavailable(
            f"The parameters of a '{model_type}' model cannot be counted: transformers cannot build it from "
            f"its config ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}).",
            "Use a model from the catalog, or a newer transformers that knows this architecture.",
        ) from exc
    # init_empty_weights leaves the LM head a separate meta tensor; loading a checkpoint ties it when the
    # config says so, and so must the count (Llama-3.2-1B: 1.24B, not 1.50B).
    model.tie_weights()
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    head_weight = head.weight if head is not None else None
    total = matrices = largest = experts = 0
    for name, param in model.named_parameters():  # shared tensors are listed once
        n = param.numel()
        total += n
        if param is embedding or param is head_weight or param.dim() < 2:
            continue
        matrices += n
        one = n // param.shape[0] if param.dim() > 2 else n  # a fused experts tensor: one expert at a time
        largest = max(largest, one)
        if ".experts." in name or name.endswith(".experts"):
            experts += n
    lora_io: dict[str, int] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module is not head and ".experts." not in name:
            key = name.rpartition(".")[2]
            lora_io[key] = lora_io.get(key, 0) + module.in_features + module.out_features
    routed = config.get("num_experts_per_tok") or 0
    pool = config.get("num_local_experts") or config.get("num_experts") or 0
    active = total - (round(experts * (1 - routed / pool)) if experts and routed and pool else 0)
    return ParamCount(
        total=total, matrices=matrices, other=total - matrices, largest=largest, active=active,
        tied=head_weight is embedding, lora_io=lora_io,
    )  # fmt: skip

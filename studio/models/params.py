"""Parameters counted from a model's own config: the model is built on the meta device (shapes, no memory,
no weights) with accelerate's init_empty_weights and its tensors are counted, so tied embeddings, head_dim,
grouped-query attention, biases, extra norms and mixture-of-experts layers come out as the architecture
has them. The fit check (studio/training/fitcheck.py) and `studio models list` use it.

A count is kept for the life of the process, and, given a workspace's cache folder (`cache_dir`), on disk
per config and transformers version: building on the meta device needs torch and transformers imported (seconds
in a fresh process), so `studio train` and the Train tab count a model once per workspace and afterwards read
the number back without importing either.
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from studio.core.errors import ModelUnavailable
from studio.core.files import write_json_atomic

if TYPE_CHECKING:
    from studio.core.workspace import Workspace

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

    def unknown_targets(self, targets: list[str]) -> list[str]:
        """The names in `targets` that match no linear layer of the blocks nor the LM head (peft matches a
        name against the end of each module's path, so `q_proj` and `self_attn.q_proj` both name q_proj)."""
        known = {*self.lora_io, "lm_head"}
        return [t for t in targets if t.rpartition(".")[2] not in known]


_COUNTED: dict[str, ParamCount] = {}  # this process's counts, by config


def cache_dir(ws: Workspace) -> Path:
    """Where a workspace keeps its counts (one small JSON file per config and transformers version)."""
    return ws.home / "cache" / "param-counts"


def count_params(config: dict[str, Any], cache: Path | None = None) -> ParamCount:
    """Count the parameters of the model `config` (config.json's keys, model_type included) describes.

    `cache`: a folder of counts kept across processes (cache_dir(ws)); read first, written after a count.
    Raises ModelUnavailable when transformers cannot build that architecture from its config."""
    clean = {k: v for k, v in config.items() if k not in _NOT_ARCHITECTURE}
    key = json.dumps(clean, sort_keys=True)
    path = _cache_file(cache, key) if cache is not None else None
    stored = _read(path) if path is not None else None
    counted = _COUNTED.get(key) or stored or _count(key)
    if path is not None and stored is None:  # counted here (or earlier in this process): keep it for the next
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, {"config": clean, "count": counted.model_dump()})
        except OSError:  # a read-only workspace only loses the shortcut
            pass
    if len(_COUNTED) > 256:
        _COUNTED.clear()
    _COUNTED[key] = counted
    return counted


def _cache_file(folder: Path, key: str) -> Path:
    """The file of this config's count: transformers' version is part of the name, as a newer one may build the
    architecture differently."""
    try:
        version = metadata.version("transformers")
    except metadata.PackageNotFoundError:
        version = "none"
    digest = hashlib.sha256(f"transformers {version}\n{key}".encode()).hexdigest()
    return folder / f"{digest[:24]}.json"


def _read(path: Path) -> ParamCount | None:
    try:
        return ParamCount.model_validate(json.loads(path.read_text(encoding="utf-8"))["count"])
    except (OSError, ValueError, KeyError, TypeError, ValidationError):  # absent or damaged: count again
        return None


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

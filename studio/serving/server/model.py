"""Loading what the endpoint serves: the base model (4-bit on CUDA when asked, else 16/32-bit), its
LoRA adapters through peft, and for each of them the chat format it was trained with.

A chat format is the tokenizer with its chat template plus the token ids and strings that end an
answer: the eos ids of the saved generation_config.json and tokenizer, and the end-of-turn marker
the chat template writes after an assistant message. That is why replies stop where training
taught them to stop.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BASE = "__base__"  # peft's name for "no adapter" in a mixed batch
_SENTINEL = "\x00studio-sentinel\x00"


class LoadError(Exception):
    """The endpoint cannot start: the message says why and what to do."""


@dataclass
class ChatFormat:
    tokenizer: Any
    template_from: str  # "adapter", "base", or "adapter:<name>" when borrowed; "" when there is none
    eos_ids: set[int]
    stop: list[str] = field(default_factory=list)
    default_max_new_tokens: int = 256
    special_ids: set[int] = field(default_factory=set)

    @property
    def has_template(self) -> bool:
        return bool(self.tokenizer.chat_template)


@dataclass
class Served:
    model: Any  # a transformers model, or a peft PeftModel when adapters are loaded
    base: ChatFormat
    adapters: dict[str, ChatFormat]
    adapter_dirs: dict[str, str]
    served_name: str
    source: str
    device: str
    dtype: str
    quantize: str
    max_total_tokens: int
    max_input_tokens: int

    def format_for(self, adapter: str | None) -> ChatFormat:
        return self.base if adapter is None else self.adapters[adapter]


def load(source: str, adapters: dict[str, str], *, served_name: str = "", quantize: str = "none",
         dtype: str = "auto", max_total_tokens: int | None = None) -> Served:
    import torch

    cuda = torch.cuda.is_available()
    if quantize == "4bit" and not cuda:  # refused before the slower imports below
        raise LoadError("4-bit serving needs a CUDA GPU and none was found; serve in 16/32-bit with --quantize none.")
    for name, path in adapters.items():
        if not (Path(path) / "adapter_config.json").exists():
            raise LoadError(f"Adapter '{name}': {path} holds no adapter_config.json (not a saved LoRA adapter).")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    torch_dtype = _dtype(dtype, cuda)
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if quantize == "4bit":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch_dtype,
        )
    if cuda:
        kwargs["device_map"] = {"": 0}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as exc:
        raise LoadError(f"The base model '{source}' could not be opened: {str(exc).splitlines()[0]}") from exc
    model.eval()
    base_gen = model.generation_config.to_dict() if getattr(model, "generation_config", None) else {}
    base = chat_format(tokenizer, base_gen, "base")
    formats: dict[str, ChatFormat] = {}
    if adapters:
        from peft import PeftModel

        for index, (name, path) in enumerate(adapters.items()):
            try:
                if index == 0:
                    model = PeftModel.from_pretrained(model, path, adapter_name=name, is_trainable=False)
                else:
                    model.load_adapter(path, adapter_name=name, is_trainable=False)
            except (OSError, ValueError, RuntimeError, KeyError) as exc:
                raise LoadError(f"Adapter '{name}' ({path}) does not fit base model '{source}': {exc}") from exc
            formats[name] = _adapter_format(Path(path), tokenizer, base_gen)
            if len(formats[name].tokenizer) > model.get_input_embeddings().num_embeddings:
                raise LoadError(f"Adapter '{name}' has a larger vocabulary than base model '{source}' can embed; "
                                "it was trained on another base model.")
        model.eval()
    if not base.has_template:  # a base model without a chat template: chat with the first adapter's
        for name, fmt in formats.items():
            if fmt.has_template:
                base.tokenizer = _with_template(tokenizer, fmt.tokenizer.chat_template)
                base.template_from = f"adapter:{name}"
                base.eos_ids |= fmt.eos_ids
                base.stop = sorted(set(base.stop) | set(fmt.stop))
                break
    context = _context_length(model, tokenizer)
    total = min(max_total_tokens or context, context)
    return Served(
        model=model, base=base, adapters=formats, adapter_dirs=dict(adapters), served_name=served_name or source,
        source=source, device=str(next(model.parameters()).device), dtype=str(torch_dtype).replace("torch.", ""),
        quantize=quantize, max_total_tokens=total, max_input_tokens=max(1, total - 1),
    )


def _dtype(name: str, cuda: bool):
    import torch

    if name == "auto":
        if not cuda:
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return getattr(torch, name)


def _context_length(model, tokenizer) -> int:
    config = model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", 0)
    return limit if 0 < limit < 1_000_000 else 2048


def _adapter_format(path: Path, base_tokenizer, base_gen: dict) -> ChatFormat:
    """The adapter's own tokenizer, chat template and generation config when it saved them (a training
    run does); the base model's where it did not."""
    from transformers import AutoTokenizer

    tokenizer = base_tokenizer
    if (path / "tokenizer_config.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(path)
    gen_path = path / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.exists() else base_gen
    return chat_format(tokenizer, gen, "adapter" if tokenizer.chat_template else "")


def _with_template(tokenizer, template: str):
    import copy

    clone = copy.copy(tokenizer)
    clone.chat_template = template
    return clone


def chat_format(tokenizer, gen: dict, template_from: str) -> ChatFormat:
    """`gen` is the generation config (as a dict) whose eos ids and max_new_tokens apply."""
    eos = gen.get("eos_token_id")
    eos_ids: set[int] = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    max_new = gen.get("max_new_tokens")
    default_max_new = max_new if isinstance(max_new, int) and max_new > 0 else 256
    if tokenizer.eos_token_id is not None:
        eos_ids.add(tokenizer.eos_token_id)
    stop: list[str] = []
    end = turn_end(tokenizer)
    if end:
        ids = tokenizer.encode(end, add_special_tokens=False)
        if len(ids) == 1 and ids[0] in set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder):
            eos_ids.add(ids[0])
        else:
            stop.append(end)
    return ChatFormat(tokenizer=tokenizer, template_from=template_from if tokenizer.chat_template else "",
                      eos_ids=eos_ids, stop=stop, default_max_new_tokens=default_max_new,
                      special_ids=set(tokenizer.all_special_ids) | eos_ids)


def turn_end(tokenizer) -> str:
    """What the chat template writes right after an assistant's answer, e.g. '<|im_end|>' for ChatML."""
    if not tokenizer.chat_template:
        return ""
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _SENTINEL}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # a template that refuses this simple exchange just gives no extra stop marker
        return ""
    if _SENTINEL not in text:
        return ""
    return text.split(_SENTINEL, 1)[1].strip()

"""Requests checked and prepared as TGI does: the adapter a request names, the token budget, the sampling
settings, the chat template applied; what the engine then runs (a Prepared)."""

from __future__ import annotations

from dataclasses import dataclass

from studio.serving.server.model import ChatFormat, Served
from studio.serving.server.sampling import Sampling
from studio.serving.server.schemas import (
    BASE_ALIASES,
    ChatRequest,
    GenerateRequest,
    check_chat_unsupported,
    check_generate_unsupported,
    check_sampling,
    invalid,
)


@dataclass
class Prepared:
    """A validated request, ready for the engine."""

    input_ids: list[int]
    adapter: str | None
    fmt: ChatFormat
    sampling: Sampling
    model_name: str




def adapter_for(served: Served, name: str | None) -> str | None:
    """None for the base model; an adapter name; anything else is refused."""
    if name is None or name in BASE_ALIASES or name in (served.served_name, served.source) \
            or name.startswith(("http://", "https://")):
        return None
    if name in served.adapters:
        return name
    known = ", ".join(served.adapters) or "none"
    raise invalid(f"adapter `{name}` is not served by this endpoint. Base model: `{served.served_name}`; "
                  f"adapters: {known}")

def budget(served: Served, n_input: int, max_new: int | None, fmt: ChatFormat, field: str) -> int:
    if n_input > served.max_input_tokens:
        raise invalid(f"`inputs` must have less than {served.max_input_tokens} tokens. Given: {n_input}")
    room = served.max_total_tokens - n_input
    if max_new is None:
        return max(1, min(fmt.default_max_new_tokens, room))
    if max_new <= 0:
        raise invalid(f"`{field}` must be strictly positive")
    if max_new > room:
        raise invalid(f"`inputs` tokens + `{field}` must be <= {served.max_total_tokens}. "
                      f"Given: {n_input} `inputs` tokens and {max_new} `{field}`")
    return max_new

def prepare_generate(served: Served, req: GenerateRequest) -> Prepared:
    """A /generate request, checked as TGI checks it, as the engine's input ids and sampling."""
    p = req.parameters
    check_generate_unsupported(p)
    check_sampling(temperature=p.temperature, top_k=p.top_k, top_p=p.top_p, typical_p=p.typical_p,
                   repetition_penalty=p.repetition_penalty, frequency_penalty=p.frequency_penalty,
                   seed=p.seed, stop=p.stop)
    if not req.inputs.strip():
        raise invalid("`inputs` cannot be empty")
    adapter = adapter_for(served, p.adapter_id)
    fmt = served.format_for(adapter)
    ids = fmt.tokenizer(req.inputs)["input_ids"]
    if p.truncate is not None:
        ids = ids[-p.truncate:]
    temperature = p.temperature or 1.0
    top_p, typical_p = p.top_p or 1.0, p.typical_p or 1.0
    do_sample = p.do_sample or temperature != 1.0 or bool(p.top_k) or top_p < 1.0 or typical_p < 1.0
    sampling = Sampling(
        max_new_tokens=budget(served, len(ids), p.max_new_tokens, fmt, "max_new_tokens"), do_sample=do_sample,
        temperature=temperature, top_k=p.top_k or 0, top_p=top_p, typical_p=typical_p,
        repetition_penalty=p.repetition_penalty or 1.0, frequency_penalty=p.frequency_penalty or 0.0,
        seed=p.seed, stop=list(p.stop), top_n_tokens=p.top_n_tokens or 0,
        prefill_details=p.decoder_input_details and p.details,
    )
    return Prepared(ids, adapter, fmt, sampling, adapter or served.served_name)

def prepare_chat(served: Served, req: ChatRequest) -> Prepared:
    """A chat completion request rendered with the chat template of the model it names."""
    check_chat_unsupported(req)
    check_sampling(temperature=req.temperature, top_k=None, top_p=req.top_p, typical_p=None,
                   repetition_penalty=None, frequency_penalty=req.frequency_penalty,
                   presence_penalty=req.presence_penalty, seed=req.seed, stop=req.stop, chat=True)
    messages = [{"role": m.role, "content": m.text()} for m in req.messages]
    if not any(m["content"].strip() for m in messages):
        raise invalid("`messages` cannot be empty")
    adapter = adapter_for(served, req.model)
    fmt = served.format_for(adapter)
    if not fmt.has_template:
        raise invalid(f"`{req.model or served.served_name}` has no chat template; use /generate with a prompt")
    try:
        prompt = fmt.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # the template's own complaint (roles out of order...) is the message
        raise invalid(f"the chat template refused these messages: {exc}") from None
    ids = fmt.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    greedy = req.temperature == 0
    sampling = Sampling(
        max_new_tokens=budget(served, len(ids), req.max_tokens, fmt, "max_tokens"), do_sample=not greedy,
        temperature=1.0 if greedy or req.temperature is None else req.temperature,
        top_p=req.top_p or 1.0, frequency_penalty=req.frequency_penalty or 0.0,
        presence_penalty=req.presence_penalty or 0.0, seed=req.seed,
        stop=sorted(set(req.stop or []) | set(fmt.stop)),
        top_n_tokens=(req.top_logprobs or 0) if req.logprobs else 0,
    )
    return Prepared(ids, adapter, fmt, sampling, adapter or served.served_name)

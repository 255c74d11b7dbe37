"""Variable-length attention for packed micro-batches: each packed row attends only to itself, with no mask.

With packing, a micro-batch is one long sequence of several rows told apart by position ids that restart at 0.
SDPA needs a dense block-diagonal mask for that, whose cost grows with the square of the micro-batch's tokens;
a FlashAttention-class varlen kernel takes the rows' boundaries instead (cumulative lengths) and does only
the work inside each row. PyTorch 2.10+ ships one (`torch.nn.attention.varlen.varlen_attn`), so no
FlashAttention wheel is needed.

`register()` adds it to transformers' attention functions as VARLEN; a model switched to it
(`model.set_attn_implementation(VARLEN)`) gets no mask from transformers (a custom attention has no mask
function) and the rows' boundaries from the position ids. The kernel runs on CUDA in bf16/fp16; elsewhere
(the CPU tests, an fp32 model) the same boundaries drive one SDPA call per row: exact, and slow.
"""

from __future__ import annotations

import inspect
from typing import Any

VARLEN = "studio_varlen"


def available() -> str | None:
    """None when the varlen kernel can run here, else why not."""
    import torch

    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return f"torch {torch.__version__} has no torch.nn.attention.varlen (needs 2.10 or newer)"
    if not torch.cuda.is_available():
        return "the varlen kernel needs a CUDA GPU"
    return None


def register() -> str:
    """Make VARLEN an attention implementation transformers models can switch to; returns its name."""
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN, varlen_attention)
    return VARLEN


def boundaries(position_ids, batch: int, length: int, device) -> tuple[Any, int]:
    """Cumulative row lengths (int32, starting at 0) over the flattened batch, and the longest row.

    A row starts wherever the position ids restart (go to 0 or do not increase by one); without position ids
    every sequence of the batch is one row."""
    import torch

    if position_ids is None:
        starts = torch.arange(0, batch * length, length, device=device)
    else:
        flat = position_ids.reshape(-1).to(device)
        restart = torch.ones_like(flat, dtype=torch.bool)
        restart[1:] = flat[1:] != flat[:-1] + 1
        restart[torch.arange(0, flat.numel(), length, device=device)] = True  # each sequence starts a row
        starts = restart.nonzero().view(-1)
    total = torch.tensor([batch * length], device=device)
    cu = torch.cat([starts, total]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max())


def varlen_attention(module, query, key, value, attention_mask, scaling: float | None = None,
                     dropout: float = 0.0, **kwargs: Any):
    """transformers' attention-function signature: query (B, H, S, D), key/value (B, Hkv, S, D) →
    ((B, S, H, D), None). A padded batch (a 2-D or 4-D mask) goes to SDPA as before."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if attention_mask is not None or query.shape[2] != key.shape[2]:  # padding, or decoding with a cache
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout, **kwargs)
    batch, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    if kwargs.get("cu_seq_lens_q") is not None and batch == 1:  # a collator that gave the boundaries itself
        cu = kwargs["cu_seq_lens_q"].to(device=query.device, dtype=torch.int32)
        longest = int(kwargs.get("max_length_q") or (cu[1:] - cu[:-1]).max())
    else:
        cu, longest = boundaries(kwargs.get("position_ids"), batch, length, query.device)
    q, k, v = (t.transpose(1, 2).reshape(batch * length, t.shape[1], dim) for t in (query, key, value))
    if available() is None and q.dtype in (torch.bfloat16, torch.float16):
        out = _kernel(q, k, v, cu, longest, scaling, gqa=kv_heads != heads)
    else:
        out = _per_row(q, k, v, cu, scaling)
    return out.view(batch, length, heads, dim), None


def _kernel(q, k, v, cu, longest: int, scaling: float | None, gqa: bool):
    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    if gqa and "enable_gqa" not in params:  # older torch: expand the key/value heads to the query heads
        repeat = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        gqa = False
    causal = {"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)}
    extra = {"enable_gqa": True} if gqa else {}
    return varlen_attn(q, k, v, cu, cu, longest, longest, scale=scaling, **causal, **extra)


def _per_row(q, k, v, cu, scaling: float | None):
    """The reference: one causal SDPA call per row (tokens, heads, dim)."""
    import torch
    import torch.nn.functional as F

    out = torch.empty_like(q)
    edges = cu.tolist()
    for start, end in zip(edges, edges[1:], strict=False):
        qs, ks, vs = (t[start:end].transpose(0, 1) for t in (q, k, v))  # (heads, len, dim)
        out[start:end] = F.scaled_dot_product_attention(
            qs, ks, vs, is_causal=True, scale=scaling, enable_gqa=ks.shape[0] != qs.shape[0]
        ).transpose(0, 1)
    return out

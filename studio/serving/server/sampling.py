"""Choosing the next token of every row of a batch at once, on the model's device: penalties, temperature,
top-k, top-p (and typical-p), greedy or seeded sampling, and the log-probabilities a request asked for.

Only the chosen token ids, their log-probabilities and the top-n alternatives of the rows that want them
leave the device. Seeded sampling draws from a counter-based hash of (seed, step, token id) instead of a
stateful generator, so a seed gives the same answer alone or in any batch, on any device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Sampling:
    max_new_tokens: int
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    typical_p: float = 1.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    top_n_tokens: int = 0
    prefill_details: bool = False

    @property
    def penalized(self) -> bool:
        return self.repetition_penalty != 1.0 or bool(self.frequency_penalty or self.presence_penalty)


@dataclass
class Picked:
    """What the host needs of one batch's choice: per row the token id, its log-probability under the
    model, and (for the rows that asked) the top-n alternatives as (id, logprob) pairs."""

    tokens: list[int]
    logprobs: list[float]
    top: list[list[tuple[int, float]]]


class History:
    """A penalized row's tokens as device tensors: in its context (repetition penalty) and generated
    (frequency and presence penalties). Made at the row's first choice, when the vocabulary is known."""

    def __init__(self, prompt: list[int], vocab: int, device):
        import torch

        self.seen = torch.zeros(vocab, dtype=torch.bool, device=device)
        self.seen[torch.tensor(prompt, device=device).clamp(max=vocab - 1)] = True
        self.counts = torch.zeros(vocab, dtype=torch.float32, device=device)

    def add(self, token: int) -> None:
        self.seen[token] = True
        self.counts[token] += 1


def pick(logits, settings: list[Sampling], seeds: list[int | None], steps: list[int],
         histories: list[History | None]) -> Picked:
    """`logits`: [rows, vocab] on the device (any float dtype); per row its settings, seed (sampling rows),
    the index of the token being chosen, and its History (penalized rows)."""
    import torch

    raw = logits.float()
    lse = torch.logsumexp(raw, dim=-1)
    scores = _penalize(raw, settings, histories)
    tokens = scores.argmax(dim=-1)
    sampled = [i for i, s in enumerate(settings) if s.do_sample]
    if sampled:
        index = torch.tensor(sampled, device=raw.device)
        warped = _warp(scores.index_select(0, index), [settings[i] for i in sampled])
        noise = gumbel([seeds[i] or 0 for i in sampled], [steps[i] for i in sampled], raw.shape[-1], raw.device)
        tokens = tokens.index_copy(0, index, (warped + noise).argmax(dim=-1))
    chosen = raw.gather(1, tokens[:, None])[:, 0] - lse
    top: list[list[tuple[int, float]]] = [[] for _ in settings]
    asking = [i for i, s in enumerate(settings) if s.top_n_tokens]
    if asking:
        index = torch.tensor(asking, device=raw.device)
        k = min(max(settings[i].top_n_tokens for i in asking), raw.shape[-1])
        values, ids = raw.index_select(0, index).topk(k, dim=-1)
        values = (values - lse.index_select(0, index)[:, None]).tolist()
        ids = ids.tolist()
        for j, i in enumerate(asking):
            n = settings[i].top_n_tokens
            top[i] = list(zip(ids[j][:n], values[j][:n], strict=True))
    return Picked(tokens.tolist(), chosen.tolist(), top)


def _penalize(raw, settings: list[Sampling], histories: list[History | None]):
    import torch

    rows = [i for i, s in enumerate(settings) if s.penalized]
    if not rows:
        return raw
    index = torch.tensor(rows, device=raw.device)
    sub = raw.index_select(0, index)
    seen = torch.stack([histories[i].seen for i in rows])
    counts = torch.stack([histories[i].counts for i in rows])
    rep = torch.tensor([settings[i].repetition_penalty for i in rows], device=raw.device)[:, None]
    sub = torch.where(seen, torch.where(sub < 0, sub * rep, sub / rep), sub)
    freq = torch.tensor([settings[i].frequency_penalty for i in rows], device=raw.device)[:, None]
    presence = torch.tensor([settings[i].presence_penalty for i in rows], device=raw.device)[:, None]
    sub = sub - freq * counts - presence * (counts > 0)
    return raw.index_copy(0, index, sub)


def _warp(scores, settings: list[Sampling]):
    """Temperature, then top-k, top-p and typical-p, each row with its own values (HF's warpers' order)."""
    import torch

    device, vocab = scores.device, scores.shape[-1]
    scores = scores / torch.tensor([s.temperature for s in settings], device=device)[:, None]
    if any(s.top_k for s in settings):
        k = torch.tensor([min(s.top_k, vocab) or vocab for s in settings], device=device)
        kth = scores.topk(int(k.max()), dim=-1).values.gather(1, (k - 1)[:, None])
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if any(s.top_p < 1.0 for s in settings):
        top_p = torch.tensor([s.top_p for s in settings], device=device)[:, None]
        ordered, order = scores.sort(dim=-1, descending=True)
        probs = ordered.softmax(dim=-1)
        drop = (probs.cumsum(dim=-1) - probs) > top_p  # tokens past the nucleus; the first always stays
        scores = scores.scatter(1, order, ordered.masked_fill(drop, float("-inf")))
    typical = [i for i, s in enumerate(settings) if s.typical_p < 1.0]
    if typical:  # rare: HF's warper, row by row, on the device
        from transformers.generation.logits_process import TypicalLogitsWarper

        for i in typical:
            scores[i:i + 1] = TypicalLogitsWarper(settings[i].typical_p)(None, scores[i:i + 1])
    return scores


# splitmix64's constants as signed 64-bit integers (torch's int64 arithmetic wraps around)
_GOLDEN = 0x9E3779B97F4A7C15 - 2**64
_MUL1 = 0xBF58476D1CE4E5B9 - 2**64
_MUL2 = 0x94D049BB133111EB - 2**64


def _shift(z, n: int):
    """Logical right shift of int64 values."""
    return (z >> n) & ((1 << (64 - n)) - 1)


def _mix(z):
    z = z + _GOLDEN
    z = (z ^ _shift(z, 30)) * _MUL1
    z = (z ^ _shift(z, 27)) * _MUL2
    return z ^ _shift(z, 31)


def gumbel(seeds: list[int], steps: list[int], vocab: int, device) -> Any:
    """Gumbel noise [rows, vocab] that depends only on (seed, step, token id): argmax(scores + noise) samples
    from softmax(scores), reproducibly."""
    import torch

    signed = [s - 2**64 if s >= 2**63 else s for s in seeds]
    key = _mix(_mix(torch.tensor(signed, dtype=torch.int64, device=device))
               + torch.tensor(steps, dtype=torch.int64, device=device))
    z = _mix(key[:, None] + torch.arange(vocab, dtype=torch.int64, device=device)[None])
    u = (_shift(z, 40).to(torch.float32) + 0.5) / float(2**24)  # 24 random bits, strictly inside (0, 1)
    return -torch.log(-torch.log(u))

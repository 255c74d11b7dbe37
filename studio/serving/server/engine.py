"""Generation: one worker thread owns the model and serves every request with continuous batching.

Requests wait in a queue; between two decoding steps the worker takes the waiting ones (up to
max_batch_size rows in all), prefills them together, and merges their KV cache into the running
batch (left-padded, each row with its own positions and its own adapter through peft's mixed-batch
`adapter_names`). A finished or abandoned row leaves the batch at once. So a new request does not
wait for the others to finish, and no request sees another's tokens: each row has its own cache
slice, attention mask, sampling settings and random generator.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from studio.serving.server.metrics import Metrics
from studio.serving.server.model import BASE, ChatFormat, Served

_MIXED = "\x00mixed"


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


@dataclass
class Job:
    """One request's work. `emit` is called from the worker thread with each event (a dict): prefill
    (only when asked), then token events, the last of which carries the end in its "end" key; or error."""

    input_ids: list[int]
    adapter: str | None
    fmt: ChatFormat
    sampling: Sampling
    emit: Callable[[dict], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    created: float = field(default_factory=time.monotonic)


@dataclass
class _Row:
    job: Job
    generated: list[int] = field(default_factory=list)
    text: str = ""  # the generated text so far, special tokens included (to find stop sequences)
    prefix_offset: int = 0
    read_offset: int = 0
    n_cached: int = 0  # real tokens of this row in the KV cache = its next position
    last: int = -1
    seed: int | None = None
    generator: Any = None
    finished: bool = False


class Engine:
    def __init__(self, served: Served, *, max_batch_size: int = 8, metrics: Metrics | None = None):
        import torch

        self.served = served
        self.torch = torch
        self.max_batch_size = max_batch_size
        self.metrics = metrics or Metrics()
        self.peft = bool(served.adapters)
        self._mode: str | None = "unset"
        self.device = next(served.model.parameters()).device
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="generation", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public

    def submit(self, job: Job) -> None:
        self._queue.put(job)
        self.metrics.gauge("tgi_queue_size", self._queue.qsize())

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        self._stop.set()
        self._queue.put(None)

    # ------------------------------------------------------------------ the worker

    def _run(self) -> None:
        rows: list[_Row] = []
        state: tuple[Any, Any] | None = None  # (cache, attention mask) of the running batch
        while not self._stop.is_set():
            jobs = self._take(block=not rows, room=self.max_batch_size - len(rows))
            if jobs is None:
                return
            try:
                if jobs:
                    rows, state = self._admit(rows, state, jobs)
                if rows:
                    rows, state = self._step(rows, state)
            except Exception as exc:  # one failed forward fails the requests in it, not the server
                for row in rows + [_Row(job) for job in jobs if not any(r.job is job for r in rows)]:
                    if not row.finished:
                        self._error(row.job, f"Request failed during generation: {type(exc).__name__}: {exc}")
                rows, state = [], None
                if self.device.type == "cuda":
                    self.torch.cuda.empty_cache()
            self.metrics.gauge("tgi_batch_current_size", len(rows))
            self.metrics.gauge("tgi_queue_size", self._queue.qsize())

    def _take(self, *, block: bool, room: int) -> list[Job] | None:
        jobs: list[Job] = []
        if block:
            job = self._queue.get()
            if job is None:
                return None
            jobs.append(job)
        while len(jobs) < room:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return None
            jobs.append(job)
        return [j for j in jobs if not j.cancelled.is_set()]

    def _admit(self, rows: list[_Row], state, jobs: list[Job]):
        """Prefill the new jobs together and merge them into the running batch."""
        torch = self.torch
        now = time.monotonic()
        for job in jobs:
            self.metrics.observe("tgi_request_queue_duration", now - job.created)
        width = max(len(j.input_ids) for j in jobs)
        pad = jobs[0].fmt.tokenizer.pad_token_id or 0
        ids = torch.full((len(jobs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for i, job in enumerate(jobs):
            ids[i, width - len(job.input_ids):] = torch.tensor(job.input_ids)
            mask[i, width - len(job.input_ids):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        want_prefill = any(j.sampling.prefill_details for j in jobs)
        with torch.inference_mode():
            out = self._forward(
                [j.adapter for j in jobs], input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                position_ids=positions.to(self.device), use_cache=True, logits_to_keep=0 if want_prefill else 1,
            )
        self.metrics.inc("tgi_batch_forward_count")
        logits = out.logits.float().cpu()
        new_rows = []
        for i, job in enumerate(jobs):
            row = _Row(job=job, n_cached=len(job.input_ids))
            self._seed(row)
            if job.sampling.prefill_details:
                job.emit({"type": "prefill", "tokens": self._prefill_tokens(job, logits[i])})
            self._advance(row, logits[i, -1])
            new_rows.append(row)
        keep = [i for i, r in enumerate(new_rows) if not r.finished]
        if not keep:
            return rows, state
        new_state = _select(out.cache, mask.to(self.device), keep) if len(keep) < len(jobs) else (
            out.cache, mask.to(self.device))
        new_rows = [new_rows[i] for i in keep]
        if not rows:
            return new_rows, new_state
        return rows + new_rows, _merge(state, new_state)

    def _step(self, rows: list[_Row], state):
        """One decoding step for every row of the batch."""
        torch = self.torch
        alive = [i for i, r in enumerate(rows) if not r.job.cancelled.is_set()]
        if len(alive) < len(rows):
            rows = [rows[i] for i in alive]
            if not rows:
                return [], None
            state = _select(*state, alive)
        cache, mask = state
        mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
        ids = torch.tensor([[r.last] for r in rows], device=self.device)
        positions = torch.tensor([[r.n_cached] for r in rows], device=self.device)
        with torch.inference_mode():
            out = self._forward([r.job.adapter for r in rows], input_ids=ids, attention_mask=mask,
                                position_ids=positions, cache=cache, use_cache=True)
        self.metrics.inc("tgi_batch_forward_count")
        self.metrics.observe("tgi_batch_forward_size", len(rows))
        logits = out.logits[:, -1].float().cpu()
        for i, row in enumerate(rows):
            row.n_cached += 1
            self._advance(row, logits[i])
        keep = [i for i, r in enumerate(rows) if not r.finished]
        if not keep:
            return [], None
        if len(keep) < len(rows):
            return [rows[i] for i in keep], _select(out.cache, mask, keep)
        return rows, (out.cache, mask)

    def _forward(self, adapters: list[str | None], **kwargs):
        """One forward pass. A batch on one model runs that adapter (or none) as peft's active one; only a
        batch that mixes models pays for peft's per-row `adapter_names` routing (about a third slower)."""
        if self.peft:
            distinct = set(adapters)
            if len(distinct) == 1:
                self._use(next(iter(distinct)))
            else:
                self._use(_MIXED)
                kwargs["adapter_names"] = [a or BASE for a in adapters]
        return self.served.model(**kwargs)

    def _use(self, mode: str | None) -> None:
        """Switch peft's state only when it changes: None = base model, an adapter name, or _MIXED."""
        if mode == self._mode:
            return
        lora = self.served.model.base_model
        if mode is None:
            lora.disable_adapter_layers()
        else:
            lora.enable_adapter_layers()
            if mode != _MIXED:
                self.served.model.set_adapter(mode)
        self._mode = mode

    # ------------------------------------------------------------------ one token of one row

    def _seed(self, row: _Row) -> None:
        s = row.job.sampling
        if s.do_sample:
            row.seed = s.seed if s.seed is not None else random.randrange(2**63)
            row.generator = self.torch.Generator().manual_seed(row.seed)

    def _advance(self, row: _Row, logits) -> None:
        """Choose the row's next token from its logits, emit it, and decide whether the row is done."""
        torch = self.torch
        job, s = row.job, row.job.sampling
        logprobs = torch.log_softmax(logits, dim=-1)
        scores = self._process(row, logits)
        if s.do_sample:
            probs = torch.softmax(scores, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=row.generator))
        else:
            token = int(torch.argmax(scores))
        row.generated.append(token)
        row.last = token
        tokenizer = job.fmt.tokenizer
        piece = self._decode_next(row)
        row.text += piece
        event: dict[str, Any] = {"type": "token", "token": {
            "id": token, "text": piece, "logprob": float(logprobs[token]),
            "special": token in job.fmt.special_ids}}
        if s.top_n_tokens:
            values, indices = torch.topk(logprobs, s.top_n_tokens)
            event["top_tokens"] = [
                {"id": int(i), "text": tokenizer.decode([int(i)]), "logprob": float(v),
                 "special": int(i) in job.fmt.special_ids}
                for v, i in zip(values, indices, strict=True)
            ]
        reason = None
        if token in job.fmt.eos_ids:
            reason = "eos_token"
        elif s.stop and any(stop in row.text[-(len(stop) + len(piece) + 8):] for stop in s.stop):
            reason = "stop_sequence"
        elif len(row.generated) >= s.max_new_tokens:
            reason = "length"
        if reason is not None:  # the last token carries the end, so a stream can close without waiting
            event["end"] = self._finish(row, reason)
        job.emit(event)

    def _process(self, row: _Row, logits):
        """The row's own logits processors: penalties, then (when sampling) temperature, top-k, top-p, typical."""
        torch = self.torch
        from transformers.generation import logits_process as lp

        s = row.job.sampling
        scores = logits[None].clone()
        if s.repetition_penalty != 1.0:
            context = torch.tensor([row.job.input_ids + row.generated])
            scores = lp.RepetitionPenaltyLogitsProcessor(s.repetition_penalty)(context, scores)
        if (s.frequency_penalty or s.presence_penalty) and row.generated:
            counts = torch.bincount(torch.tensor(row.generated), minlength=scores.shape[-1])[: scores.shape[-1]]
            scores = scores - s.frequency_penalty * counts - s.presence_penalty * (counts > 0)
        if s.do_sample:
            warpers = []
            if s.temperature != 1.0:
                warpers.append(lp.TemperatureLogitsWarper(s.temperature))
            if s.top_k:
                warpers.append(lp.TopKLogitsWarper(s.top_k))
            if s.top_p < 1.0:
                warpers.append(lp.TopPLogitsWarper(s.top_p))
            if s.typical_p < 1.0:
                warpers.append(lp.TypicalLogitsWarper(s.typical_p))
            for warper in warpers:
                scores = warper(None, scores)
        return scores[0]

    def _decode_next(self, row: _Row) -> str:
        """Incremental detokenization: text appears once its bytes form whole characters."""
        tokenizer = row.job.fmt.tokenizer
        ids = row.generated
        prefix = tokenizer.decode(ids[row.prefix_offset:row.read_offset], skip_special_tokens=False)
        full = tokenizer.decode(ids[row.prefix_offset:], skip_special_tokens=False)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            row.prefix_offset, row.read_offset = row.read_offset, len(ids)
            return full[len(prefix):]
        return ""

    def _prefill_tokens(self, job: Job, logits) -> list[dict]:
        """TGI's decoder_input_details: each prompt token with the log-probability the model gave it."""
        torch = self.torch
        n = len(job.input_ids)
        row_logits = logits[-n:]
        logprobs = torch.log_softmax(row_logits[:-1], dim=-1)
        ids = torch.tensor(job.input_ids)
        picked = logprobs.gather(1, ids[1:, None])[:, 0].tolist() if n > 1 else []
        tokenizer = job.fmt.tokenizer
        return [{"id": int(t), "text": tokenizer.decode([int(t)]), "logprob": None if i == 0 else picked[i - 1]}
                for i, t in enumerate(job.input_ids)]

    def _finish(self, row: _Row, reason: str) -> dict:
        row.finished = True
        job = row.job
        text = job.fmt.tokenizer.decode(row.generated, skip_special_tokens=True)
        self.metrics.inc("tgi_request_generated_tokens_total", len(row.generated))
        return {"type": "end", "finish_reason": reason, "generated_tokens": len(row.generated),
                "generated_text": text, "seed": row.seed, "input_length": len(job.input_ids)}

    def _error(self, job: Job, message: str) -> None:
        job.emit({"type": "error", "message": message})


# ---------------------------------------------------------------------- the batch's KV cache


def _layers(cache) -> list[tuple[Any, Any]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _rebuild(layers):
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=layers)


def _select(cache, mask, keep: list[int]):
    """Keep some rows, then drop the left columns that are padding in every remaining row."""
    import torch

    index = torch.tensor(keep, device=mask.device)
    mask = mask.index_select(0, index)
    used = (mask.sum(0) > 0).nonzero()
    lead = int(used[0]) if len(used) else 0
    layers = [(k.index_select(0, index)[:, :, lead:], v.index_select(0, index)[:, :, lead:])
              for k, v in _layers(cache)]
    return _rebuild(layers), mask[:, lead:]


def _merge(a, b):
    """Stack two batches: left-pad the shorter one's cache and mask to the longer one's length."""
    import torch

    (cache_a, mask_a), (cache_b, mask_b) = a, b
    width = max(mask_a.shape[1], mask_b.shape[1])

    def left_pad(x, length: int, dim: int):
        missing = length - x.shape[dim]
        if missing == 0:
            return x
        shape = list(x.shape)
        shape[dim] = missing
        return torch.cat([x.new_zeros(shape), x], dim=dim)

    layers = [
        (torch.cat([left_pad(ka, width, 2), left_pad(kb, width, 2)]),
         torch.cat([left_pad(va, width, 2), left_pad(vb, width, 2)]))
        for (ka, va), (kb, vb) in zip(_layers(cache_a), _layers(cache_b), strict=True)
    ]
    mask = torch.cat([left_pad(mask_a, width, 1), left_pad(mask_b, width, 1)])
    return _rebuild(layers), mask

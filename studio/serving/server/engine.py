"""Generation: one worker thread owns the model and serves every request with continuous batching.

Each turn of the loop admits waiting requests into free cache slots (scheduler.py: chat before evaluation),
runs one chunk of prefill (at most `prefill_chunk` prompt tokens, so a long new prompt is read a piece at a
time while the running rows keep decoding), then one decoding step for every running row. Each row has its
own slot in the preallocated KV cache (cache.py), its own positions and attention mask, its own adapter
(peft's mixed-batch `adapter_names`) and its own sampling settings (sampling.py, chosen on the device for
the whole batch at once). A finished or abandoned row frees its slot at once, and no request sees another's
tokens.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from studio.serving.server.cache import SlotCache
from studio.serving.server.metrics import Metrics
from studio.serving.server.model import BASE, ChatFormat, Served
from studio.serving.server.sampling import History, Sampling, pick
from studio.serving.server.scheduler import Scheduler

__all__ = ["Engine", "Job", "Sampling"]

_MIXED = "\x00mixed"
PREFILL_CHUNK = 256  # prompt tokens per prefill forward: a decoding step waits at most one such chunk


@dataclass
class Job:
    """One request's work. `emit` is called from the worker thread with each event (a dict): prefill
    (only when asked), then token events, the last of which carries the end in its "end" key; or error."""

    input_ids: list[int]
    adapter: str | None
    fmt: ChatFormat
    sampling: Sampling
    emit: Callable[[dict], None]
    priority: str = "interactive"
    cancelled: threading.Event = field(default_factory=threading.Event)
    created: float = field(default_factory=time.monotonic)


@dataclass
class _Row:
    job: Job
    slot: int
    n_cached: int = 0  # tokens of this row in its cache slot = its next position
    generated: list[int] = field(default_factory=list)
    text: str = ""  # the generated text so far, special tokens included (to find stop sequences)
    prefix_offset: int = 0
    read_offset: int = 0
    last: int = -1
    seed: int | None = None
    history: History | None = None
    prefill: list[float] = field(default_factory=list)  # prompt log-probabilities, when asked
    finished: bool = False

    @property
    def prefilling(self) -> bool:
        return self.n_cached < len(self.job.input_ids)


class Engine:
    def __init__(self, served: Served, *, max_batch_size: int = 8, max_batch_rows: int | None = None,
                 prefill_chunk: int = PREFILL_CHUNK, metrics: Metrics | None = None):
        import torch

        self.served = served
        self.torch = torch
        self.max_batch_size = max_batch_size
        self.max_batch_rows = max_batch_rows or max(1, max_batch_size * 3 // 4)
        self.prefill_chunk = prefill_chunk
        self.metrics = metrics or Metrics()
        self.scheduler = Scheduler(self.metrics, self.max_batch_rows)
        self.peft = bool(served.adapters)
        self._mode: str | None = "unset"
        self.device = next(served.model.parameters()).device
        config = served.model.config
        if config._attn_implementation not in ("sdpa", "eager"):  # flash kernels take no 4D mask
            served.model.set_attn_implementation("sdpa")
        self._bool_mask = config._attn_implementation == "sdpa"
        self.cache = SlotCache(max_batch_size, served.max_total_tokens + prefill_chunk, self.device)
        self.rows: list[_Row] = []  # decoding rows, in slots 0..n-1 (kept so by _compact)
        self.waiting: list[_Row] = []  # admitted rows still reading their prompt, chat first
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="generation", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public

    def submit(self, job: Job) -> None:
        self.scheduler.submit(job)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        self._stop.set()
        self.scheduler.close()

    # ------------------------------------------------------------------ the worker

    def _run(self) -> None:
        with self.torch.inference_mode():  # the cache and histories are inference tensors, updated in place
            self._loop()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self.scheduler.pull(block=not (self.rows or self.waiting)):
                return
            try:
                self._admit()
                self._drop_cancelled()
                if self.waiting:
                    self._prefill()
                if self.rows:
                    self._decode()
            except Exception as exc:  # one failed forward fails the requests in it, not the server
                for row in self.rows + self.waiting:
                    if not row.finished:
                        row.job.emit({"type": "error", "message": "Request failed during generation: "
                                                                  f"{type(exc).__name__}: {exc}"})
                self.rows, self.waiting = [], []
                if self.device.type == "cuda":
                    self.torch.cuda.empty_cache()
            self.metrics.gauge("tgi_batch_current_size", len(self.rows) + len(self.waiting))
            self.metrics.gauge("studio_batch_rows", self._batch_running())

    def _batch_running(self) -> int:
        return sum(r.job.priority == "batch" for r in self.rows + self.waiting)

    def _admit(self) -> None:
        used = {r.slot for r in self.rows + self.waiting}
        free = [s for s in range(self.max_batch_size) if s not in used]
        now = time.monotonic()
        for job in self.scheduler.admit(len(free), self._batch_running()):
            self.metrics.observe("tgi_request_queue_duration", now - job.created)
            row = _Row(job=job, slot=free.pop(0))
            if job.sampling.do_sample:
                row.seed = job.sampling.seed if job.sampling.seed is not None else random.randrange(2**63)
            self.waiting.append(row)
        self.waiting.sort(key=lambda r: (r.job.priority != "interactive", r.job.created))

    def _drop_cancelled(self) -> None:
        gone = [r for r in self.rows if r.job.cancelled.is_set()]
        self.waiting = [r for r in self.waiting if not r.job.cancelled.is_set()]
        if gone:
            self.rows = [r for r in self.rows if not r.job.cancelled.is_set()]
            self._compact()

    def _prefill(self) -> None:
        """One forward over the next prompt chunk of one or more admitted rows. Rows that asked for prompt
        log-probabilities are never batched with rows that did not: only theirs get full logits."""
        torch = self.torch
        first = self.waiting[0]
        details = first.job.sampling.prefill_details
        width = min(self.prefill_chunk, len(first.job.input_ids) - first.n_cached)
        batch = [first]
        for row in self.waiting[1:]:
            if row.job.sampling.prefill_details == details and (len(batch) + 1) * width <= self.prefill_chunk:
                batch.append(row)
        takes = [min(width, len(r.job.input_ids) - r.n_cached) for r in batch]
        pad = first.job.fmt.tokenizer.pad_token_id or 0
        ids = [r.job.input_ids[r.n_cached:r.n_cached + n] + [pad] * (width - n)
               for r, n in zip(batch, takes, strict=True)]
        starts = [r.n_cached for r in batch]
        ending = [i for i, r in enumerate(batch) if r.n_cached + takes[i] == len(r.job.input_ids)]
        if details:
            keep: Any = 0
        elif ending:
            keep = torch.tensor(sorted({takes[i] - 1 for i in ending}), device=self.device)
        else:
            keep = 1
        logits = self._forward(batch, ids, starts, width, logits_to_keep=keep)
        if details:
            for i, row in enumerate(batch):
                self._prompt_logprobs(row, logits[i, :takes[i]])
        for row, n in zip(batch, takes, strict=True):
            row.n_cached += n
        if not ending:
            return
        if details:
            last = torch.stack([logits[i, takes[i] - 1] for i in ending])
        else:
            kept = sorted({takes[i] - 1 for i in ending})
            last = torch.stack([logits[i, kept.index(takes[i] - 1)] for i in ending])
        done = [batch[i] for i in ending]
        self.waiting = [r for r in self.waiting if r not in done]
        for row in done:
            if row.job.sampling.prefill_details:
                row.job.emit({"type": "prefill", "tokens": self._prefill_tokens(row)})
        self._choose(done, last)
        self.rows += [r for r in done if not r.finished]
        self._compact()

    def _decode(self) -> None:
        """One decoding step for every running row."""
        rows = self.rows
        logits = self._forward(rows, [[r.last] for r in rows], [r.n_cached for r in rows], 1)
        self.metrics.observe("tgi_batch_forward_size", len(rows))
        for row in rows:
            row.n_cached += 1
        self._choose(rows, logits[:, -1])
        if any(r.finished for r in rows):
            self.rows = [r for r in rows if not r.finished]
            self._compact()

    def _forward(self, rows: list[_Row], ids: list[list[int]], starts: list[int], width: int, **kwargs):
        """One forward pass of `width` new tokens per row, row i's written from position starts[i]."""
        torch = self.torch
        length = self.cache.bind([r.slot for r in rows], starts, width)
        start = torch.tensor(starts, device=self.device)[:, None]
        positions = start + torch.arange(width, device=self.device)
        visible = torch.arange(length, device=self.device)[None, None, :] <= positions[:, :, None]  # causal, own row
        if self._bool_mask:
            mask = visible[:, None]
        else:
            dtype = self.cache.keys[0].dtype if self.cache.keys else self.served.model.dtype
            mask = torch.zeros(visible.shape, dtype=dtype, device=self.device).masked_fill(
                ~visible, torch.finfo(dtype).min)[:, None]
        out = self._model([r.job.adapter for r in rows], input_ids=torch.tensor(ids, device=self.device),
                          attention_mask=mask, position_ids=positions, cache=self.cache, use_cache=True, **kwargs)
        self.metrics.inc("tgi_batch_forward_count")
        return out.logits

    def _model(self, adapters: list[str | None], **kwargs):
        """A batch on one model runs that adapter (or none) as peft's active one; only a batch that mixes
        models pays for peft's per-row `adapter_names` routing (about a third slower)."""
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

    def _compact(self) -> None:
        """Keep the decoding rows in slots 0..n-1, so that a decoding step reads a view of the cache: a row
        past n moves (one row's cache copied) to a free slot below n, or trades with a prefilling row."""
        n = len(self.rows)
        holders = {r.slot: r for r in self.waiting}
        holes = sorted(set(range(n)) - {r.slot for r in self.rows})
        movers = sorted((r for r in self.rows if r.slot >= n), key=lambda r: r.slot)
        for row, hole in zip(movers, holes, strict=True):
            other = holders.get(hole)
            if other is None:
                self.cache.move(row.slot, hole, row.n_cached)
            else:
                self.cache.swap(row.slot, row.n_cached, hole, other.n_cached)
                other.slot = row.slot
            row.slot = hole
        self.rows.sort(key=lambda r: r.slot)

    # ------------------------------------------------------------------ tokens

    def _choose(self, rows: list[_Row], logits) -> None:
        """Pick every row's next token at once, then emit each and decide whether its row is done."""
        for row in rows:
            if row.job.sampling.penalized and row.history is None:
                row.history = History(row.job.input_ids, logits.shape[-1], logits.device)
        picked = pick(logits, [r.job.sampling for r in rows], [r.seed for r in rows],
                      [len(r.generated) for r in rows], [r.history for r in rows])
        for i, row in enumerate(rows):
            self._advance(row, picked.tokens[i], picked.logprobs[i], picked.top[i])

    def _advance(self, row: _Row, token: int, logprob: float, top: list[tuple[int, float]]) -> None:
        job, s = row.job, row.job.sampling
        row.generated.append(token)
        row.last = token
        if row.history is not None:
            row.history.add(token)
        piece = self._decode_next(row)
        row.text += piece
        event: dict[str, Any] = {"type": "token", "token": {
            "id": token, "text": piece, "logprob": logprob, "special": token in job.fmt.special_ids}}
        if s.top_n_tokens:
            tokenizer = job.fmt.tokenizer
            event["top_tokens"] = [{"id": i, "text": tokenizer.decode([i]), "logprob": v,
                                    "special": i in job.fmt.special_ids} for i, v in top]
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

    def _prompt_logprobs(self, row: _Row, logits) -> None:
        """The log-probability of each next prompt token in this chunk, computed on the device; only
        len(chunk) numbers leave it."""
        torch = self.torch
        ids = row.job.input_ids
        start = row.n_cached
        n = min(logits.shape[0], len(ids) - 1 - start)  # the last prompt token predicts no prompt token
        if n <= 0:
            return
        scores = logits[:n].float()
        target = torch.tensor(ids[start + 1:start + 1 + n], device=scores.device)[:, None]
        row.prefill += (scores.gather(1, target)[:, 0] - torch.logsumexp(scores, dim=-1)).tolist()

    def _prefill_tokens(self, row: _Row) -> list[dict]:
        """TGI's decoder_input_details: each prompt token with the log-probability the model gave it."""
        tokenizer = row.job.fmt.tokenizer
        return [{"id": t, "text": tokenizer.decode([t]), "logprob": None if i == 0 else row.prefill[i - 1]}
                for i, t in enumerate(row.job.input_ids)]

    def _finish(self, row: _Row, reason: str) -> dict:
        row.finished = True
        job = row.job
        text = job.fmt.tokenizer.decode(row.generated, skip_special_tokens=True)
        self.metrics.inc("tgi_request_generated_tokens_total", len(row.generated))
        return {"type": "end", "finish_reason": reason, "generated_tokens": len(row.generated),
                "generated_text": text, "seed": row.seed, "input_length": len(job.input_ids)}

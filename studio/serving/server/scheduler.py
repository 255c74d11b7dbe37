"""Admission to the running batch: interactive requests (chat) first, batch requests (an evaluation's, marked
by the client with the `X-Studio-Priority: batch` header) after them, and never more than `max_batch_rows`
batch requests in the running batch at once, so a chat finds a free row while a golden set runs.

Requests arrive from the HTTP handlers through a thread-safe inbox; the generation thread alone moves them
to the waiting lines and admits them.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from typing import Protocol

from studio.serving.server.metrics import Metrics

PRIORITIES = ("interactive", "batch")
PRIORITY_HEADER = "x-studio-priority"


class Queued(Protocol):
    priority: str  # one of PRIORITIES
    created: float  # time.monotonic() at arrival
    cancelled: threading.Event  # set when the client left


class Scheduler:
    def __init__(self, metrics: Metrics, max_batch_rows: int):
        self.metrics = metrics
        self.max_batch_rows = max_batch_rows
        self._inbox: queue.Queue = queue.Queue()
        self._waiting: dict[str, deque] = {p: deque() for p in PRIORITIES}
        self._closed = False

    def submit(self, job: Queued) -> None:
        self._inbox.put(job)

    def close(self) -> None:
        self._inbox.put(None)

    @property
    def waiting(self) -> int:
        return sum(len(line) for line in self._waiting.values())

    def pull(self, block: bool) -> bool:
        """Move arrived requests to their waiting line (waiting for one when `block`); False once closed."""
        while True:
            try:
                job = self._inbox.get(block=block and not self.waiting)
            except queue.Empty:
                break
            if job is None:
                self._closed = True
                return False
            self._waiting[job.priority].append(job)
            block = False
        for line in self._waiting.values():  # requests whose client left before they started
            while line and line[0].cancelled.is_set():
                line.popleft()
        self._gauges()
        return not self._closed

    def admit(self, free: int, batch_running: int) -> list:
        """Up to `free` requests to start now: every waiting interactive one first, then batch ones while
        fewer than max_batch_rows batch requests run."""
        chosen: list = []
        interactive, batch = self._waiting["interactive"], self._waiting["batch"]
        while free > len(chosen) and interactive:
            job = interactive.popleft()
            if job.cancelled.is_set():
                continue
            if any(b.created < job.created and not b.cancelled.is_set() for b in batch):
                self.metrics.inc("studio_interactive_admitted_ahead_total")  # it overtook an evaluation's request
            chosen.append(job)
        while free > len(chosen) and batch and batch_running < self.max_batch_rows:
            job = batch.popleft()
            if job.cancelled.is_set():
                continue
            chosen.append(job)
            batch_running += 1
        for job in chosen:
            self.metrics.inc(f"studio_admitted_{job.priority}_total")
        self._gauges()
        return chosen

    def _gauges(self) -> None:
        self.metrics.gauge("tgi_queue_size", self.waiting + self._inbox.qsize())
        self.metrics.gauge("studio_queue_batch_size", len(self._waiting["batch"]))

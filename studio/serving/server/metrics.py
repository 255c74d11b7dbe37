"""Prometheus metrics of the endpoint, named as TGI names them where TGI has the same quantity."""

from __future__ import annotations

import threading
from collections import Counter


class Metrics:
    """Counters and sums, updated from the event loop and the generation thread (hence the lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.sums: Counter[str] = Counter()
        self.gauges: dict[str, float] = {"tgi_queue_size": 0, "tgi_batch_current_size": 0}
        for name in ("studio_interactive_admitted_ahead_total", "studio_admitted_interactive_total",
                     "studio_admitted_batch_total"):  # listed from the start, at 0
            self.counters[name] = 0

    def inc(self, name: str, value: float = 1) -> None:
        with self._lock:
            self.counters[name] += value

    def fail(self, error_type: str) -> None:
        with self._lock:
            self.counters["tgi_request_failure"] += 1
            self.failures[error_type] += 1

    def observe(self, name: str, value: float) -> None:
        """A summary: its _sum and _count."""
        with self._lock:
            self.sums[name] += value
            self.counters[name + "_count"] += 1

    def gauge(self, name: str, value: float) -> None:
        with self._lock:
            self.gauges[name] = value

    def render(self) -> str:
        with self._lock:
            lines = []
            studio = sorted(n for n in self.counters if n.startswith("studio_"))
            for name in ("tgi_request_count", "tgi_request_success", "tgi_request_failure",
                         "tgi_batch_forward_count", "tgi_request_generated_tokens_total", *studio):
                lines += [f"# TYPE {name} counter", f"{name} {self.counters[name]:g}"]
            for err, count in sorted(self.failures.items()):
                lines.append(f'tgi_request_failure{{err="{err}"}} {count:g}')
            for name in sorted(self.sums):
                lines += [f"# TYPE {name} summary", f"{name}_sum {self.sums[name]:.6f}",
                          f"{name}_count {self.counters[name + '_count']:g}"]
            for name, value in sorted(self.gauges.items()):
                lines += [f"# TYPE {name} gauge", f"{name} {value:g}"]
            return "\n".join(lines) + "\n"

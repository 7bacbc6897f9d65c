"""Prometheus metrics in the text exposition format (no dependency): counters, gauges, histograms."""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from typing import Iterable

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def _labels(items: Iterable[tuple[str, str]]) -> str:
    parts = [f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"' for k, v in items]
    return "{" + ",".join(parts) + "}" if parts else ""


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, v)] += 1
        self.sum += v


class Metrics:
    """The server's metrics: request count and latency per model and status, batch sizes, queue depth."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, str], int] = defaultdict(int)
        self.latency: dict[str, _Histogram] = {}
        self.batch: dict[str, _Histogram] = {}
        self.queue: dict[str, int] = defaultdict(int)

    def request(self, path: str, model: str, status: int, seconds: float) -> None:
        """Count a finished request and its latency (seconds)."""
        with self._lock:
            self.requests[(path, model, str(status))] += 1
            self.latency.setdefault(model, _Histogram(_LATENCY_BUCKETS)).observe(seconds)

    def batch_size(self, model: str, n: int) -> None:
        """Record one batch of ``n`` patterns."""
        with self._lock:
            self.batch.setdefault(model, _Histogram(_BATCH_BUCKETS)).observe(n)

    def queue_depth(self, model: str, delta: int) -> None:
        """Change the number of requests waiting for or in a batch of ``model``."""
        with self._lock:
            self.queue[model] += delta

    def render(self) -> str:
        """The text exposition (``GET /metrics``)."""
        out = ["# HELP distill4d_requests_total HTTP requests by route, model and status.",
               "# TYPE distill4d_requests_total counter"]
        with self._lock:
            for (path, model, status), n in sorted(self.requests.items()):
                out.append(f"distill4d_requests_total{_labels([('route', path), ('model', model), ('status', status)])} {n}")
            for name, help_, hists in (
                ("distill4d_request_seconds", "Request latency in seconds by model.", self.latency),
                ("distill4d_batch_size", "Patterns per executed batch by model.", self.batch),
            ):
                out += [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
                for model, h in sorted(hists.items()):
                    cum = 0
                    for b, c in zip(h.buckets + (float("inf"),), h.counts):
                        cum += c
                        le = "+Inf" if b == float("inf") else repr(float(b))
                        out.append(f"{name}_bucket{_labels([('model', model), ('le', le)])} {cum}")
                    out.append(f"{name}_sum{_labels([('model', model)])} {h.sum}")
                    out.append(f"{name}_count{_labels([('model', model)])} {cum}")
            out += ["# HELP distill4d_queue_depth Requests waiting for or in a batch, by model.",
                    "# TYPE distill4d_queue_depth gauge"]
            for model, n in sorted(self.queue.items()):
                out.append(f"distill4d_queue_depth{_labels([('model', model)])} {n}")
        return "\n".join(out) + "\n"

"""Client-side metrics: what a submitter waits for a partition call, through ``ray.util.metrics``."""

from __future__ import annotations

from ray.util import metrics

_MS_BOUNDS = [0.25, 0.5, 1, 2, 5, 10, 25, 50, 100, 250, 1000, 5000]


class ClientMetrics:
    def __init__(self) -> None:
        self.call_ms = metrics.Histogram(
            "es_actors_client_call_ms",
            "Round trip of one client->partition call (the latency every command in it saw).",
            boundaries=_MS_BOUNDS,
        )

    def observe(self, partition_batch: int, elapsed_ms: float) -> None:
        self.call_ms.observe(elapsed_ms)

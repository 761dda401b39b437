"""Per-model-version inference statistics in the shape of Triton's statistics extension
(`GET /v2/models/{name}/stats`), counted by every protocol (JSON, binary, msgpack, WebSocket, v2).

Counts are per worker process (like the in-process metrics): with `--workers > 1` each answer comes from the
worker that served the stats request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class Duration:
    count: int = 0
    seconds: float = 0.0  # summed as a float (a rounding per request costs more); nanoseconds when read

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.seconds += seconds

    @property
    def ns(self) -> int:
        return round(self.seconds * 1e9)

    def as_dict(self) -> dict:
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class ModelStats:
    """Triton's meaning: `inference_count` counts rows (batch items) that succeeded, `execution_count` the
    forward passes; success/fail are whole requests end to end; queue and compute_infer are per request."""

    name: str
    version: str
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)

    def succeeded(self, rows: int, duration_s: float, queue_s: float, compute_s: float) -> None:
        self.inference_count += rows
        self.last_inference_ms = int(time.time() * 1000)
        self.success.add(duration_s)
        self.queue.add(queue_s)
        self.compute_infer.add(compute_s)

    def failed(self, duration_s: float) -> None:
        self.fail.add(duration_s)

    def as_dict(self) -> dict:
        zero = {"count": 0, "ns": 0}
        return {
            "name": self.name,
            "version": self.version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.as_dict(),
                "fail": self.fail.as_dict(),
                "queue": self.queue.as_dict(),
                # Decode and encode happen outside the model here; Triton's clients expect the keys.
                "compute_input": dict(zero),
                "compute_infer": self.compute_infer.as_dict(),
                "compute_output": dict(zero),
                "cache_hit": dict(zero),
                "cache_miss": dict(zero),
            },
            "batch_stats": [],
        }

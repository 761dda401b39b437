"""Prometheus metrics of the policy server (names fixed in docs/architecture.md section 5).

Latencies are histograms (50 us .. 1 s) so p95/p99 aggregate across replicas, which Triton's cumulative
counters cannot do. Each server owns its registry, so several apps can live in one test process.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

disable_created_metrics()  # `_created` series double the exposition and no dashboard reads them

LATENCY_BUCKETS_S = (
    50e-6, 100e-6, 200e-6, 300e-6, 500e-6, 750e-6,
    1e-3, 1.5e-3, 2e-3, 3e-3, 5e-3, 7.5e-3,
    10e-3, 15e-3, 20e-3, 30e-3, 50e-3, 75e-3,
    0.1, 0.2, 0.3, 0.5, 0.75, 1.0,
)  # fmt: skip
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
PROTOCOLS = ("json", "binary", "ws", "v2")
OUTCOMES = ("ok", "invalid", "rejected", "timeout", "cancelled", "error")
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST


def multiprocess_dir() -> str | None:
    """prometheus_client's multiprocess mode is on when this variable names a directory."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class _DeferredHistogram:
    """A histogram child whose `observe` only appends to a list (a C call): prometheus_client's own observe
    takes a lock and scans the buckets, microseconds on every request. `flush()` (at scrape time, and a few
    times a second) adds the values to the buckets in bulk: one numpy pass and one increment per touched
    bucket, where observing them one by one cost the event loop 5% of its time at 15k requests/s. Event
    loop thread only."""

    def __init__(self, child) -> None:
        self._child, self._values = child, []
        self.observe = self._values.append
        # prometheus_client's histogram child: `_upper_bounds` (ending in +Inf), a value per bucket and the
        # sum. Where a version lays it out otherwise, every value goes through `observe` as before.
        buckets, total = getattr(child, "_buckets", None), getattr(child, "_sum", None)
        bounds = getattr(child, "_upper_bounds", None)
        bulk = (
            buckets is not None and total is not None and bounds is not None and len(bounds) == len(buckets)
        )
        self._bulk = (np.asarray(bounds, dtype=np.float64), buckets, total) if bulk else None

    def flush(self) -> None:
        values = self._values
        if not values:
            return
        if self._bulk is None:
            for value in values:
                self._child.observe(value)
        else:
            bounds, buckets, total = self._bulk
            samples = np.asarray(values, dtype=np.float64)
            # observe() counts a value in the first bucket whose bound is >= it: searchsorted's "left" side.
            counts = np.bincount(np.searchsorted(bounds, samples, side="left"), minlength=len(bounds) + 1)
            for bucket, count in zip(buckets, counts[: len(bounds)].tolist(), strict=True):
                if count:
                    bucket.inc(count)
            total.inc(float(samples.sum()))
        values.clear()


class _DeferredCounter:
    """A counter child counted in a plain int until `flush()` (see `_DeferredHistogram`)."""

    def __init__(self, child) -> None:
        self._child, self.count = child, 0

    def inc(self) -> None:
        self.count += 1

    def flush(self) -> None:
        if self.count:
            self._child.inc(self.count)
            self.count = 0


class ServerMetrics:
    """All series, with children pre-bound per label value: the hot path does no label lookups."""

    def __init__(self) -> None:
        self.multiprocess = multiprocess_dir() is not None
        # In multiprocess mode samples go to per-process files; collection reads them all at scrape time.
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.request_duration = Histogram(
            "om2p_request_duration_seconds",
            "End-to-end /act latency inside the server: body received to response sent.",
            ["protocol"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "om2p_queue_wait_seconds",
            "Time a request waited in the batcher's queue before its forward pass started.",
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.compute = Histogram(
            "om2p_compute_seconds",
            "Duration of one batched forward pass (all rows, all agents).",
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.batch_rows = Histogram(
            "om2p_batch_rows",
            "Rows (environments, each with every agent) per forward pass.",
            buckets=ROW_BUCKETS,
            registry=registry,
        )
        self.requests = Counter(
            "om2p_requests",
            "Action requests by outcome.",
            ["outcome"],
            registry=registry,
        )
        gauge_mode = {"multiprocess_mode": "livesum"}
        self.inflight = Gauge(
            "om2p_inflight_requests",
            "Action requests received and not yet answered.",
            registry=registry,
            **gauge_mode,
        )
        self.queue_rows = Gauge(
            "om2p_queue_rows", "Rows waiting in the batcher's queue.", registry=registry, **gauge_mode
        )
        self.queue_capacity = Gauge(
            "om2p_queue_capacity_rows",
            "Rows the queue accepts before answering 503 (summed over worker processes).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.model_info = Gauge(
            "om2p_model_info",
            "The model being served (value 1).",
            ["name", "version", "backend", "agents", "obs_dim", "act_dim"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self._model_labels: tuple[str, ...] | None = None
        # The hot path's series. In multiprocess mode samples must reach the per-process files before any
        # worker's scrape, so they are written at once there.
        self._pending: list = []
        histogram, counter = self._deferred(_DeferredHistogram), self._deferred(_DeferredCounter)
        self.by_protocol = {
            protocol: histogram(self.request_duration.labels(protocol)) for protocol in PROTOCOLS
        }
        self.by_outcome = {outcome: counter(self.requests.labels(outcome)) for outcome in OUTCOMES}
        self.observe_queue_wait = histogram(self.queue_wait).observe
        self.observe_compute = histogram(self.compute).observe
        self.observe_batch_rows = histogram(self.batch_rows).observe

    def _deferred(self, kind: type) -> Callable:
        """Wraps a series child in `kind`, or (multiprocess mode) returns it as it is."""

        def wrap(child):
            if self.multiprocess:
                return child
            deferred = kind(child)
            self._pending.append(deferred)
            return deferred

        return wrap

    def flush(self) -> None:
        """Hand the deferred samples to prometheus_client (before a scrape; periodically)."""
        for deferred in self._pending:
            deferred.flush()

    def track_queue(self, queued_rows: Callable[[], float]) -> None:
        """Queue depth read at scrape time (no cost per request); per-process files need explicit sets."""
        if not self.multiprocess:
            self.queue_rows.set_function(queued_rows)

    def set_model(
        self, name: str, version: int, backend: str, agents: int, obs_dim: int, act_dim: int
    ) -> None:
        labels = (name, str(version), backend, str(agents), str(obs_dim), str(act_dim))
        if self._model_labels is not None and self._model_labels != labels:
            # 0 first: in multiprocess mode the old series lives on in this worker's file.
            self.model_info.labels(*self._model_labels).set(0)
            self.model_info.remove(*self._model_labels)
        self.model_info.labels(*labels).set(1)
        self._model_labels = labels

    def process_exited(self) -> None:
        """Multiprocess mode: drop this worker's live gauges from the aggregate."""
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())

    def exposition(self) -> bytes:
        self.flush()
        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)

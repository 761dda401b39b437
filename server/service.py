"""The policy service: the protocol-independent core every route calls (JSON, binary, msgpack, WebSocket,
KServe v2). Owns the current model runtime, readiness, draining, reloads and the request accounting."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from pathlib import Path

import numpy as np

from export.manifest import resolve_version_dir
from server.batcher import ZERO_NOISE, BatcherClosed, BatchStats, QueueFull, Timing
from server.held import HeldConnections
from server.metrics import ServerMetrics
from server.runtime import ModelRuntime
from server.settings import ServerSettings
from server.stats import ModelStats
from server.validation import ActOptions

log = logging.getLogger("om2p.server")


class ServiceUnavailable(Exception):
    """503: not ready yet, shutting down, or the queue is full (then with a Retry-After)."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ReloadFailed(Exception):
    pass


class PolicyService:
    def __init__(self, settings: ServerSettings, metrics: ServerMetrics | None = None) -> None:
        self.settings = settings
        # Compared as bytes (server.act.api_key_ok): the UTF-8 a client sends for a non-ASCII key.
        self.api_key = settings.api_key.encode() if settings.api_key is not None else None
        self.metrics = metrics or ServerMetrics()
        self.runtime: ModelRuntime | None = None
        self.draining = False
        self.load_error: str | None = None
        self.inflight = 0
        self.timeout_s = settings.request_timeout_ms / 1000
        self._reload_lock = asyncio.Lock()
        self._failed_versions: set[Path] = set()
        self._watch_task: asyncio.Task | None = None
        self._gauge_task: asyncio.Task | None = None
        self.held = HeldConnections()  # refused connections not read yet (server.protocols pauses them)
        self.stats: dict[tuple[str, int], ModelStats] = {}  # (name, version) -> Triton-style statistics
        metrics = self.metrics
        metrics.queue_capacity.set(max(settings.max_queue_rows, settings.max_batch_rows))
        metrics.track_queue(
            lambda: self.runtime.batcher.queued_rows if self.runtime and self.runtime.batcher else 0
        )
        if not metrics.multiprocess:
            metrics.inflight.set_function(lambda: self.inflight)
        self._observe_queue = metrics.observe_queue_wait
        self._observe_compute = metrics.observe_compute
        self._observe_rows = metrics.observe_batch_rows
        self._by_protocol, self._by_outcome = metrics.by_protocol, metrics.by_outcome

    # --- life cycle ---

    @property
    def ready(self) -> bool:
        return self.runtime is not None and not self.draining

    async def start(self) -> None:
        """Load and warm up in a thread while /healthz already answers; /readyz turns 200 when done."""
        try:
            model_path = self.settings.model_path()
            runtime = await asyncio.to_thread(ModelRuntime.load, self.settings, model_path)
        except Exception as error:
            self.load_error = str(error)
            log.error("om2p serve: cannot load the model: %s", error)
            raise
        self._install(runtime)
        # Imports and the model are here to stay: move them out of the collector's sight, so that gen-2
        # collections (latency spikes) traverse only request garbage.
        gc.freeze()
        log.info(
            "serving %s v%d on %s (%s), warm-up %.2f s",
            runtime.spec.name,
            runtime.spec.version,
            runtime.backend_name,
            runtime.backend.description,
            runtime.warmup_s,
        )
        loop = asyncio.get_running_loop()
        if self.settings.watch_interval_s > 0:
            self._watch_task = loop.create_task(self._watch())
        self._gauge_task = loop.create_task(self._publish_gauges())

    def _install(self, runtime: ModelRuntime) -> None:
        stats = self.stats_for(runtime)

        def on_batch(batch: BatchStats) -> None:
            stats.execution_count += 1
            self._on_batch(batch)

        runtime.start_batcher(self.settings, on_batch, refill=self.held.release)
        self.runtime = runtime
        spec = runtime.spec
        self.metrics.set_model(
            spec.name, spec.version, runtime.backend_name, spec.n_agents, spec.obs_dim, spec.act_dim
        )

    def begin_drain(self) -> None:
        """SIGTERM: /readyz fails at once so load balancers stop sending; accepted requests still finish,
        without waiting for batches to fill."""
        self.draining = True
        if self.runtime is not None and self.runtime.batcher is not None:
            self.runtime.batcher.flush()

    async def stop(self) -> None:
        self.draining = True
        for task in (self._watch_task, self._gauge_task):
            if task is not None:
                task.cancel()
        if self.metrics.multiprocess:
            self.metrics.process_exited()
        if self.runtime is not None:
            await self.runtime.close()

    async def reload(self, model: Path | None = None, force: bool = False) -> dict:
        """Load the newest version (or `model`), check and warm it up, then swap; on any failure the
        current version keeps serving and `ReloadFailed` says why."""
        async with self._reload_lock:
            old = self.runtime
            path = Path(model) if model is not None else self.settings.model_path()
            if self.settings.backend != "torch":
                try:
                    path = resolve_version_dir(path)
                except ValueError:
                    # Not the resolver's message: it lists the directory's entries, and this answer goes
                    # over HTTP (`"model": "/"` would list the root).
                    raise ReloadFailed(
                        f"model {str(path)!r}: not a model version directory (with manifest.json), a model "
                        "directory with numeric versions, or a repository with one model"
                    ) from None
                if not force and old is not None and path.resolve() == Path(old.spec.source).resolve():
                    return {
                        "reloaded": False,
                        "model": old.describe(),
                        "reason": "already serving this version",
                    }
            try:
                new = await asyncio.to_thread(ModelRuntime.load, self.settings, path)
            except Exception as error:
                self._failed_versions.add(path.resolve())
                raise ReloadFailed(f"kept version {old.spec.version if old else None}: {error}") from None
            if old is not None and (new.spec.n_agents, new.spec.obs_dim) != (
                old.spec.n_agents,
                old.spec.obs_dim,
            ):
                log.warning("reload changes the observation shape: clients must follow")
            self._install(new)
            log.info(
                "reloaded %s: v%s -> v%d", new.spec.name, old.spec.version if old else None, new.spec.version
            )
            if old is not None:
                await old.close()  # drains the requests queued for the old version
            return {
                "reloaded": True,
                "previous_version": old.spec.version if old else None,
                "model": new.describe(),
            }

    async def _watch(self) -> None:
        """Poll the model directory; a new version directory is loaded like POST /admin/reload."""
        while True:
            await asyncio.sleep(self.settings.watch_interval_s)
            with contextlib.suppress(Exception):
                candidate = resolve_version_dir(self.settings.model_path()).resolve()
                current = self.runtime.spec.source.resolve() if self.runtime else None
                if candidate != current and candidate not in self._failed_versions:
                    try:
                        await self.reload(candidate)
                    except ReloadFailed as error:
                        log.error("watched reload failed: %s", error)

    async def _publish_gauges(self) -> None:
        """A few times a second: hand deferred samples to prometheus_client (bounding their memory), and in
        multiprocess mode, where gauges live in per-process files and cannot be read at scrape time, write
        this worker's in-flight count and queue depth (the hot path stays free of both)."""
        metrics = self.metrics
        while True:
            metrics.flush()
            if metrics.multiprocess:
                runtime = self.runtime
                metrics.inflight.set(self.inflight)
                metrics.queue_rows.set(runtime.batcher.queued_rows if runtime and runtime.batcher else 0)
            await asyncio.sleep(0.25)

    # --- requests ---

    def _on_batch(self, stats: BatchStats) -> None:
        self._observe_compute(stats.compute_s)
        self._observe_rows(stats.rows)
        for wait in stats.queue_waits_s:
            self._observe_queue(wait)

    def stats_for(self, runtime: ModelRuntime) -> ModelStats:
        key = (runtime.spec.name, runtime.spec.version)
        stats = self.stats.get(key)
        if stats is None:
            stats = self.stats[key] = ModelStats(runtime.spec.name, str(runtime.spec.version))
        return stats

    def record_success(self, runtime: ModelRuntime, rows: int, timing: Timing, started: float) -> None:
        """Statistics of one answered request; `started` is its `time.perf_counter()` on arrival."""
        self.stats_for(runtime).succeeded(
            rows, time.perf_counter() - started, timing.queue_s, timing.compute_s
        )

    def record_failure(self, started: float) -> None:
        if self.runtime is not None:
            self.stats_for(self.runtime).failed(time.perf_counter() - started)

    def observe(self, protocol: str | None, outcome: str, started: float) -> None:
        """Prometheus: one request's outcome and (with a protocol) its duration."""
        if protocol is not None:
            self._by_protocol[protocol].observe(time.perf_counter() - started)
        self._by_outcome[outcome].inc()

    def current(self) -> ModelRuntime:
        runtime = self.runtime
        if runtime is None:
            raise ServiceUnavailable(
                "model still loading" if self.load_error is None else "model failed to load"
            )
        return runtime

    def shed(self) -> ServiceUnavailable | None:
        """The refusal for a request that arrives now, decided from the queue depth alone, or None. Called
        before the body is read or parsed: under overload a refusal must cost far less than an answer, or
        refusing eats the capacity that the accepted requests need (issue #18: 50x collapse otherwise)."""
        runtime = self.runtime
        if runtime is None or runtime.batcher is None or not runtime.batcher.full():
            return None
        batcher = runtime.batcher
        if batcher._closing:
            return ServiceUnavailable("the model is shutting down")
        return ServiceUnavailable(
            f"queue full ({batcher.queued_rows} of {batcher.max_queue_rows} rows waiting); retry later",
            batcher.retry_after_s(),
        )

    @staticmethod
    def _noise(runtime: ModelRuntime, obs: np.ndarray, options: ActOptions) -> np.ndarray | str | None:
        if options.deterministic:
            return ZERO_NOISE
        if options.seed is not None:
            return np.random.default_rng(options.seed).standard_normal(
                (obs.shape[0], runtime.spec.n_agents, runtime.spec.act_dim), dtype=np.float32
            )
        return None  # the batcher draws fresh Gaussian noise

    def run_now(self, runtime: ModelRuntime, obs: np.ndarray, options: ActOptions) -> tuple | None:
        """`(actions, Timing)` computed at once when this is the only request in flight and the batcher is
        idle (see `DynamicBatcher.run_now`), else None."""
        if self.inflight != 1 or runtime.batcher is None:
            return None
        return runtime.batcher.run_now(obs, self._noise(runtime, obs, options))

    def submit(self, runtime: ModelRuntime, obs: np.ndarray, options: ActOptions):
        """Synchronous (no await between validation against `runtime.spec` and queuing on its batcher)."""
        noise = self._noise(runtime, obs, options)
        assert runtime.batcher is not None
        try:
            return runtime.batcher.submit(obs, noise, time.monotonic() + self.timeout_s)
        except QueueFull as error:
            raise ServiceUnavailable(str(error), error.retry_after_s) from None
        except BatcherClosed as error:
            raise ServiceUnavailable(str(error)) from None

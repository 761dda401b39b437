"""The dynamic batcher: merges concurrent requests into one forward pass. No HTTP in here.

A *row* is one joint observation `[n_agents, obs_dim]` (one environment): every agent of a row is computed
in the same pass, so rows, not requests, count toward `max_batch_rows` and `max_queue_rows` (a request of
64 environments weighs 64, as BentoML issue 3859 asks).

Policy (one dispatcher task, one compute thread):
- a batch closes when it holds `max_batch_rows`, or when its oldest request has waited `max_delay_s`;
  with `max_delay_s = 0` it closes as soon as the compute thread is free, so requests that arrive while a
  batch computes form the next one (continuous batching: no added latency at low load);
- a full queue rejects at once (`QueueFull`, the web layer answers 503 + Retry-After);
- a batch it cannot fill first lets clients held back after a refusal send the missing rows (`refill`,
  see `server.held`): past saturation the batches stay full;
- a request past its deadline is failed with `DeadlineExceeded` without being computed (504);
- a cancelled request (its client went away) is dropped before compute.
The forward pass runs in a worker thread, so the event loop keeps accepting requests meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Forward = Callable[
    [np.ndarray, np.ndarray], np.ndarray
]  # (obs [B,N,obs_dim], noise [B,N,act_dim]) -> actions
ZERO_NOISE = "zero"  # deterministic request: noise = 0, written into the batch buffer in the worker


class BatcherError(Exception):
    """Base of the batcher's refusals; the web layer maps each to a status code."""


class QueueFull(BatcherError):
    def __init__(self, queued_rows: int, capacity_rows: int, retry_after_s: float) -> None:
        super().__init__(f"queue full ({queued_rows} of {capacity_rows} rows waiting); retry later")
        self.retry_after_s = retry_after_s


class DeadlineExceeded(BatcherError):
    pass


class BatcherClosed(BatcherError):
    pass


class Clock:
    """Monotonic time and a timed wait; tests substitute a manual clock."""

    def now(self) -> float:
        return time.monotonic()

    async def wait(self, event: asyncio.Event, timeout_s: float) -> None:
        """Return when `event` is set or `timeout_s` has passed, whichever comes first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout_s)


@dataclass(frozen=True, slots=True)
class Timing:
    queue_s: float  # enqueue -> start of its batch's forward pass
    compute_s: float  # the forward pass of the whole batch
    batch_rows: int


@dataclass(frozen=True, slots=True)
class BatchStats:
    """What the batcher reports for each forward pass (for metrics)."""

    rows: int
    requests: int
    compute_s: float
    queue_waits_s: tuple[float, ...]


class ComputeThread:
    """One long-lived thread for forward passes: jobs in through a queue, results out through
    `call_soon_threadsafe`. Lighter than `run_in_executor` (no concurrent.futures chain): for a small
    batch the thread hand-off is a large share of the latency."""

    def __init__(self, name: str = "om2p-compute") -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def run(self, loop: asyncio.AbstractEventLoop, fn: Callable, *args) -> asyncio.Future:
        future = loop.create_future()
        self._jobs.put((loop, future, fn, args))
        return future

    def shutdown(self) -> None:
        self._jobs.put(None)

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, future, fn, args = job
            try:
                outcome = (fn(*args), None)
            except Exception as error:
                outcome = (None, error)
            try:
                loop.call_soon_threadsafe(_resolve, future, *outcome)
            except RuntimeError:  # the loop has closed: nobody is waiting any more
                return


def _resolve(future: asyncio.Future, result: object, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class _NoFuture:
    """The future of a request computed by `run_now`: nobody awaits it."""

    @staticmethod
    def done() -> bool:
        return False


_NO_FUTURE = _NoFuture()


class PendingRequest:
    """One request in the queue; `future` resolves to `(actions [rows, N, act_dim], Timing)`."""

    __slots__ = ("deadline", "enqueued_at", "future", "noise", "obs", "rows")

    def __init__(
        self,
        obs: np.ndarray,
        noise: np.ndarray | str | None,
        deadline: float | None,
        now: float,
        future: asyncio.Future,
    ) -> None:
        self.obs, self.noise, self.deadline, self.enqueued_at, self.future = obs, noise, deadline, now, future
        self.rows = obs.shape[0]

    def cancel(self) -> None:
        """The client went away: drop the rows before compute (no-op once answered)."""
        self.future.cancel()


class DynamicBatcher:
    """`submit()` enqueues (or refuses at once); `await pending.future` gives this request's slice."""

    def __init__(
        self,
        forward: Forward,
        action_shape: tuple[int, int],
        *,
        max_batch_rows: int = 256,
        max_delay_s: float = 0.0,
        max_queue_rows: int = 4096,
        clock: Clock | None = None,
        compute_thread: ComputeThread | None = None,
        on_batch: Callable[[BatchStats], None] | None = None,
        refill: Callable[[int], int] | None = None,
        seed: int | None = None,
    ) -> None:
        if max_batch_rows < 1 or max_queue_rows < max_batch_rows or max_delay_s < 0:
            raise ValueError(
                "need max_batch_rows >= 1, max_queue_rows >= max_batch_rows and max_delay_s >= 0, got "
                f"{max_batch_rows}, {max_queue_rows}, {max_delay_s}"
            )
        self.forward, self.action_shape = forward, tuple(action_shape)
        self.max_batch_rows, self.max_delay_s, self.max_queue_rows = (
            max_batch_rows,
            max_delay_s,
            max_queue_rows,
        )
        self.clock = clock or Clock()
        self._own_thread = compute_thread is None
        self.compute_thread = compute_thread or ComputeThread()
        self.on_batch = on_batch
        # Before a batch it cannot fill: `refill(missing rows)` lets that many waiting clients send (see
        # server.held), and the batch then waits up to `refill_rounds` rounds of the event loop for them.
        self.refill = refill
        self.refill_rounds = 2
        self._rng = np.random.default_rng(seed)  # used only in the compute thread
        self._queue: deque[PendingRequest] = deque()
        self.queued_rows = 0
        self.computing_rows = 0
        self._arrival = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task | None = None
        self._closing = False
        self._flushing = False
        self.batches = 0
        self.sweep_interval_s = 0.01
        # Retry-After: about the time the queue needs to drain, from the last batch's cost per row.
        self._seconds_per_row = 1e-4
        # run_now's bound: a forward pass this short may block the event loop (less than two hand-offs).
        self.inline_max_s = 300e-6

    # --- producer side (event loop) ---

    def submit(
        self, obs: np.ndarray, noise: np.ndarray | str | None = None, deadline: float | None = None
    ) -> PendingRequest:
        """Queue `obs [rows, N, obs_dim]`; `noise` is an array, `ZERO_NOISE`, or None (fresh Gaussian)."""
        if self._closing:
            raise BatcherClosed("the model is shutting down")
        rows = obs.shape[0]
        if not 1 <= rows <= self.max_batch_rows:
            raise ValueError(f"a request holds 1 to {self.max_batch_rows} rows, got {rows}")
        if self.queued_rows + rows > self.max_queue_rows:
            raise QueueFull(self.queued_rows, self.max_queue_rows, self.retry_after_s())
        loop = asyncio.get_running_loop()
        pending = PendingRequest(obs, noise, deadline, self.clock.now(), loop.create_future())
        self._queue.append(pending)
        self.queued_rows += rows
        if self._task is None:
            self._task = loop.create_task(self._dispatch(), name="om2p-batcher")
        self._arrival.set()
        return pending

    def idle(self) -> bool:
        """Nothing queued, nothing computing."""
        return not self._queue and not self.computing_rows

    def run_now(self, obs: np.ndarray, noise: np.ndarray | str | None) -> tuple[np.ndarray, Timing] | None:
        """Compute `obs` here, in the caller's (event loop) thread, when nothing would batch with it: no
        fill delay, nothing queued or computing, and a forward pass expected to take under `inline_max_s`.
        Saves the two thread hand-offs (to the compute thread and back through the loop's self-pipe),
        which at low load cost more than the forward pass itself. None: queue it with `submit` instead."""
        rows = obs.shape[0]
        if (
            self.max_delay_s > 0
            or self._queue
            or self.computing_rows
            or self._closing
            or rows * self._seconds_per_row > self.inline_max_s
            or not 1 <= rows <= self.max_batch_rows
        ):
            return None
        pending = PendingRequest(obs, noise, None, 0.0, _NO_FUTURE)
        self.computing_rows = rows  # the compute thread is idle; nothing else runs until this returns
        try:
            actions, compute_s = self._compute([pending], rows)
        finally:
            self.computing_rows = 0
        self.batches += 1
        self._seconds_per_row = compute_s / rows
        if self.on_batch is not None:
            self.on_batch(BatchStats(rows, 1, compute_s, (0.0,)))
        return actions, Timing(0.0, compute_s, rows)

    def full(self) -> bool:
        """No room for even one more row: what the web layer checks before reading a request's body."""
        return self.queued_rows >= self.max_queue_rows or self._closing

    def retry_after_s(self) -> float:
        """About the time the queue needs to drain, from the last batch's cost per row (at least 1 s)."""
        return max(1.0, self.queued_rows * self._seconds_per_row)

    def expected_wait_s(self) -> float:
        """Rough wait of a request queued now: the batch computing, the queued rows at the last batch's
        cost per row, and the fill delay."""
        computing = self.computing_rows * self._seconds_per_row
        return computing + self.queued_rows * self._seconds_per_row + self.max_delay_s

    def flush(self) -> None:
        """Stop waiting for batches to fill (shutting down: no more requests are coming)."""
        self._flushing = True
        self._arrival.set()

    async def close(self, drain: bool = True) -> None:
        """Refuse new requests; with `drain`, answer every queued one first; then stop."""
        self._closing = True
        self.flush()
        if not drain:
            for pending in self._queue:
                if not pending.future.done():
                    pending.future.set_exception(BatcherClosed("the model was unloaded"))
            self._queue.clear()
            self.queued_rows = 0
        while self._queue or not self._idle.is_set():
            self._arrival.set()
            await asyncio.sleep(0.001)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._own_thread:
            self.compute_thread.shutdown()

    # --- dispatcher ---

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._expire_queued(self.clock.now())
        self._sweeper = loop.call_later(self.sweep_interval_s, self._sweep, loop)

    def _expire_queued(self, now: float) -> None:
        expired = [p for p in self._queue if p.deadline is not None and now >= p.deadline]
        for pending in expired:
            self._queue.remove(pending)
            self.queued_rows -= pending.rows
            if not pending.future.done():
                pending.future.set_exception(DeadlineExceeded("deadline passed while queued"))

    def _drop_dead_head(self, now: float) -> None:
        """Pop requests at the head that were cancelled or are past their deadline."""
        queue = self._queue
        while queue:
            head = queue[0]
            if head.future.done():  # cancelled by its client
                queue.popleft()
                self.queued_rows -= head.rows
            elif head.deadline is not None and now >= head.deadline:
                queue.popleft()
                self.queued_rows -= head.rows
                head.future.set_exception(DeadlineExceeded("deadline passed while queued"))
            else:
                return

    def _take_batch(self, now: float) -> list[PendingRequest]:
        batch: list[PendingRequest] = []
        rows = 0
        queue = self._queue
        while queue:
            self._drop_dead_head(now)
            if not queue or rows + queue[0].rows > self.max_batch_rows:
                break
            pending = queue.popleft()
            self.queued_rows -= pending.rows
            batch.append(pending)
            rows += pending.rows
        return batch

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._arrival.clear()
                if self.refill is not None:  # idle: clients held after a refusal may send now
                    self.refill(self.max_batch_rows)
                await self._arrival.wait()
                continue
            now = self.clock.now()
            self._drop_dead_head(now)
            if not self._queue:
                continue
            if self.max_delay_s > 0 and self.queued_rows < self.max_batch_rows and not self._flushing:
                head = self._queue[0]
                close_at = head.enqueued_at + self.max_delay_s
                if head.deadline is not None:  # wake for the head's 504 too, not only for the batch
                    close_at = min(close_at, head.deadline)
                if now < close_at:
                    self._arrival.clear()
                    await self.clock.wait(self._arrival, close_at - now)
                    continue
            if self.queued_rows < self.max_batch_rows and self._released_for_batch():
                await self._wait_for_released()
                now = self.clock.now()
            batch = self._take_batch(now)
            if not batch:
                continue
            self._idle.clear()
            try:
                await self._run_batch(loop, batch)
            finally:
                self._idle.set()

    def _released_for_batch(self) -> bool:
        """Whether `refill` let clients send for the rows this batch is missing."""
        missing = self.max_batch_rows - self.queued_rows
        return self.refill is not None and not self._flushing and self.refill(missing) > 0

    async def _wait_for_released(self) -> None:
        """Up to `refill_rounds` rounds of the event loop: one to read and parse the released requests,
        one for their tasks to queue them."""
        for _ in range(self.refill_rounds):
            await asyncio.sleep(0)
            if self.queued_rows >= self.max_batch_rows:
                return

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list[PendingRequest]) -> None:
        rows = sum(pending.rows for pending in batch)
        self.computing_rows = rows
        started = self.clock.now()
        try:
            # While a (slow) batch computes, queued requests still get their 504 on time.
            self._sweeper = loop.call_later(self.sweep_interval_s, self._sweep, loop)
            try:
                actions, compute_s = await self.compute_thread.run(loop, self._compute, batch, rows)
            finally:
                self._sweeper.cancel()
        except Exception as error:  # the backend failed: every request of this batch gets the error
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(error)
            return
        finally:
            self.computing_rows = 0
        self.batches += 1
        self._seconds_per_row = compute_s / rows
        waits = tuple(started - pending.enqueued_at for pending in batch)
        start = 0
        for pending, wait in zip(batch, waits, strict=True):
            stop = start + pending.rows
            if not pending.future.done():
                pending.future.set_result((actions[start:stop], Timing(wait, compute_s, rows)))
            start = stop
        if self.on_batch is not None:
            self.on_batch(BatchStats(rows, len(batch), compute_s, waits))

    def _compute(self, batch: list[PendingRequest], rows: int) -> tuple[np.ndarray, float]:
        """Worker thread: assemble the batch, one forward pass, nothing else."""
        obs = batch[0].obs if len(batch) == 1 else np.concatenate([pending.obs for pending in batch])
        if any(pending.noise is None for pending in batch):
            noise = self._rng.standard_normal((rows, *self.action_shape), dtype=np.float32)
        else:  # every request brings its own (or zero) noise
            noise = np.empty((rows, *self.action_shape), dtype=np.float32)
        start = 0
        for pending in batch:
            stop = start + pending.rows
            if isinstance(pending.noise, str):  # ZERO_NOISE
                noise[start:stop] = 0.0
            elif pending.noise is not None:
                noise[start:stop] = pending.noise
            start = stop
        began = time.perf_counter()
        # The web layer serialises slices without copying: they must be C-contiguous float32.
        actions = np.ascontiguousarray(self.forward(obs, noise), dtype=np.float32)
        return actions, time.perf_counter() - began

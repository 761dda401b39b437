"""The dynamic batcher on its own: a fake backend that records its forward passes, a manual clock."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from server.batcher import ZERO_NOISE, BatchStats, Clock, DeadlineExceeded, DynamicBatcher, QueueFull

N_AGENTS, OBS_DIM, ACT_DIM = 2, 4, 3


class ManualClock(Clock):
    """Time moves only when the test says so; timed waits wake when it passes their end."""

    def __init__(self) -> None:
        self.t = 100.0
        self._moved = asyncio.Event()

    def now(self) -> float:
        return self.t

    async def advance(self, seconds: float) -> None:
        self.t += seconds
        self._moved.set()
        for _ in range(5):  # let the dispatcher observe the new time
            await asyncio.sleep(0)

    async def wait(self, event: asyncio.Event, timeout_s: float) -> None:
        end = self.t + timeout_s
        while not event.is_set() and self.t < end:
            self._moved.clear()
            waiters = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(self._moved.wait())]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()


class RecordingBackend:
    """actions[b, i, :] = obs[b, i, :ACT_DIM] + noise[b, i]: each answer shows whose rows it was given."""

    def __init__(self, gate: threading.Event | None = None, fail: bool = False) -> None:
        self.batches: list[np.ndarray] = []
        self.noises: list[np.ndarray] = []
        self.threads: set[int] = set()
        self.gate, self.fail = gate, fail

    def __call__(self, obs: np.ndarray, noise: np.ndarray) -> np.ndarray:
        if self.gate is not None:
            self.gate.wait(5)
        self.threads.add(threading.get_ident())
        self.batches.append(obs.copy())
        self.noises.append(noise.copy())
        if self.fail:
            raise RuntimeError("backend exploded")
        return obs[..., :ACT_DIM] + noise


def observations(rows: int, marker: float) -> np.ndarray:
    return np.full((rows, N_AGENTS, OBS_DIM), marker, np.float32)


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0.001)


def make(backend, clock=None, **limits) -> DynamicBatcher:
    options = {"max_batch_rows": 8, "max_delay_s": 0.0, "max_queue_rows": 64, **limits}
    return DynamicBatcher(backend, (N_AGENTS, ACT_DIM), clock=clock, **options)


def test_concurrent_requests_share_one_forward_pass_and_get_their_own_rows():
    async def scenario():
        backend, stats = RecordingBackend(), []
        clock = ManualClock()
        batcher = make(backend, clock, max_delay_s=0.5, on_batch=stats.append)
        pending = [
            batcher.submit(observations(rows, marker), ZERO_NOISE)
            for rows, marker in [(1, 1), (3, 2), (2, 3)]
        ]
        await settle()
        assert backend.batches == []  # 6 of 8 rows and the delay has not passed: still waiting
        await clock.advance(0.5)
        results = await asyncio.gather(*(p.future for p in pending))
        await batcher.close()
        return backend, stats, results

    backend, stats, results = asyncio.run(scenario())
    assert len(backend.batches) == 1 and backend.batches[0].shape == (6, N_AGENTS, OBS_DIM)
    for (actions, timing), (rows, marker) in zip(results, [(1, 1), (3, 2), (2, 3)], strict=True):
        assert actions.shape == (rows, N_AGENTS, ACT_DIM)
        np.testing.assert_array_equal(actions, marker)  # its own rows, zero noise
        assert timing.batch_rows == 6
    assert stats == [BatchStats(6, 3, stats[0].compute_s, (0.5, 0.5, 0.5))]
    assert backend.threads and threading.get_ident() not in backend.threads  # never on the event loop


def test_batch_closes_at_max_rows_without_waiting_for_the_delay():
    async def scenario():
        backend, clock = RecordingBackend(), ManualClock()
        batcher = make(backend, clock, max_batch_rows=4, max_delay_s=10.0)
        first = [batcher.submit(observations(2, index), ZERO_NOISE) for index in range(3)]
        await asyncio.gather(*(p.future for p in first[:2]))  # clock never moved
        sizes_before_delay = [len(batch) for batch in backend.batches]
        await clock.advance(10.0)
        await first[2].future
        await batcher.close()
        return sizes_before_delay, [len(batch) for batch in backend.batches]

    before, after = asyncio.run(scenario())
    assert before == [4]  # rows, not requests, fill the batch: 2 + 2, the third waits
    assert after == [4, 2]


def test_zero_delay_runs_at_once_and_batches_what_queued_meanwhile():
    async def scenario():
        gate = threading.Event()
        backend = RecordingBackend(gate)
        batcher = make(backend)
        first = batcher.submit(observations(1, 0), ZERO_NOISE)
        await settle()  # the first request is computing (held at the gate)
        rest = [batcher.submit(observations(1, index), ZERO_NOISE) for index in range(1, 6)]
        gate.set()
        await asyncio.gather(first.future, *(p.future for p in rest))
        await batcher.close()
        return [len(batch) for batch in backend.batches]

    assert asyncio.run(scenario()) == [1, 5]


def test_full_queue_refuses_at_once_counting_rows():
    async def scenario():
        gate = threading.Event()
        batcher = make(RecordingBackend(gate), max_batch_rows=4, max_queue_rows=6)
        accepted = [batcher.submit(observations(3, 0)), batcher.submit(observations(3, 0))]
        with pytest.raises(QueueFull) as refused:
            batcher.submit(observations(1, 0))
        gate.set()
        await asyncio.gather(*(p.future for p in accepted))
        batcher.submit(observations(1, 0))  # room again
        await batcher.close()
        return refused.value

    error = asyncio.run(scenario())
    assert error.retry_after_s >= 1 and "6 of 6 rows" in str(error)


def test_request_past_its_deadline_is_refused_without_compute():
    async def scenario():
        backend, clock = RecordingBackend(), ManualClock()
        batcher = make(backend, clock, max_delay_s=1.0)
        late = batcher.submit(observations(1, 7), ZERO_NOISE, deadline=clock.now() + 0.2)
        on_time = batcher.submit(observations(1, 8), ZERO_NOISE, deadline=clock.now() + 5.0)
        await clock.advance(1.0)
        with pytest.raises(DeadlineExceeded):
            await late.future
        actions, _ = await on_time.future
        await batcher.close()
        return backend, actions

    backend, actions = asyncio.run(scenario())
    assert [batch[:, 0, 0].tolist() for batch in backend.batches] == [[8.0]]
    np.testing.assert_array_equal(actions, 8)


def test_cancelled_request_rows_are_dropped_before_compute():
    async def scenario():
        backend, clock = RecordingBackend(), ManualClock()
        batcher = make(backend, clock, max_delay_s=1.0)
        gone = batcher.submit(observations(2, 5), ZERO_NOISE)
        stays = batcher.submit(observations(1, 6), ZERO_NOISE)
        gone.cancel()  # its client disconnected
        await clock.advance(1.0)
        await stays.future
        await batcher.close()
        return backend

    backend = asyncio.run(scenario())
    assert [batch.shape[0] for batch in backend.batches] == [1]
    assert backend.batches[0][0, 0, 0] == 6.0


def test_noise_is_zero_seeded_or_fresh_per_request_slice():
    async def scenario():
        backend, clock = RecordingBackend(), ManualClock()
        batcher = make(backend, clock, max_delay_s=1.0)
        given = np.full((2, N_AGENTS, ACT_DIM), 0.25, np.float32)
        requests = [
            batcher.submit(observations(1, 0), ZERO_NOISE),
            batcher.submit(observations(2, 0), given),
            batcher.submit(observations(1, 0), None),
        ]
        await clock.advance(1.0)
        results = await asyncio.gather(*(p.future for p in requests))
        await batcher.close()
        return results

    (zero, _), (seeded, _), (fresh, _) = asyncio.run(scenario())
    np.testing.assert_array_equal(zero, 0.0)
    np.testing.assert_array_equal(seeded, 0.25)
    assert np.all(fresh != 0.0)  # standard normal draws


def test_backend_failure_reaches_every_request_of_the_batch_and_the_next_batch_runs():
    async def scenario():
        backend, clock = RecordingBackend(fail=True), ManualClock()
        batcher = make(backend, clock, max_delay_s=1.0)
        doomed = [batcher.submit(observations(1, index)) for index in range(3)]
        await clock.advance(1.0)
        outcomes = await asyncio.gather(*(p.future for p in doomed), return_exceptions=True)
        backend.fail = False
        after = batcher.submit(observations(1, 9), ZERO_NOISE)
        await clock.advance(1.0)
        actions, _ = await after.future
        await batcher.close()
        return outcomes, actions

    outcomes, actions = asyncio.run(scenario())
    assert all(isinstance(outcome, RuntimeError) for outcome in outcomes)
    np.testing.assert_array_equal(actions, 9.0)


def test_close_drains_queued_requests_then_refuses():
    async def scenario():
        gate = threading.Event()
        batcher = make(RecordingBackend(gate))
        queued = [batcher.submit(observations(1, index), ZERO_NOISE) for index in range(4)]
        closing = asyncio.ensure_future(batcher.close(drain=True))
        await settle()
        gate.set()
        await closing
        return [p.future.result()[0][0, 0, 0] for p in queued], batcher

    answers, batcher = asyncio.run(scenario())
    assert answers == [0.0, 1.0, 2.0, 3.0]
    with pytest.raises(Exception, match="shutting down"):
        batcher.submit(observations(1, 0))


def test_run_now_computes_in_the_loop_only_when_nothing_could_batch_with_it():
    async def scenario():
        backend, stats = RecordingBackend(), []
        batcher = make(backend, on_batch=stats.append)
        actions, timing = batcher.run_now(observations(2, 7.0), ZERO_NOISE)  # idle: computed here
        inline_thread = threading.get_ident()
        assert actions.shape == (2, N_AGENTS, ACT_DIM) and np.all(actions == 7.0)
        assert timing.queue_s == 0.0 and timing.batch_rows == 2 and stats[-1].rows == 2
        queued = batcher.submit(observations(1, 1.0), ZERO_NOISE)
        assert batcher.run_now(observations(1, 2.0), ZERO_NOISE) is None  # it would batch with the queue
        await queued.future
        batcher.inline_max_s = 0.0
        assert batcher.run_now(observations(1, 3.0), ZERO_NOISE) is None  # too slow to block the loop
        delayed = make(RecordingBackend(), max_delay_s=0.01)
        assert delayed.run_now(observations(1, 4.0), ZERO_NOISE) is None  # batches wait to fill
        await batcher.close()
        await delayed.close()
        return backend, inline_thread

    backend, inline_thread = asyncio.run(scenario())
    assert inline_thread in backend.threads and len(backend.threads) == 2  # the loop's and the compute thread


def test_a_batch_it_cannot_fill_lets_held_clients_send_first():
    """Past saturation (server.held): before a partial batch the batcher asks for the missing rows, and
    clients released then (here: sending within one round of the event loop) join that batch."""

    async def scenario(held: int) -> list[int]:
        backend, asked = RecordingBackend(), []
        batcher: DynamicBatcher

        def refill(rows: int) -> int:
            released = min(rows, held - sum(asked))
            asked.append(released)
            for index in range(released):  # each released client sends in the next round
                asyncio.get_running_loop().call_soon(batcher.submit, observations(1, 10 + index), ZERO_NOISE)
            return released

        batcher = make(backend, max_batch_rows=4, refill=refill)
        await batcher.submit(observations(1, 0), ZERO_NOISE).future
        await settle()
        await batcher.close()
        return [len(batch) for batch in backend.batches]

    assert asyncio.run(scenario(held=3)) == [4]  # one request plus the three it let in
    assert asyncio.run(scenario(held=0)) == [1]  # nobody held: no wait, a batch of one at once

"""Overload without collapse, against a real `om2p serve`: with a queue of one row and many clients, the
refusals are decided before the body is read (a request whose body never comes still gets its 503), they
are fast beside the answers, and accepted requests keep flowing."""

from __future__ import annotations

import asyncio
import socket
import statistics
import time
from pathlib import Path

import httpx
import pytest

from server.process import ServerProcess
from server.synthetic import write_synthetic_repository

ONE = {"observations": [[0.1] * 18] * 3, "deterministic": True}
CLIENTS = 32


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory) -> Path:
    """A 3 x 1024 actor: milliseconds per row on CPU, so one computing row keeps the queue full."""
    return write_synthetic_repository(tmp_path_factory.mktemp("slow"), hidden=(1024, 1024, 1024))


async def flood(
    url: str, seconds: float, done: asyncio.Event, keep_alive: bool = True
) -> list[tuple[int, float, str | None]]:
    """CLIENTS closed-loop clients for at least `seconds` and until `done`: (status, latency s, Retry-After)
    per answer. Without `keep_alive` every request opens a connection (none of them is ever paused)."""
    answers: list[tuple[int, float, str | None]] = []
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS if keep_alive else 0)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as http:
        stop = time.monotonic() + seconds

        async def client() -> None:
            while time.monotonic() < stop or not done.is_set():
                started = time.perf_counter()
                answer = await http.post("/act", json=ONE)
                answers.append(
                    (answer.status_code, time.perf_counter() - started, answer.headers.get("retry-after"))
                )

        await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return answers


@pytest.fixture(scope="module")
def slower_model(tmp_path_factory) -> Path:
    """A 3 x 2048 actor: several milliseconds per row, a window wide enough for the flood to queue the next
    row before the batcher finds its queue empty, even when other jobs share the cores."""
    return write_synthetic_repository(tmp_path_factory.mktemp("slower"), hidden=(2048, 2048, 2048))


def refused_without_body(port: int, attempts: int = 40) -> bool:
    """Send headers announcing a 1 MB body and no body: only a refusal decided from the headers answers."""
    request = (
        b"POST /act HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000000\r\n\r\n"
    )
    for _ in range(attempts):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.settimeout(0.3)
            sock.sendall(request)
            try:
                head = sock.recv(4096)
            except TimeoutError:  # admitted (the queue had room): it waits for the body; try again
                continue
            if head.startswith(b"HTTP/1.1 503") and b"retry-after:" in head.lower():
                return True
    return False


def test_refusals_come_before_the_body_are_fast_and_accepted_requests_flow(slow_model):
    # No pause after a refusal here: this test times the refusal itself (the pause has its own test below).
    server = ServerProcess(
        slow_model, max_batch_rows=1, max_queue_rows=1, request_timeout_ms=20000, refused_read_pause_ms=0
    )
    try:
        server.start()

        async def scenario() -> tuple[list, bool]:
            done = asyncio.Event()
            flooding = asyncio.ensure_future(flood(server.url, 3.0, done))
            await asyncio.sleep(0.5)  # the queue is full from here on
            early = await asyncio.to_thread(refused_without_body, server.port)
            done.set()
            return await flooding, early

        answers, early = asyncio.run(scenario())
        statuses = {status for status, _, _ in answers}
        assert statuses == {200, 503}, statuses  # no 504 (nobody waits out a deadline), no 500
        assert early, "no 503 arrived for a request whose body was never sent"
        accepted = [latency for status, latency, _ in answers if status == 200]
        refused = [(latency, retry) for status, latency, retry in answers if status == 503]
        assert all(retry is not None and int(retry) >= 1 for _, retry in refused)
        assert len(accepted) >= 20  # a row every few ms, for 3 s: accepted requests keep flowing
        # Side by side in one run: a refusal costs a fraction of an answer (here: of one slow forward pass).
        assert statistics.median(latency for latency, _ in refused) < statistics.median(accepted)
        # The connection of a refused request stays usable (keep-alive), and the server answers normally.
        assert httpx.post(f"{server.url}/act", json=ONE).status_code == 200
    finally:
        server.stop()


def refused_then_next(port: int, seconds: float = 3.0) -> list[tuple[float, float]]:
    """For `seconds`, on keep-alive connections: requests until one is refused, then the next request at
    once, and a new connection; (seconds to the 503, seconds to the next answer) per refusal. (A request
    admitted from its headers can still be refused after its body is read, by the queue check that has no
    pause: so some pairs are quick.)"""
    body = b'{"observations": [' + b",".join([b"[" + b",".join([b"0.1"] * 18) + b"]"] * 3) + b"]}"
    request = (
        b"POST /act HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    pairs: list[tuple[float, float]] = []
    stop = time.monotonic() + seconds
    while time.monotonic() < stop and len(pairs) < 5:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            while time.monotonic() < stop:
                started = time.perf_counter()
                sock.sendall(request)
                head = sock.recv(65536)
                refused_s = time.perf_counter() - started
                if head.startswith(b"HTTP/1.1 503"):
                    started = time.perf_counter()
                    sock.sendall(request)
                    sock.recv(65536)
                    pairs.append((refused_s, time.perf_counter() - started))
                    break
    return pairs


def test_a_refused_connection_is_not_read_again_for_the_pause(slower_model):
    # The batcher releases paused connections whenever its queue runs empty (server.held): the forward
    # pass must be slow enough that the flood always has the next row queued by then.
    server = ServerProcess(
        slower_model, max_batch_rows=1, max_queue_rows=1, request_timeout_ms=20000, refused_read_pause_ms=400
    )
    try:
        server.start()

        async def scenario() -> list[tuple[float, float]]:
            done = asyncio.Event()
            # New connections keep the queue full: a paused connection would not.
            flooding = asyncio.ensure_future(flood(server.url, 2.0, done, keep_alive=False))
            await asyncio.sleep(0.5)  # the queue is full from here on
            pairs = await asyncio.to_thread(refused_then_next, server.port)
            done.set()
            await flooding
            return pairs

        pairs = asyncio.run(scenario())
        assert pairs, "no request was refused"
        assert all(refused_s < 0.3 for refused_s, _ in pairs)  # the refusal itself is not held back
        # The same connection's next request waited out the pause before it was read.
        assert max(next_s for _, next_s in pairs) >= 0.35, pairs
    finally:
        server.stop()


def test_a_held_connection_is_read_again_when_the_batcher_has_room_before_its_pause_ends(slow_model):
    # A pause far longer than the test: only a release by the batcher (server.held) lets a refused
    # connection's next request through in time. Batches of 4 rows leave room that held clients can fill.
    server = ServerProcess(
        slow_model, max_batch_rows=4, max_queue_rows=4, request_timeout_ms=20000, refused_read_pause_ms=10_000
    )
    try:
        server.start()
        done = asyncio.Event()
        done.set()
        answers = asyncio.run(flood(server.url, 2.0, done))
        statuses = {status for status, _, _ in answers}
        assert statuses == {200, 503}, statuses
        # Each of the 32 clients sends again at once after a 503, on the same connection: without the
        # release its next request would wait out the 10 s pause.
        assert max(latency for _, latency, _ in answers) < 5.0
        assert len(answers) > 2 * CLIENTS
    finally:
        server.stop()

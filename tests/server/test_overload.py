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


async def flood(url: str, seconds: float, done: asyncio.Event) -> list[tuple[int, float, str | None]]:
    """CLIENTS closed-loop clients for at least `seconds` and until `done`: (status, latency s, Retry-After)
    per answer."""
    answers: list[tuple[int, float, str | None]] = []
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
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
    server = ServerProcess(slow_model, max_batch_rows=1, max_queue_rows=1, request_timeout_ms=20000)
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

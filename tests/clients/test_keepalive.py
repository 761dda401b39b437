"""The keep-alive race, reproduced against a real server whose keep-alive timeout (1 s) is shorter than the
clients' idle gaps (2 s): the server closes idle connections, and no client may count that as an error."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from clients.client import AsyncOm2pClient, Om2pClient, RetryPolicy
from clients.loadgen import ConnectionPool, LoadResult, StaleConnectionError, build_request, run_load, send
from server.process import ServerProcess

KEEP_ALIVE_S = 1.0
IDLE_GAP_S = 2.0
BURSTS = 3
NO_RETRY = RetryPolicy(attempts=1)  # a stale connection must not be hidden by the clients' retries


@pytest.fixture(scope="module")
def short_keep_alive_server(synthetic_model: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(synthetic_model, keep_alive_s=KEEP_ALIVE_S).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def observations() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(3, 18)).astype(np.float32)


def served_ok(server: ServerProcess) -> float:
    import httpx

    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith('om2p_requests_total{outcome="ok"}'):
            return float(line.split()[-1])
    return 0.0


def test_loadgen_bursts_after_idle_gaps_count_no_errors(
    short_keep_alive_server: ServerProcess, observations: np.ndarray
) -> None:
    url = short_keep_alive_server.url
    before = served_ok(short_keep_alive_server)

    async def bursts() -> list[LoadResult]:
        pool = ConnectionPool("127.0.0.1", short_keep_alive_server.port)
        results = []
        try:
            for burst in range(BURSTS):
                if burst:
                    await asyncio.sleep(IDLE_GAP_S)
                results.append(await run_load(url, observations, 0.3, concurrency=8, warmup_s=0, pool=pool))
        finally:
            pool.close()
        return results

    results = asyncio.run(bursts())
    assert all(result.errors == {} for result in results), [result.errors for result in results]
    # The race was there: after each gap the server had closed the pooled connections.
    assert sum(result.stale_dropped + result.reconnects for result in results[1:]) >= BURSTS - 1
    # Every request the generator counts as ok, the server counted too (warm-up is 0 here).
    client_ok = sum(len(result.latencies_s) for result in results)
    assert client_ok > 0 and served_ok(short_keep_alive_server) - before >= client_ok


def test_request_into_a_connection_closed_while_idle_is_sent_again(
    short_keep_alive_server: ServerProcess, observations: np.ndarray
) -> None:
    """The exact race: a connection taken from the pool while alive, used after the server closed it."""
    request = build_request(short_keep_alive_server.url, observations, binary=True)

    async def race() -> tuple[int, LoadResult, bool]:
        pool = ConnectionPool("127.0.0.1", short_keep_alive_server.port)
        result = LoadResult("closed", 1, 1.0, True)
        connection, status = await send(pool, None, request, result)
        assert status == 200 and connection.reusable()
        await asyncio.sleep(IDLE_GAP_S)  # the server's keep-alive timeout passes
        with pytest.raises(StaleConnectionError):
            await connection.exchange(request)  # what the old generator counted as an error
        connection, _ = await send(pool, await pool.open(), request, result)
        await asyncio.sleep(IDLE_GAP_S)
        fresh, status = await send(pool, connection, request, result)
        fresh.close()
        return status, result, connection.reusable()

    status, result, stale_still_reusable = asyncio.run(race())
    assert status == 200 and result.reconnects == 1 and not stale_still_reusable


def test_clients_reuse_no_connection_the_server_closed(
    short_keep_alive_server: ServerProcess, observations: np.ndarray
) -> None:
    url = short_keep_alive_server.url
    with Om2pClient(url, retry=NO_RETRY) as client:
        for burst in range(BURSTS):
            if burst:
                time.sleep(IDLE_GAP_S)
            for _ in range(5):
                assert client.act(observations).attempts == 1

    async def concurrent_bursts() -> None:
        async with AsyncOm2pClient(url, retry=NO_RETRY) as client:
            for burst in range(BURSTS):
                if burst:
                    await asyncio.sleep(IDLE_GAP_S)
                results = await asyncio.gather(*(client.act(observations) for _ in range(8)))
                assert all(result.attempts == 1 for result in results)

    asyncio.run(concurrent_bursts())

"""The load generator past saturation, against real servers: `--max-connections` holds the open loop to N
connections (counted by the kernel, not by the generator) and arrivals it cannot place are its own drops,
never requests the server saw; the sweep's data is ordered by offered load, with errors and drops marked;
503s are timed and checked for Retry-After."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from clients.loadgen import load_curve, run_load
from om2p.cli import main
from server.testing import ServerProcess

OBSERVATIONS = np.zeros((3, 18), np.float32)
PROC_NET_TCP = Path("/proc/net/tcp")
ESTABLISHED = "01"


@pytest.fixture(scope="module")
def small_queue_server(synthetic_model: Path) -> Iterator[ServerProcess]:
    """Batches of one row and a queue of two: a few hundred requests per second overload it."""
    server = ServerProcess(synthetic_model, max_batch_rows=1, max_queue_rows=2).start()
    yield server
    server.stop()


def established_to(port: int) -> int:
    """Client-side TCP connections to 127.0.0.1:`port` in ESTABLISHED state, as the kernel lists them."""
    count = 0
    for line in PROC_NET_TCP.read_text().splitlines()[1:]:
        fields = line.split()
        remote_port = int(fields[2].split(":")[1], 16)
        count += remote_port == port and fields[3] == ESTABLISHED
    return count


class ConnectionSampler:
    """Samples `established_to(port)` every millisecond in a thread while the block runs; `peak` after."""

    def __init__(self, port: int) -> None:
        self.port, self.peak = port, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, established_to(self.port))
            time.sleep(0.001)

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def requests_served(url: str) -> float:
    """Every request the server counted, whatever its outcome (`om2p_requests_total`)."""
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("om2p_requests_total{")
    )


def overload(server: ServerProcess, max_connections: int | None, rate: float = 4000.0) -> dict:
    return asyncio.run(
        run_load(
            server.url, OBSERVATIONS, 1.0, rate=rate, warmup_s=0.0, max_connections=max_connections, seed=1
        )
    ).summary()


@pytest.mark.skipif(not PROC_NET_TCP.exists(), reason="counts connections from /proc/net/tcp (Linux)")
def test_max_connections_caps_the_open_loop(small_queue_server: ServerProcess) -> None:
    before = requests_served(small_queue_server.url)
    with ConnectionSampler(small_queue_server.port) as capped_sampler:
        capped = overload(small_queue_server, max_connections=3)
    served = requests_served(small_queue_server.url) - before
    # The kernel never saw more than three, and arrivals that found all three busy were not sent: the
    # server counted exactly the requests the generator sent, none of the drops.
    assert capped_sampler.peak <= 3 and capped["peak_connections"] <= 3
    assert capped["not_sent"] > 0 and capped["ok"] > 0
    assert capped["offered"] == capped["requests"] + capped["not_sent"]
    assert served == capped["requests"]
    assert capped["client_errors"] == 0 and "not_sent" not in capped["errors"]
    # Without the cap the same overload opens more connections than that: the cap is what held it.
    with ConnectionSampler(small_queue_server.port) as uncapped_sampler:
        uncapped = overload(small_queue_server, max_connections=None)
    assert uncapped["not_sent"] == 0 and uncapped_sampler.peak > 3 and uncapped["peak_connections"] > 3


def test_rejections_are_timed_and_checked_for_retry_after(small_queue_server: ServerProcess) -> None:
    summary = overload(small_queue_server, max_connections=32)
    rejected = summary["errors"].get("http_503", 0)
    assert rejected > 0, summary  # a queue of two rows cannot take 32 concurrent requests
    assert summary["rejected_without_retry_after"] == 0
    assert summary["rejected_latency_ms"]["p50"] is not None and summary["rejected_latency_ms"]["max"] > 0


def test_a_503_without_retry_after_is_counted() -> None:
    """A real socket answering 503 with no Retry-After: the generator notices every one."""

    async def scenario() -> dict:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = next(
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    )
                    await reader.readexactly(length)
                    writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\n\r\n{}")
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            result = await run_load(f"http://127.0.0.1:{port}", OBSERVATIONS, 0.3, rate=100, warmup_s=0)
        return result.summary()

    summary = asyncio.run(scenario())
    assert summary["ok"] == 0 and summary["errors"]["http_503"] > 0
    assert summary["rejected_without_retry_after"] == summary["errors"]["http_503"]


def test_sweep_plots_offered_against_accepted_load(small_queue_server: ServerProcess, tmp_path: Path) -> None:
    plot, out = tmp_path / "sweep.png", tmp_path / "sweep.json"
    argv = ["loadgen", "--url", small_queue_server.url, "--sweep", "4000,50", "--duration", "0.7"]
    assert main([*argv, "--max-connections", "8", "--plot", str(plot), "--json", str(out)]) == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summaries = json.loads(out.read_text())["sweep"]
    curve = load_curve(summaries)
    # Ordered by what was offered, whatever order the rates were given in; the overloaded point is the
    # rightmost one even though it accepted less than it was offered, with its refusals and drops marked.
    assert curve["offered"] == sorted(curve["offered"]) and curve["offered"][-1] > 10 * curve["offered"][0]
    assert all(
        accepted <= offered * 1.5
        for accepted, offered in zip(curve["accepted"], curve["offered"], strict=True)
    )
    refused = [
        rejected + dropped
        for rejected, dropped in zip(
            curve["errors"]["503 rejected"], curve["errors"]["not sent (connections busy)"], strict=True
        )
    ]
    # (A busy machine can make the two-row queue refuse the odd request even at 50 req/s.)
    assert refused[-1] > 10 * refused[0] and curve["accepted"][-1] < curve["offered"][-1]
    assert all(s["max_connections"] == 8 and s["peak_connections"] <= 8 for s in summaries)


def test_max_connections_user_errors(
    small_queue_server: ServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    url = small_queue_server.url
    assert main(["loadgen", "--url", url, "--rate", "10", "--duration", "1", "--max-connections", "0"]) == 2
    assert "--max-connections" in capsys.readouterr().err
    assert (
        main(["loadgen", "--url", url, "--concurrency", "2", "--duration", "1", "--max-connections", "4"])
        == 2
    )
    assert "open loop" in capsys.readouterr().err

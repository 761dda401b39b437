"""Load generator for `POST /act`: open loop (Poisson arrivals at a rate) or closed loop (C clients).

It speaks HTTP/1.1 keep-alive over raw asyncio streams with the request bytes prepared once, so the
generator costs a few microseconds per request instead of an HTTP library's ~100 us: on a 2-core machine
the generator shares the CPU with the server and must not be what is measured. Open-loop latency is
counted from the scheduled send time, so a stalled server shows up in the tail (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import numpy as np

from clients.client import encode_request

PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99_9": 99.9}


@dataclass
class LoadResult:
    mode: str  # "open" or "closed"
    target: float  # requests/s (open) or concurrent clients (closed)
    duration_s: float
    binary: bool
    latencies_s: list[float] = field(default_factory=list)
    errors: collections.Counter = field(default_factory=collections.Counter)
    # Not errors: pooled connections the server had closed while idle (dropped before reuse), and requests
    # re-sent once on a fresh connection because a reused one closed before any response byte.
    stale_dropped: int = 0
    reconnects: int = 0

    def summary(self) -> dict:
        latencies_ms = np.asarray(self.latencies_s, dtype=np.float64) * 1e3
        percentiles = {
            key: float(np.percentile(latencies_ms, q)) if latencies_ms.size else None
            for key, q in PERCENTILES.items()
        }
        return {
            "mode": self.mode,
            "rate": self.target if self.mode == "open" else None,
            "concurrency": int(self.target) if self.mode == "closed" else None,
            "protocol": "binary" if self.binary else "json",
            "duration_s": round(self.duration_s, 3),
            "requests": int(latencies_ms.size + sum(self.errors.values())),
            "ok": int(latencies_ms.size),
            "errors": dict(self.errors),
            "stale_dropped": self.stale_dropped,
            "reconnects": self.reconnects,
            "throughput_rps": latencies_ms.size / self.duration_s if self.duration_s > 0 else 0.0,
            "latency_ms": {
                **percentiles,
                "mean": float(latencies_ms.mean()) if latencies_ms.size else None,
                "max": float(latencies_ms.max()) if latencies_ms.size else None,
            },
        }


class StaleConnectionError(ConnectionError):
    """A kept-alive connection closed before any byte of the response: the server ended it while idle
    (its keep-alive timeout) just as the request went out. Safe to send again on a fresh connection."""


class _ResponseReader(asyncio.StreamReader):
    """Notes what arrives between exchanges: on an idle keep-alive connection any byte (or EOF) means the
    server is closing it, and no byte of a response yet means a failure can be retried."""

    def __init__(self) -> None:
        super().__init__(limit=1 << 16)
        self.awaiting_response = False
        self.unsolicited = False
        self.received = 0

    def feed_data(self, data: bytes) -> None:
        if not self.awaiting_response:
            self.unsolicited = True
        self.received += len(data)
        super().feed_data(data)


class _Connection:
    """One keep-alive HTTP/1.1 connection sending one prepared request at a time."""

    def __init__(self, reader: _ResponseReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> _Connection:
        loop = asyncio.get_running_loop()
        reader = _ResponseReader()
        transport, protocol = await loop.create_connection(
            lambda: asyncio.StreamReaderProtocol(reader), host, port
        )
        return cls(reader, asyncio.StreamWriter(transport, protocol, reader, loop))

    def reusable(self) -> bool:
        """False once the server has closed its end, reset it or sent bytes nobody asked for while idle:
        what an HTTP client library checks before taking a connection from its pool."""
        reader = self.reader
        return not (reader.unsolicited or reader.at_eof() or reader.exception() or self.writer.is_closing())

    async def exchange(self, request: bytes) -> int:
        """Send `request`, read the whole response; return its status code. Raises StaleConnectionError
        when the connection fails before any response byte arrives."""
        reader = self.reader
        reader.awaiting_response, reader.received = True, 0
        try:
            self.writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
        except (ConnectionError, asyncio.IncompleteReadError) as error:
            if reader.received == 0:
                raise StaleConnectionError(str(error) or type(error).__name__) from error
            raise
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
                break
        else:
            if b"chunked" in head.lower():
                raise ConnectionError("chunked responses are not supported by the load generator")
        if length:
            await reader.readexactly(length)
        reader.awaiting_response = False
        return status

    def close(self) -> None:
        self.writer.close()


class ConnectionPool:
    """LIFO pool of keep-alive connections to one server. The most recently used connection is reused
    first (it is the least likely to have timed out); one the server has closed is dropped, not reused."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._idle: list[_Connection] = []

    def take(self, result: LoadResult) -> _Connection | None:
        """A live idle connection, or None: open a new one."""
        while self._idle:
            connection = self._idle.pop()
            if connection.reusable():
                return connection
            connection.close()
            result.stale_dropped += 1
        return None

    async def open(self) -> _Connection:
        return await _Connection.open(self.host, self.port)

    def give_back(self, connection: _Connection) -> None:
        self._idle.append(connection)

    def close(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()


def build_request(url: str, observations: np.ndarray, binary: bool, deterministic: bool = False) -> bytes:
    parts = urlsplit(url)
    prepared = encode_request(observations, binary, deterministic)
    head = [f"POST {parts.path.rstrip('/')}/act HTTP/1.1", f"Host: {parts.netloc}"]
    head += [f"{key}: {value}" for key, value in prepared.headers.items()]
    head += [f"Content-Length: {len(prepared.content)}", "", ""]
    return "\r\n".join(head).encode() + prepared.content


def _error_kind(error: BaseException) -> str:
    if isinstance(error, asyncio.TimeoutError | TimeoutError):
        return "timeout"
    if isinstance(error, ConnectionRefusedError):
        return "connection_refused"
    if isinstance(error, ConnectionError | asyncio.IncompleteReadError | OSError):
        return "connection"
    return type(error).__name__


async def send(
    pool: ConnectionPool, connection: _Connection | None, request: bytes, result: LoadResult
) -> tuple[_Connection, int]:
    """Send `request` on `connection` (taken from `pool`), or on a new one when None; returns the connection
    that answered, to go back to the pool, and the status code. A connection that fails is closed here."""
    if connection is not None:
        try:
            return connection, await connection.exchange(request)
        except StaleConnectionError:
            # The server closed it while idle, as the request went out: the request never reached the
            # application, so it goes once more on a fresh connection, as HTTP client libraries do.
            result.reconnects += 1
            connection.close()
        except BaseException:
            connection.close()
            raise
    connection = await pool.open()
    try:
        return connection, await connection.exchange(request)
    except BaseException:
        connection.close()
        raise


async def _one(
    pool: ConnectionPool, request: bytes, timeout_s: float, result: LoadResult, start: float
) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            connection, status = await send(pool, pool.take(result), request, result)
    except Exception as error:  # every failure is counted by kind, none stops the run
        result.errors[_error_kind(error)] += 1
        return
    pool.give_back(connection)
    if status == 200:
        result.latencies_s.append(time.perf_counter() - start)
    else:
        result.errors[f"http_{status}"] += 1


async def run_load(
    url: str,
    observations: np.ndarray,
    duration_s: float,
    rate: float | None = None,
    concurrency: int | None = None,
    binary: bool = False,
    timeout_s: float = 10.0,
    warmup_s: float = 0.5,
    seed: int = 0,
    pool: ConnectionPool | None = None,
) -> LoadResult:
    """Drive `/act` for `duration_s` after `warmup_s` (whose requests are not counted). A `pool` passed in
    is reused and left open (bursts separated by idle gaps); otherwise one is made and closed here."""
    if (rate is None) == (concurrency is None):
        raise ValueError("give exactly one of --rate and --concurrency")
    if rate is not None and rate <= 0:
        raise ValueError(f"--rate must be > 0, got {rate}")
    if concurrency is not None and concurrency < 1:
        raise ValueError(f"--concurrency must be >= 1, got {concurrency}")
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = build_request(url, observations, binary)
    own_pool = pool is None
    pool = pool or ConnectionPool(host, port)
    mode, target = ("open", float(rate)) if rate is not None else ("closed", float(concurrency))  # type: ignore[arg-type]
    measured = LoadResult(mode, target, duration_s, binary)
    discarded = LoadResult(mode, target, warmup_s, binary)
    begin = time.perf_counter()
    measure_from, end = begin + warmup_s, begin + warmup_s + duration_s

    def sink(now: float) -> LoadResult:
        return measured if now >= measure_from else discarded

    if mode == "closed":

        async def client() -> None:
            while (now := time.perf_counter()) < end:
                await _one(pool, request, timeout_s, sink(now), now)

        await asyncio.gather(*(client() for _ in range(int(target))))
    else:
        rng = np.random.default_rng(seed)
        tasks: set[asyncio.Task] = set()
        scheduled = begin
        while True:
            scheduled += rng.exponential(1.0 / target)
            if scheduled >= end:
                break
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(_one(pool, request, timeout_s, sink(scheduled), scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks)
    measured.duration_s = max(1e-9, min(time.perf_counter(), end) - measure_from)
    if own_pool:
        pool.close()
    return measured


def model_observations(url: str, batch: int = 1, seed: int = 0) -> np.ndarray:
    """Random observations shaped for the served model (`[N, obs_dim]`, or `[B, N, obs_dim]` for B > 1)."""
    import httpx

    try:
        response = httpx.get(url.rstrip("/") + "/v1/models", timeout=10.0)
    except httpx.HTTPError as error:
        raise ValueError(f"--url {url}: cannot reach the server ({error})") from error
    models = response.json().get("models") or []
    if response.status_code != 200 or not models:
        raise ValueError(f"--url {url}: /v1/models lists no model (HTTP {response.status_code})")
    n_agents, obs_dim = len(models[0]["agents"]), int(models[0]["obs_dim"])
    rng = np.random.default_rng(seed)
    shape = (n_agents, obs_dim) if batch == 1 else (batch, n_agents, obs_dim)
    return rng.normal(0.0, 1.0, shape).astype(np.float32)


def sweep(
    url: str, observations: np.ndarray, rates: list[float], duration_s: float, binary: bool
) -> list[dict]:
    from tqdm import tqdm

    summaries = []
    for rate in tqdm(rates, desc="loadgen sweep", unit="rate"):
        summaries.append(
            asyncio.run(run_load(url, observations, duration_s, rate=rate, binary=binary)).summary()
        )
    return summaries


def plot_latency_vs_load(summaries: list[dict], path: str, title: str = "/act latency vs load") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.0))
    throughput = [s["throughput_rps"] for s in summaries]
    for key, style in (("p50", "o-"), ("p99", "s-"), ("p99_9", "^--")):
        axis.plot(throughput, [s["latency_ms"][key] for s in summaries], style, label=key.replace("_", "."))
    axis.set_xlabel("achieved throughput (requests/s)")
    axis.set_ylabel("latency (ms)")
    axis.set_yscale("log")
    axis.set_title(title)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def format_summary(summary: dict) -> str:
    latency = summary["latency_ms"]
    load = f"rate {summary['rate']:g}/s" if summary["mode"] == "open" else f"{summary['concurrency']} clients"
    cells = "  ".join(
        f"{key.replace('_', '.')} {latency[key]:.2f}" for key in PERCENTILES if latency[key] is not None
    )
    errors = ", ".join(f"{k} {v}" for k, v in summary["errors"].items()) or "none"
    reused = (
        f"; idle connections the server closed: {summary['stale_dropped']} dropped before reuse, "
        f"{summary['reconnects']} requests re-sent"
        if summary["stale_dropped"] or summary["reconnects"]
        else ""
    )
    return (
        f"{summary['protocol']} {load}: {summary['throughput_rps']:.0f} req/s ok, "
        f"latency ms {cells or '-'}; errors: {errors}{reused}"
    )


def write_json(data: object, path: str) -> None:
    with open(path, "w") as handle:
        json.dump(data, handle, indent=2)

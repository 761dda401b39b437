"""Load generator for `POST /act`: open loop (Poisson arrivals at a rate) or closed loop (C clients).

It speaks HTTP/1.1 keep-alive over raw asyncio streams with the request bytes prepared once, so the
generator costs a few microseconds per request instead of an HTTP library's ~100 us: on a 2-core machine
the generator shares the CPU with the server and must not be what is measured. Open-loop latency is
counted from the scheduled send time, so a stalled server shows up in the tail (no coordinated omission).

Open loop can be capped at N connections (`max_connections`, like wrk's `-c`): an arrival that finds no idle
connection while N are open is not sent and is counted as `not_sent`, the generator's own drop, never as a
server error. Without a cap, a server that falls behind makes the generator open a connection per waiting
request (thousands), and an overload test then measures the connection storm instead of the server.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from collections.abc import Callable
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
    # Open loop: arrivals scheduled in the window, and those not sent because `max_connections` were all
    # busy (the generator's drop, not the server's answer).
    scheduled: int = 0
    schedule_s: float = 0.0  # the nominal window the arrivals were scheduled in
    schedule_lag_s: float = 0.0  # the most an arrival went out after its scheduled time (generator behind)
    not_sent: int = 0
    max_connections: int | None = None
    peak_connections: int = 0
    # 503s: how long the server took to say no, and how many came without the Retry-After it promises.
    rejected_latencies_s: list[float] = field(default_factory=list)
    rejected_without_retry_after: int = 0

    def summary(self) -> dict:
        latencies_ms = np.asarray(self.latencies_s, dtype=np.float64) * 1e3
        rejected_ms = np.asarray(self.rejected_latencies_s, dtype=np.float64) * 1e3
        sent = int(latencies_ms.size + sum(self.errors.values()))
        # Closed loop has no schedule: what it offers is what it sends.
        offered = self.scheduled if self.mode == "open" else sent
        server_errors = sum(count for kind, count in self.errors.items() if kind.startswith("http_"))
        return {
            "mode": self.mode,
            "rate": self.target if self.mode == "open" else None,
            "concurrency": int(self.target) if self.mode == "closed" else None,
            "protocol": "binary" if self.binary else "json",
            "duration_s": round(self.duration_s, 3),
            "requests": sent,
            "ok": int(latencies_ms.size),
            "errors": dict(self.errors),
            "server_errors": server_errors,
            "client_errors": sum(self.errors.values()) - server_errors,
            "offered": offered,
            "schedule_lag_ms": self.schedule_lag_s * 1e3,
            "not_sent": self.not_sent,
            "max_connections": self.max_connections,
            "peak_connections": self.peak_connections,
            "stale_dropped": self.stale_dropped,
            "reconnects": self.reconnects,
            "offered_rps": offered / (self.schedule_s or self.duration_s) if self.duration_s > 0 else 0.0,
            "throughput_rps": latencies_ms.size / self.duration_s if self.duration_s > 0 else 0.0,
            "latency_ms": _percentiles_ms(latencies_ms),
            "rejected_latency_ms": _percentiles_ms(rejected_ms),
            "rejected_without_retry_after": self.rejected_without_retry_after,
        }


def _percentiles_ms(values_ms: np.ndarray) -> dict[str, float | None]:
    present = bool(values_ms.size)
    return {
        **{key: float(np.percentile(values_ms, q)) if present else None for key, q in PERCENTILES.items()},
        "mean": float(values_ms.mean()) if present else None,
        "max": float(values_ms.max()) if present else None,
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

    def __init__(
        self,
        reader: _ResponseReader,
        writer: asyncio.StreamWriter,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.reader, self.writer = reader, writer
        self._on_close = on_close
        self.closed = False
        # Whether the last non-200 response carried Retry-After (headers are read only for those).
        self.retry_after = False

    @classmethod
    async def open(cls, host: str, port: int, on_close: Callable[[], None] | None = None) -> _Connection:
        loop = asyncio.get_running_loop()
        reader = _ResponseReader()
        transport, protocol = await loop.create_connection(
            lambda: asyncio.StreamReaderProtocol(reader), host, port
        )
        return cls(reader, asyncio.StreamWriter(transport, protocol, reader, loop), on_close)

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
        if status != 200:
            self.retry_after = b"\r\nretry-after:" in head.lower()
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
        if not self.closed:  # every path that ends a connection calls this; the pool counts each once
            self.closed = True
            self.writer.close()
            if self._on_close is not None:
                self._on_close()


class ConnectionPool:
    """LIFO pool of keep-alive connections to one server. The most recently used connection is reused
    first (it is the least likely to have timed out); one the server has closed is dropped, not reused.
    With `max_connections`, no more than that many are ever open at once (idle ones included)."""

    def __init__(self, host: str, port: int, max_connections: int | None = None) -> None:
        if max_connections is not None and max_connections < 1:
            raise ValueError(f"--max-connections must be >= 1, got {max_connections}")
        self.host, self.port = host, port
        self.max_connections = max_connections
        self.open_connections = 0  # open or being opened
        self.peak_connections = 0
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

    def has_idle(self) -> bool:
        return bool(self._idle)

    def full(self) -> bool:
        """True when `max_connections` are open: a caller with no idle connection must not open one."""
        return self.max_connections is not None and self.open_connections >= self.max_connections

    async def open(self) -> _Connection:
        # Counted before the first await, so a task that checks full() right after sees this one.
        self.open_connections += 1
        self.peak_connections = max(self.peak_connections, self.open_connections)
        try:
            return await _Connection.open(self.host, self.port, self._closed)
        except BaseException:
            self.open_connections -= 1
            raise

    def _closed(self) -> None:
        self.open_connections -= 1

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
    connection = pool.take(result)
    if connection is None and pool.full():
        result.not_sent += 1  # every allowed connection is busy: the generator drops it (wrk's -c)
        return
    try:
        async with asyncio.timeout(timeout_s):
            connection, status = await send(pool, connection, request, result)
    except Exception as error:  # every failure is counted by kind, none stops the run
        result.errors[_error_kind(error)] += 1
        return
    pool.give_back(connection)
    if status == 200:
        result.latencies_s.append(time.perf_counter() - start)
        return
    result.errors[f"http_{status}"] += 1
    if status == 503:
        result.rejected_latencies_s.append(time.perf_counter() - start)
        result.rejected_without_retry_after += not connection.retry_after


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
    max_connections: int | None = None,
) -> LoadResult:
    """Drive `/act` for `duration_s` after `warmup_s` (whose requests are not counted). A `pool` passed in
    is reused and left open (bursts separated by idle gaps); otherwise one is made and closed here.
    `max_connections` caps an open-loop run's connections (its own pool's, or the cap of the `pool`)."""
    if (rate is None) == (concurrency is None):
        raise ValueError("give exactly one of --rate and --concurrency")
    if rate is not None and rate <= 0:
        raise ValueError(f"--rate must be > 0, got {rate}")
    if concurrency is not None and concurrency < 1:
        raise ValueError(f"--concurrency must be >= 1, got {concurrency}")
    if max_connections is not None and rate is None:
        raise ValueError(
            "--max-connections is for open loop (--rate, --sweep); closed loop opens --concurrency"
        )
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = build_request(url, observations, binary)
    own_pool = pool is None
    if pool is None:
        pool = ConnectionPool(host, port, max_connections)
    elif max_connections is not None:
        pool.max_connections = max_connections
    mode, target = ("open", float(rate)) if rate is not None else ("closed", float(concurrency))  # type: ignore[arg-type]
    measured = LoadResult(
        mode, target, duration_s, binary, max_connections=pool.max_connections, schedule_s=duration_s
    )
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
            window = sink(scheduled)
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                # Behind schedule: yield anyway, so responses are read (and connections freed) while the
                # backlog goes out, and note by how much the generator fell behind.
                window.schedule_lag_s = max(window.schedule_lag_s, -delay)
                await asyncio.sleep(0)
            window.scheduled += 1
            if pool.full() and not pool.has_idle():
                # Counted here rather than in a task of its own: past saturation most arrivals end here,
                # and the generator shares the CPU with the server it measures.
                window.not_sent += 1
                continue
            task = asyncio.create_task(_one(pool, request, timeout_s, window, scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        # A generator behind schedule sends the window's last arrivals after `end`: its rates are taken
        # over the time it took to send them, not over the nominal window (offered_rps keeps the schedule's).
        dispatched = time.perf_counter()
        if tasks:
            await asyncio.wait(tasks)
        end = max(end, dispatched)
    measured.duration_s = max(1e-9, min(time.perf_counter(), end) - measure_from)
    measured.peak_connections = pool.peak_connections
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
    url: str,
    observations: np.ndarray,
    rates: list[float],
    duration_s: float,
    binary: bool,
    max_connections: int | None = None,
) -> list[dict]:
    from tqdm import tqdm

    summaries = []
    for rate in tqdm(rates, desc="loadgen sweep", unit="rate"):
        result = asyncio.run(
            run_load(url, observations, duration_s, rate=rate, binary=binary, max_connections=max_connections)
        )
        summaries.append(result.summary())
    return summaries


def error_rates(summary: dict) -> dict[str, float]:
    """Per second of the window: 503s (rejected), 504s (past deadline), other HTTP errors, the generator's
    own failures (timeouts, connections) and arrivals it did not send (`--max-connections` all busy)."""
    errors, seconds = summary["errors"], max(summary["duration_s"], 1e-9)
    other_http = sum(
        v for k, v in errors.items() if k.startswith("http_") and k not in ("http_503", "http_504")
    )
    return {
        "503 rejected": errors.get("http_503", 0) / seconds,
        "504 past deadline": errors.get("http_504", 0) / seconds,
        "other HTTP errors": other_http / seconds,
        "client-side errors": summary["client_errors"] / seconds,
        "not sent (connections busy)": summary.get("not_sent", 0) / seconds,
    }


ERROR_MARKERS = {  # error_rates() key: (marker, colour) in the sweep plot
    "503 rejected": ("v", "tab:orange"),
    "504 past deadline": ("x", "tab:red"),
    "other HTTP errors": ("D", "tab:purple"),
    "client-side errors": ("s", "black"),
    "not sent (connections busy)": ("^", "tab:grey"),
}


def load_curve(summaries: list[dict]) -> dict[str, list]:
    """The sweep plot's data, ordered by offered load: `offered`, `accepted` (200s per second), the error
    rates of `error_rates()` and the accepted requests' latency percentiles. Offered load only grows along
    a sweep, so past saturation a point lands to the right of the others (lower accepted load, more errors)
    instead of folding the curve back as a plot against achieved throughput does."""
    points = sorted(summaries, key=lambda s: s["offered_rps"])
    rates = [error_rates(s) for s in points]
    return {
        "offered": [s["offered_rps"] for s in points],
        "accepted": [s["throughput_rps"] for s in points],
        "errors": {label: [r[label] for r in rates] for label in ERROR_MARKERS},
        "latency_ms": {
            key: [np.nan if s["latency_ms"][key] is None else s["latency_ms"][key] for s in points]
            for key in ("p50", "p99", "p99_9")
        },
    }


def plot_latency_vs_load(summaries: list[dict], path: str, title: str = "/act under open-loop load") -> None:
    """Two panels against offered load: accepted load with errors marked, and accepted requests' latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = load_curve(summaries)
    offered = curve["offered"]
    figure, (load_axis, latency_axis) = plt.subplots(2, 1, figsize=(6.4, 7.0), sharex=True)
    load_axis.plot(offered, offered, color="grey", linestyle=":", label="offered (all accepted)")
    load_axis.plot(offered, curve["accepted"], "o-", color="tab:blue", label="accepted (200)")
    for label, (marker, color) in ERROR_MARKERS.items():
        values = curve["errors"][label]
        if any(values):
            load_axis.plot(offered, values, marker, color=color, linestyle="--", label=label)
    load_axis.set_ylabel("requests/s")
    load_axis.set_title(title)
    load_axis.grid(True, alpha=0.3)
    load_axis.legend(fontsize="small")
    for key, style in (("p50", "o-"), ("p99", "s-"), ("p99_9", "^--")):
        latency_axis.plot(offered, curve["latency_ms"][key], style, label=key.replace("_", "."))
    latency_axis.set_xlabel("offered load (requests/s)")
    latency_axis.set_ylabel("latency of accepted requests (ms)")
    latency_axis.set_yscale("log")
    latency_axis.grid(True, which="both", alpha=0.3)
    latency_axis.legend(fontsize="small")
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
    capped = (
        f"; at most {summary['max_connections']} connections (peak {summary['peak_connections']}): "
        f"{summary['not_sent']} not sent"
        if summary.get("max_connections")
        else ""
    )
    return (
        f"{summary['protocol']} {load}: {summary['throughput_rps']:.0f} req/s ok, "
        f"latency ms {cells or '-'}; errors: {errors}{capped}{reused}"
    )


def write_json(data: object, path: str) -> None:
    with open(path, "w") as handle:
        json.dump(data, handle, indent=2)

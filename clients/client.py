"""HTTP clients for `POST /act`: JSON or binary (float32 body + `X-Shape`), retries with exponential
backoff on 503 and connection errors (a full queue is transient by contract), typed results."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field

import httpx
import numpy as np

RETRY_STATUSES = frozenset({503})


class Om2pError(Exception):
    """The server answered an error (`{"error", "field"}`) or could not be reached after all retries."""

    def __init__(self, message: str, status: int | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.field = status, field


@dataclass(frozen=True)
class ActResult:
    actions: np.ndarray  # same nesting as the observations: [N, act_dim] or [B, N, act_dim]
    model: str | None = None
    version: int | None = None
    request_id: str | None = None
    queue_us: float | None = None
    compute_us: float | None = None
    attempts: int = 1


# Transport failures worth another try: the connection was refused, dropped, or closed under the request.
RETRY_ERRORS = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError)


@dataclass
class RetryPolicy:
    """When to try again, shared by `Om2pClient` and `AsyncOm2pClient` (they differ only in how they wait)."""

    attempts: int = 4  # total tries, the first included
    backoff_s: float = 0.05  # doubled per retry, with jitter; a Retry-After header is honoured up to max
    max_backoff_s: float = 2.0

    def next_delay(self, attempt: int, response: httpx.Response | None) -> float | None:
        """Seconds to wait before try `attempt + 1` after try `attempt` (0-based) gave `response` (None: a
        transport error), or None to stop: an answer that is not a 503, or no tries left."""
        if attempt >= self.attempts - 1:
            return None
        if response is None:
            return self.delay(attempt, None)
        if response.status_code in RETRY_STATUSES:
            return self.delay(attempt, response.headers.get("retry-after"))
        return None

    def delay(self, attempt: int, retry_after: str | None) -> float:
        base = min(self.max_backoff_s, self.backoff_s * 2**attempt)
        if retry_after:
            with contextlib.suppress(ValueError):
                base = min(self.max_backoff_s, max(base, float(retry_after)))
        return base * (0.5 + random.random() / 2)


@dataclass
class _Request:
    content: bytes
    headers: dict[str, str] = field(default_factory=dict)


def _options_headers(deterministic: bool, seed: int | None, request_id: str | None) -> dict[str, str]:
    headers = {"X-Deterministic": "true" if deterministic else "false"}
    if seed is not None:
        headers["X-Seed"] = str(seed)
    if request_id is not None:
        headers["X-Request-Id"] = request_id
    return headers


def encode_request(
    observations: np.ndarray | list,
    binary: bool,
    deterministic: bool = False,
    seed: int | None = None,
    request_id: str | None = None,
) -> _Request:
    """The body and headers of one /act call, prepared once (the load generator reuses them)."""
    import orjson

    if binary:
        array = np.ascontiguousarray(observations, dtype="<f4")
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Shape": ",".join(str(d) for d in array.shape),
            **_options_headers(deterministic, seed, request_id),
        }
        return _Request(array.tobytes(), headers)
    body = {
        "observations": np.asarray(observations, dtype=np.float32).tolist(),
        "deterministic": deterministic,
        "seed": seed,
        "request_id": request_id,
    }
    return _Request(orjson.dumps(body), {"Content-Type": "application/json"})


def decode_response(response: httpx.Response, attempts: int = 1) -> ActResult:
    if response.status_code != 200:
        raise error_from(response)
    if response.headers.get("content-type", "").startswith("application/octet-stream"):
        shape = tuple(int(d) for d in response.headers["x-shape"].split(","))
        actions = np.frombuffer(response.content, dtype="<f4").reshape(shape)
        headers = response.headers
        return ActResult(
            actions,
            model=headers.get("x-model"),
            version=_int_or_none(headers.get("x-version")),
            request_id=headers.get("x-request-id"),
            queue_us=_int_or_none(headers.get("x-queue-us")),
            compute_us=_int_or_none(headers.get("x-compute-us")),
            attempts=attempts,
        )
    body = response.json()
    timing = body.get("timing") or {}
    return ActResult(
        np.asarray(body["actions"], dtype=np.float32),
        model=body.get("model"),
        version=body.get("version"),
        request_id=body.get("request_id"),
        queue_us=timing.get("queue_us"),
        compute_us=timing.get("compute_us"),
        attempts=attempts,
    )


def _int_or_none(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


def error_from(response: httpx.Response) -> Om2pError:
    try:
        body = response.json()
        message, field_name = str(body.get("error", body)), body.get("field")
    except ValueError:
        message, field_name = response.text[:200], None
    return Om2pError(f"HTTP {response.status_code}: {message}", response.status_code, field_name)


def _finish(url: str, response: httpx.Response | None, failure: Exception | None, attempt: int) -> ActResult:
    if response is None:
        raise Om2pError(f"cannot reach {url}: {failure}") from failure
    return decode_response(response, attempt + 1)


class Om2pClient:
    """Blocking client. `Om2pClient(url).act(obs)` -> `ActResult`; `binary=True` sends float32 bytes."""

    def __init__(
        self,
        url: str,
        binary: bool = False,
        timeout_s: float = 10.0,
        retry: RetryPolicy | None = None,
        api_key: str | None = None,
    ) -> None:
        self.url, self.binary, self.retry = url.rstrip("/"), binary, retry or RetryPolicy()
        headers = {"X-API-Key": api_key} if api_key else {}
        self._http = httpx.Client(base_url=self.url, timeout=timeout_s, headers=headers)

    def act(
        self,
        observations: np.ndarray | list,
        deterministic: bool = False,
        seed: int | None = None,
        request_id: str | None = None,
    ) -> ActResult:
        request = encode_request(observations, self.binary, deterministic, seed, request_id)
        attempt = 0
        while True:
            failure: Exception | None = None
            try:
                response = self._http.post("/act", content=request.content, headers=request.headers)
            except RETRY_ERRORS as error:
                response, failure = None, error
            delay = self.retry.next_delay(attempt, response)
            if delay is None:
                return _finish(self.url, response, failure, attempt)
            time.sleep(delay)
            attempt += 1

    def ready(self) -> bool:
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def models(self) -> dict:
        response = self._http.get("/v1/models")
        if response.status_code != 200:
            raise error_from(response)
        return response.json()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Om2pClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncOm2pClient:
    """The asyncio twin of `Om2pClient` (one connection pool shared by concurrent `act` calls)."""

    def __init__(
        self,
        url: str,
        binary: bool = False,
        timeout_s: float = 10.0,
        retry: RetryPolicy | None = None,
        api_key: str | None = None,
        max_connections: int = 256,
    ) -> None:
        self.url, self.binary, self.retry = url.rstrip("/"), binary, retry or RetryPolicy()
        headers = {"X-API-Key": api_key} if api_key else {}
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout_s, headers=headers, limits=limits)

    async def act(
        self,
        observations: np.ndarray | list,
        deterministic: bool = False,
        seed: int | None = None,
        request_id: str | None = None,
    ) -> ActResult:
        request = encode_request(observations, self.binary, deterministic, seed, request_id)
        attempt = 0
        while True:
            failure: Exception | None = None
            try:
                response = await self._http.post("/act", content=request.content, headers=request.headers)
            except RETRY_ERRORS as error:
                response, failure = None, error
            delay = self.retry.next_delay(attempt, response)
            if delay is None:
                return _finish(self.url, response, failure, attempt)
            await asyncio.sleep(delay)
            attempt += 1

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncOm2pClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

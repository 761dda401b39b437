"""`POST /act` as a raw ASGI endpoint, plus the JSON handling shared with the WebSocket.

FastAPI's per-request machinery (dependency resolution, pydantic parsing, response models) costs more than
our forward pass, so the hot path skips it: orjson parses, numpy validates, the batcher computes, orjson
writes. The FastAPI app still declares `/act` with pydantic models, so the OpenAPI schema is the contract.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Callable

import numpy as np
import orjson

from server.backends import ModelSpec
from server.batcher import DynamicBatcher, PendingRequest, Timing
from server.service import PolicyService, error_status
from server.validation import (
    DECODE_IN_THREAD_BYTES,
    ActOptions,
    InvalidRequest,
    binary_array,
    header_flag,
    header_request_id,
    header_seed,
    observations_array,
    options_from,
    parse_json_body,
    parse_msgpack_body,
    parse_shape_header,
)

JSON_HEADERS = [(b"content-type", b"application/json")]
WATCH_DISCONNECTS_AFTER_S = 0.002
MSGPACK_TYPES = (b"application/msgpack", b"application/x-msgpack", b"application/vnd.msgpack")


def timing_dict(timing: Timing) -> dict:
    return {"queue_us": round(timing.queue_s * 1e6), "compute_us": round(timing.compute_s * 1e6)}


def api_key_ok(expected: bytes | None, offered: bytes | None) -> bool:
    """Constant-time comparison of the raw bytes: header values arrive as bytes, and a key with non-ASCII
    characters matches when the client sends its UTF-8 bytes (`expected` is the key's UTF-8)."""
    if expected is None:
        return True
    if offered is None:
        return False
    return hmac.compare_digest(offered, expected)


def offered_api_key(headers: dict[bytes, bytes]) -> bytes | None:
    key = headers.get(b"x-api-key")
    if key is None:
        authorization = headers.get(b"authorization", b"")
        if authorization[:7].lower() == b"bearer ":
            key = authorization[7:].strip()
    return key


def act_response(
    spec: ModelSpec, actions: np.ndarray, batched: bool, options: ActOptions, timing: Timing
) -> dict:
    return {
        "actions": actions if batched else actions[0],
        "model": spec.name,
        "version": spec.version,
        "request_id": options.request_id,
        "timing": timing_dict(timing),
    }


async def act_from_json(service: PolicyService, data: dict) -> dict:
    """A decoded /act JSON (or msgpack, or WebSocket) body -> the /act response dict. Raises on failure."""
    started = time.perf_counter()
    runtime = service.current()
    obs, batched = observations_array(data["observations"], runtime.spec, service.settings.max_batch_rows)
    options = options_from(data)
    result = await service.act(obs, options, runtime)
    service.record_success(runtime, obs.shape[0], result.timing, started)
    return act_response(runtime.spec, result.actions, batched, options, result.timing)


async def decode(parse: Callable[[bytes], dict], body: bytes) -> dict:
    """`parse(body)`, in a thread when the body is large enough to hold up the event loop."""
    if len(body) > DECODE_IN_THREAD_BYTES:
        return await asyncio.to_thread(parse, body)
    return parse(body)


def dumps(payload: dict) -> bytes:
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


class ActEndpoint:
    """ASGI app for `POST /act`: JSON, msgpack or float32 octet-stream, chosen by Content-Type."""

    def __init__(self, service: PolicyService) -> None:
        self.service = service
        self.max_body = service.settings.max_body_bytes
        self.api_key = service.api_key
        metrics = service.metrics
        self._duration = metrics.by_protocol
        self._outcomes = metrics.by_outcome

    async def __call__(self, scope, receive, send) -> None:
        started = time.perf_counter()
        service = self.service
        service.inflight += 1
        protocol, outcome = "json", "ok"
        try:
            headers = dict(scope["headers"])
            ctype = headers.get(b"content-type", b"application/json").split(b";", 1)[0].strip().lower()
            if ctype == b"application/octet-stream" or ctype in MSGPACK_TYPES:
                protocol = "binary"
            status, body, extra = await self._handle(headers, ctype, receive, started)
        except asyncio.CancelledError:
            if (task := asyncio.current_task()) is not None and task.cancelling():
                raise
            self._outcomes["cancelled"].inc()  # the client went away; nobody to answer
            return
        except Exception as error:
            status, outcome, extra_headers, message = error_status(error)
            service.record_failure(started)
            field = error.field if isinstance(error, InvalidRequest) else None
            body = dumps({"error": message, "field": field})
            extra = [*JSON_HEADERS, *((k.encode(), v.encode()) for k, v in extra_headers.items())]
        finally:
            service.inflight -= 1
        # A Content-Length spares uvicorn the chunked encoding (two writes instead of one).
        extra.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": extra})
        await send({"type": "http.response.body", "body": body})
        self._duration[protocol].observe(time.perf_counter() - started)
        self._outcomes[outcome].inc()

    async def _read_body(self, headers: dict[bytes, bytes], receive) -> bytes:
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            raise InvalidRequest(
                413, f"body: {int(length)} bytes, more than the limit of {self.max_body}", "body"
            )
        message = await receive()
        if message["type"] == "http.disconnect":  # gone before its body arrived
            raise asyncio.CancelledError
        body = message.get("body", b"")
        if not message.get("more_body", False):
            return body
        chunks = [body]
        size = len(body)
        while message.get("more_body", False):
            message = await receive()
            if message["type"] == "http.disconnect":
                raise asyncio.CancelledError
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise InvalidRequest(413, f"body: more than the limit of {self.max_body} bytes", "body")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _handle(
        self, headers: dict[bytes, bytes], ctype: bytes, receive, started: float
    ) -> tuple[int, bytes, list]:
        if self.api_key is not None and not api_key_ok(self.api_key, offered_api_key(headers)):
            raise InvalidRequest(401, "X-API-Key: missing or wrong API key", "X-API-Key")
        body = await self._read_body(headers, receive)
        service = self.service
        if ctype == b"application/octet-stream":
            runtime = service.current()
            shape = parse_shape_header(_text(headers.get(b"x-shape")))
            obs, _ = observations_array(
                binary_array(body, shape), runtime.spec, service.settings.max_batch_rows
            )
            options = ActOptions(
                header_flag(_text(headers.get(b"x-deterministic")), "X-Deterministic"),
                header_seed(_text(headers.get(b"x-seed"))),
                header_request_id(_text(headers.get(b"x-request-id"))),
            )
            result = await _await_watching(runtime.batcher, service.submit(runtime, obs, options), receive)
            actions, timing = result
            service.record_success(runtime, obs.shape[0], timing, started)
            out_shape = actions.shape if len(shape) == 3 else actions.shape[1:]
            spec = runtime.spec
            response_headers = [
                (b"content-type", b"application/octet-stream"),
                (b"x-shape", ",".join(map(str, out_shape)).encode()),
                (b"x-model", spec.name.encode()),
                (b"x-version", str(spec.version).encode()),
                (b"x-queue-us", str(round(timing.queue_s * 1e6)).encode()),
                (b"x-compute-us", str(round(timing.compute_s * 1e6)).encode()),
            ]
            if options.request_id is not None:
                response_headers.append((b"x-request-id", options.request_id.encode("latin-1")))
            return 200, actions.astype("<f4", copy=False).tobytes(), response_headers
        if ctype in MSGPACK_TYPES:
            import msgpack

            data = await decode(parse_msgpack_body, body)
            response = await self._act_watching(data, receive, started)
            response["actions"] = response["actions"].tolist()
            return 200, msgpack.packb(response), [(b"content-type", b"application/msgpack")]
        data = await decode(parse_json_body, body)
        return 200, dumps(await self._act_watching(data, receive, started)), [*JSON_HEADERS]

    async def _act_watching(self, data: dict, receive, started: float) -> dict:
        service = self.service
        runtime = service.current()
        obs, batched = observations_array(data["observations"], runtime.spec, service.settings.max_batch_rows)
        options = options_from(data)
        actions, timing = await _await_watching(
            runtime.batcher, service.submit(runtime, obs, options), receive
        )
        service.record_success(runtime, obs.shape[0], timing, started)
        return act_response(runtime.spec, actions, batched, options, timing)


async def _await_watching(batcher: DynamicBatcher, pending: PendingRequest, receive) -> tuple:
    """Await the batcher's answer; if the client disconnects first, its rows are dropped before compute
    (Triton PR 8982). Watching costs a task per request, so it is done only when the wait is long enough
    for a disconnect to matter (a fill delay, a deep queue or slow batches)."""
    if batcher.expected_wait_s() < WATCH_DISCONNECTS_AFTER_S:
        return await pending.future
    watcher = asyncio.ensure_future(receive())
    watcher.add_done_callback(lambda _: pending.cancel())
    try:
        return await pending.future
    finally:
        watcher.cancel()


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")

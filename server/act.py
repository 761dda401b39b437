"""`POST /act` as a raw ASGI endpoint: JSON, msgpack or float32 octet-stream, chosen by Content-Type.

FastAPI's per-request machinery (dependency resolution, pydantic parsing, response models) costs more than
our forward pass, so the hot path skips it: this module decodes the body and encodes the reply, and
`server.request_path.serve` does the rest. `server.routes.act` declares `/act` with pydantic models for the
OpenAPI schema, which is the contract.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable

import msgpack

from server.request_path import ClientGone, Decoded, DisconnectHook, Receive, Reply, act_body, dumps, serve
from server.service import PolicyService
from server.validation import (
    DECODE_IN_THREAD_BYTES,
    ActOptions,
    InvalidRequest,
    binary_array,
    header_flag,
    header_request_id,
    header_seed,
    json_may_hold_booleans,
    options_from,
    parse_json_body,
    parse_msgpack_body,
    parse_shape_header,
)

JSON_HEADERS = [(b"content-type", b"application/json")]
MSGPACK_TYPES = (b"application/msgpack", b"application/x-msgpack", b"application/vnd.msgpack")


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


def check_api_key(expected: bytes | None, headers: dict[bytes, bytes]) -> None:
    if expected is not None and not api_key_ok(expected, offered_api_key(headers)):
        raise InvalidRequest(401, "X-API-Key: missing or wrong API key", "X-API-Key")


async def decode(parse: Callable[[bytes], dict], body: bytes) -> dict:
    """`parse(body)`, in a thread when the body is large enough to hold up the event loop."""
    if len(body) > DECODE_IN_THREAD_BYTES:
        return await asyncio.to_thread(parse, body)
    return parse(body)


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


class ActEndpoint:
    """`POST /act`: `respond(headers, body)` decodes, serves and encodes; two entries feed it, the ASGI app
    (any server, any protocol) and `server.protocols`, which answers a plain keep-alive request straight from
    the parser without the ASGI request cycle."""

    def __init__(self, service: PolicyService) -> None:
        self.service = service
        self.max_body = service.settings.max_body_bytes
        self.api_key = service.api_key

    async def __call__(self, scope, receive, send) -> None:
        headers = dict(scope["headers"])
        answer = await self.respond(headers, lambda: self._read_body(headers, receive), receive)
        if answer is not None:
            status, extra, body = answer
            # A Content-Length spares uvicorn the chunked encoding (two writes instead of one).
            extra = [*extra, (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": status, "headers": extra})
            await send({"type": "http.response.body", "body": body})

    async def respond(
        self,
        headers: dict[bytes, bytes],
        body: bytes | Callable[[], Awaitable[bytes]],
        receive: Receive | DisconnectHook | None = None,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        """`(status, headers, body)` of the answer, without Content-Length; None when the client left.
        `body`: the request's body, or a coroutine function that reads it (after the API key is checked and
        the queue has room, so that neither refusal waits for an upload). `receive` (ASGI, or the protocol's
        `DisconnectHook`) lets a long wait notice a disconnect."""
        ctype = headers.get(b"content-type", b"application/json").split(b";", 1)[0].strip().lower()
        binary = ctype == b"application/octet-stream"
        packed = not binary and ctype in MSGPACK_TYPES

        async def decoded() -> Decoded:
            check_api_key(self.api_key, headers)
            data_bytes = body if isinstance(body, bytes) else await body()
            if binary:
                array = binary_array(data_bytes, parse_shape_header(_text(headers.get(b"x-shape"))))
                options = ActOptions(
                    header_flag(_text(headers.get(b"x-deterministic")), "X-Deterministic"),
                    header_seed(_text(headers.get(b"x-seed"))),
                    header_request_id(_text(headers.get(b"x-request-id"))),
                )
                return Decoded(array, options)
            if packed:
                data = await decode(parse_msgpack_body, data_bytes)
                return Decoded(data["observations"], options_from(data))
            data = await decode(parse_json_body, data_bytes)
            return Decoded(
                data["observations"], options_from(data), booleans_possible=json_may_hold_booleans(data_bytes)
            )

        try:
            reply = await serve(self.service, "binary" if binary or packed else "json", decoded, receive)
        except ClientGone:
            return None
        if reply.status != 200:
            extra = [(k.encode(), v.encode()) for k, v in (reply.headers or {}).items()]
            return reply.status, [*JSON_HEADERS, *extra], dumps(reply.error_body())
        if binary:
            payload, extra = _binary_answer(reply)
            return 200, extra, payload
        if packed:
            answer = act_body(reply)
            answer["actions"] = answer["actions"].tolist()
            return 200, [(b"content-type", b"application/msgpack")], msgpack.packb(answer)
        return 200, JSON_HEADERS, dumps(act_body(reply))

    async def _read_body(self, headers: dict[bytes, bytes], receive) -> bytes:
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            raise InvalidRequest(
                413, f"body: {int(length)} bytes, more than the limit of {self.max_body}", "body"
            )
        message = await receive()
        if message["type"] == "http.disconnect":  # gone before its body arrived
            raise ClientGone
        body = message.get("body", b"")
        if not message.get("more_body", False):
            return body
        chunks = [body]
        size = len(body)
        while message.get("more_body", False):
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise InvalidRequest(413, f"body: more than the limit of {self.max_body} bytes", "body")
            chunks.append(chunk)
        return b"".join(chunks)


def _binary_answer(reply: Reply) -> tuple[bytes, list]:
    actions, spec, timing, options = reply.actions, reply.spec, reply.timing, reply.options
    assert actions is not None and spec is not None and timing is not None and options is not None
    headers = [
        (b"content-type", b"application/octet-stream"),
        (b"x-shape", ",".join(map(str, actions.shape)).encode()),
        (b"x-model", spec.name.encode()),
        (b"x-version", str(spec.version).encode()),
        (b"x-queue-us", str(round(timing.queue_s * 1e6)).encode()),
        (b"x-compute-us", str(round(timing.compute_s * 1e6)).encode()),
    ]
    if options.request_id is not None:
        headers.append((b"x-request-id", options.request_id.encode("latin-1")))
    return actions.astype("<f4", copy=False).tobytes(), headers

"""`POST /act` as a raw ASGI endpoint: JSON, msgpack or float32 octet-stream, chosen by Content-Type.

FastAPI's per-request machinery (dependency resolution, pydantic parsing, response models) costs more than
our forward pass, so the hot path skips it: this module decodes the body and encodes the reply, and
`server.request_path.serve` does the rest. `server.routes.act` declares `/act` with pydantic models for the
OpenAPI schema, which is the contract.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable

import msgpack

from server.request_path import (
    ClientGone,
    Decoded,
    DisconnectHook,
    Receive,
    Reply,
    act_body,
    dumps,
    serve,
    serve_soon,
)
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
    json_may_hold_strings,
    options_from,
    parse_json_body,
    parse_msgpack_body,
    parse_shape_header,
)

JSON_HEADERS = [(b"content-type", b"application/json")]
INTERNAL_ERROR = (500, JSON_HEADERS, b'{"error":"internal error","field":null}')
log = logging.getLogger("om2p.server")
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
    ) -> Answer | None:
        """`(status, headers, body)` of the answer, without Content-Length; None when the client left.
        `body`: the request's body, or a coroutine function that reads it (after the API key is checked and
        the queue has room, so that neither refusal waits for an upload). `receive` (ASGI, or the protocol's
        `DisconnectHook`) lets a long wait notice a disconnect."""
        kind = _body_kind(headers)

        async def decoded() -> Decoded:
            check_api_key(self.api_key, headers)
            data_bytes = body if isinstance(body, bytes) else await body()
            if kind != "binary" and len(data_bytes) > DECODE_IN_THREAD_BYTES:
                return await asyncio.to_thread(_decode, kind, headers, data_bytes)
            return _decode(kind, headers, data_bytes)

        try:
            reply = await serve(self.service, "json" if kind == "json" else "binary", decoded, receive)
        except ClientGone:
            return None
        return _encode(kind, reply)

    def respond_soon(
        self,
        headers: dict[bytes, bytes],
        body: bytes,
        hook: DisconnectHook,
        answer: Callable[[Answer | None], None],
        only_connection: bool = False,
    ) -> None:
        """`respond` for a body already read (at most `DECODE_IN_THREAD_BYTES`), without a task: `answer`
        gets what `respond` would return, from this call or a later callback (`server.protocols`).
        `only_connection`: see `serve_soon`."""
        kind = _body_kind(headers)

        def decoded() -> Decoded:
            check_api_key(self.api_key, headers)
            return _decode(kind, headers, body)

        def encoded(reply: Reply | None) -> None:
            try:
                encoded_answer = None if reply is None else _encode(kind, reply)
            except Exception:  # the last line of defence: the client still gets its one answer
                log.exception("POST /act: encoding the answer failed")
                encoded_answer = INTERNAL_ERROR
            answer(encoded_answer)

        serve_soon(
            self.service, "json" if kind == "json" else "binary", decoded, hook, encoded, only_connection
        )

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


Answer = tuple[int, list[tuple[bytes, bytes]], bytes]
"""An HTTP answer: status, headers (without Content-Length) and body."""


def _body_kind(headers: dict[bytes, bytes]) -> str:
    """The body's kind from its Content-Type: "json" (also when absent), "msgpack" or "binary" (float32)."""
    ctype = headers.get(b"content-type", b"application/json").split(b";", 1)[0].strip().lower()
    if ctype == b"application/octet-stream":
        return "binary"
    return "msgpack" if ctype in MSGPACK_TYPES else "json"


def _decode(kind: str, headers: dict[bytes, bytes], body: bytes) -> Decoded:
    if kind == "binary":
        array = binary_array(body, parse_shape_header(_text(headers.get(b"x-shape"))))
        options = ActOptions(
            header_flag(_text(headers.get(b"x-deterministic")), "X-Deterministic"),
            header_seed(_text(headers.get(b"x-seed"))),
            header_request_id(_text(headers.get(b"x-request-id"))),
        )
        return Decoded(array, options)
    if kind == "msgpack":
        data = parse_msgpack_body(body)
        return Decoded(data["observations"], options_from(data))
    data = parse_json_body(body)
    return Decoded(
        data["observations"],
        options_from(data),
        booleans_possible=json_may_hold_booleans(body),
        strings_possible=json_may_hold_strings(body, data),
    )


def _encode(kind: str, reply: Reply) -> Answer:
    if reply.status != 200:
        extra = [(k.encode(), v.encode()) for k, v in (reply.headers or {}).items()]
        return reply.status, [*JSON_HEADERS, *extra], dumps(reply.error_body())
    if kind == "binary":
        payload, extra = _binary_answer(reply)
        return 200, extra, payload
    if kind == "msgpack":
        answer = act_body(reply)
        answer["actions"] = answer["actions"].tolist()
        return 200, [(b"content-type", b"application/msgpack")], msgpack.packb(answer)
    return 200, JSON_HEADERS, dumps(act_body(reply))


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

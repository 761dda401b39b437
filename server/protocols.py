"""uvicorn's HTTP and WebSocket protocols with two refusals of ours, so that bad clients get an answer and
the log gets one line, never a traceback:

- request headers past `MAX_HEADER_BYTES` get 431 (httptools buffers headers without any bound; h11 is
  bounded with uvicorn's `h11_max_incomplete_event_size`, set to the same number);
- a WebSocket text frame that is not UTF-8 gets a close 1007 with a reason naming the message.

And two shortcuts past the ASGI request cycle (scope, cycle object, receive and send messages), which cost
a third of the event loop's time per `/act` request:
- overload: when the app's `shed(path)` returns a response (the batcher's queue is full), it is written
  straight from the header callback, with no ASGI task, no body read and no parse (a refusal must cost far
  less than an answer, or refusing eats the capacity the accepted requests need);
- `POST /act` with a small Content-Length body on a keep-alive HTTP/1.1 connection goes to the app's
  `direct_act(headers, body, hook, answer)` (`ActEndpoint.respond_soon`: the ASGI route's steps, driven by
  callbacks instead of a task) and its answer is written as one response. Anything else (chunked or large
  bodies, `Expect: 100-continue`, pipelined requests, HTTP/1.0, an access log, uvicorn's concurrency
  limit) takes the ASGI path.

All hook uvicorn's protocol classes (passed as `http=` and `ws=`); tests run them on a real server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from server.act import INTERNAL_ERROR, Answer
from server.held import HeldConnections
from server.limits import MAX_HEADER_BYTES
from server.request_path import DisconnectHook

DIRECT_MAX_BODY_BYTES = 64 << 10
"""Larger `/act` bodies take the ASGI path, which streams them and decodes big ones in a thread."""


class HeadersTooLarge(Exception):
    pass


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """Counts the request line and headers as httptools reports them (exact), and the bytes received while
    a request's headers are still incomplete (what httptools buffers meanwhile)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._coalescing = _CoalescingTransport(transport)
        self._in_headers = False
        self._header_bytes = 0
        self._received_in_headers = 0
        self._too_large = False
        self._refusal_pause: asyncio.TimerHandle | None = None
        self._idle_since: float | None = None  # see `_unset_keepalive_if_required`
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refusal_pause is not None:
            self._refusal_pause.cancel()
            self._held().forget(self)
        cycle = self.cycle
        if type(cycle) is _DirectCycle and not cycle.response_complete:
            cycle.client_left()  # a waiting request drops its queued rows
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        self._in_headers = True
        self._header_bytes = self._received_in_headers = 0
        super().on_message_begin()

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_HEADER_BYTES:
            self._too_large = True
            raise HeadersTooLarge  # httptools stops parsing; uvicorn answers through send_400_response

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        if (
            self.parser.get_method() == b"POST"
            and (self.cycle is None or self.cycle.response_complete)  # not behind a pipelined request
            and not self.parser.should_upgrade()
        ):
            path = httptools.parse_url(self.url).path
            shed = getattr(self.app, "shed", None)
            response = None if shed is None else shed(path)
            if response is not None:
                self._answer_without_body(response)
                return
            if path == b"/act" and self._direct_act_allowed():
                self.cycle = _DirectCycle(self.parser.should_keep_alive(), self._write_direct_answer)
                return
        # The request cycle writes through a transport that sends the response head with the body's first
        # write: one send() and one wake-up of the client per response instead of two.
        transport, self.transport = self.transport, self._coalescing
        try:
            super().on_headers_complete()
        finally:
            self.transport = transport

    def _direct_act_allowed(self) -> bool:
        if (
            getattr(self.app, "direct_act", None) is None
            or self.access_log
            or self.limit_concurrency is not None
            or self.expect_100_continue
            or self.parser.get_http_version() != "1.1"
        ):
            return False
        length = None
        for name, value in self.headers:
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                return False
        return length is not None and length.isdigit() and int(length) <= DIRECT_MAX_BODY_BYTES

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if type(cycle) is _DirectCycle:
            cycle.chunks.append(body)  # at most DIRECT_MAX_BODY_BYTES: the Content-Length said so
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        cycle = self.cycle
        if type(cycle) is _DirectCycle:
            try:
                self.app.direct_act(
                    dict(self.headers),
                    b"".join(cycle.chunks),
                    cycle,
                    cycle.answer,
                    len(self.connections) == 1,  # nothing else can arrive to batch with it
                )
            except Exception:  # `direct_act` answers every failure itself; this is the last line of defence
                self.logger.exception("POST /act failed")
                if not cycle.response_complete:
                    cycle.answer(INTERNAL_ERROR)
            return
        super().on_message_complete()

    def _write_direct_answer(self, cycle: _DirectCycle, answer: Answer | None) -> None:
        """The answer of a request taken by `direct_act`: one write, then on to the connection's next
        request (or closed when the client left, or asked to close)."""
        cycle.response_complete = True
        if answer is None or self.transport.is_closing():  # the client left
            self.transport.close()
            return
        status, headers, body = answer
        parts = [STATUS_LINE[status]]
        for name, value in (*self.server_state.default_headers, *headers):
            parts += (name, b": ", value, b"\r\n")
        if not cycle.keep_alive:
            parts.append(b"connection: close\r\n")
        parts += (b"content-length: ", str(len(body)).encode(), b"\r\n\r\n", body)
        self.transport.write(b"".join(parts))
        if cycle.keep_alive:
            self.on_response_complete()  # keep-alive timer, resumed reading, a pipelined request
        else:
            self.transport.close()

    def on_response_complete(self) -> None:
        """uvicorn's, with a keep-alive timer that is armed once per idle spell rather than per response."""
        self._coalescing.flush()  # nothing of a finished response may wait past it (e.g. a bodiless 204)
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:  # a request that arrived behind this one starts now
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._idle_since = self.loop.time()
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self._keep_alive_due)

    def _unset_keepalive_if_required(self) -> None:
        # Called by uvicorn whenever bytes arrive. uvicorn cancels its timer here and arms a new one after
        # every response: a timer-heap push and a cancel per request. Ours stays armed and, when it fires,
        # closes the connection only if it has been idle for the whole timeout.
        self._idle_since = None

    def _keep_alive_due(self) -> None:
        self.timeout_keep_alive_task = None
        idle_since = self._idle_since
        if idle_since is None:  # busy: the end of its response arms the timer again
            return
        remaining = idle_since + self.timeout_keep_alive - self.loop.time()
        if remaining > 0:
            self.timeout_keep_alive_task = self.loop.call_later(remaining, self._keep_alive_due)
        else:
            self.timeout_keep_alive_handler()

    def _answer_without_body(self, response: bytes) -> None:
        keep_alive = self.parser.should_keep_alive() and self.parser.get_http_version() == "1.1"
        self.cycle = _ANSWERED  # httptools still parses this request's body; on_body drops it
        if keep_alive:
            self.transport.write(response)
            self.on_response_complete()  # re-arms the keep-alive timeout, as after any response
            self._pause_after_refusal()
        else:
            self.transport.write(response.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n", 1))
            self.transport.close()

    def _pause_after_refusal(self) -> None:
        """After a 503 for a full queue, this connection's next bytes are not read for the app's
        `refused_read_pause_s`. The refusal itself goes out at once, with a Retry-After that asks for a far
        longer wait; what waits is a client that sends again straight away. Without the pause a few hundred
        such connections make every round of the event loop a round of refusals, and the batcher, which
        moves one batch per round, starves (wrk over 256 connections at a queue of 8 rows: 7% of the
        capacity got through). The pause ends early, oldest connection first, when the batcher has room
        it cannot fill otherwise (`server.held`)."""
        pause_s = getattr(self.app, "refused_read_pause_s", 0.0)
        if pause_s <= 0 or self._refusal_pause is not None or self.flow.read_paused:
            return
        self.flow.pause_reading()
        self._refusal_pause = self.loop.call_later(pause_s, self._pause_over)
        self._held().hold(self)

    def _held(self) -> HeldConnections:
        return self.app.service.held

    def _pause_over(self) -> None:
        self._held().forget(self)
        self.resume_after_refusal()

    def resume_after_refusal(self) -> bool:
        """Read this connection again (the pause is over, or the batcher has room); False when it was
        not paused or has closed."""
        pause, self._refusal_pause = self._refusal_pause, None
        if pause is None:
            return False
        pause.cancel()
        if self.transport.is_closing():
            return False
        self.flow.resume_reading()
        return True

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._in_headers or self.transport.is_closing():
            return
        # Incomplete headers: a chunk that also ends the previous message counts whole, so this bound can
        # only err early, and only for pipelined requests.
        self._received_in_headers += len(data)
        if self._received_in_headers > MAX_HEADER_BYTES:
            self._too_large = True
            self.send_400_response("")

    def send_400_response(self, msg: str) -> None:
        if not self._too_large:
            super().send_400_response(msg)
            return
        self._in_headers = False
        message = f"headers: more than the limit of {MAX_HEADER_BYTES} bytes"
        self.logger.warning("refused a request: %s", message)
        body = orjson.dumps({"error": message, "field": "headers"})
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        self.transport.close()


class _CoalescingTransport:
    """What uvicorn's request cycle writes through: a write is held until the next one (the body after the
    head) or, at the latest, the end of the event loop's current round; everything else passes through."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport, self._held, self._loop = transport, None, asyncio.get_event_loop()

    def write(self, data: bytes) -> None:
        held = self._held
        if held is None:
            self._held = data
            self._loop.call_soon(self.flush)
            return
        self._held = None
        self._transport.write(held + data)

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str):
        return getattr(self._transport, name)


class _AnsweredCycle:
    """Stands in for uvicorn's request cycle of a request answered from the header callback."""

    response_complete = True
    disconnected = False
    keep_alive = True

    class message_event:  # uvicorn calls `cycle.message_event.set()` on disconnect
        @staticmethod
        def set() -> None:
            return None


_ANSWERED = _AnsweredCycle()


class _DirectCycle(DisconnectHook):
    """Stands in for uvicorn's request cycle of a `POST /act` answered directly: collects the body, carries
    what uvicorn's connection handling reads and writes (`response_complete`, `keep_alive`, `disconnected`,
    `message_event`), and is the request's `DisconnectHook`."""

    __slots__ = ("chunks", "disconnected", "keep_alive", "response_complete", "write")

    message_event = _AnsweredCycle.message_event  # uvicorn sets it on a lost connection; nothing waits

    def __init__(self, keep_alive: bool, write: Callable[[_DirectCycle, Answer | None], None]) -> None:
        super().__init__()
        self.chunks: list[bytes] = []
        self.keep_alive = keep_alive
        self.response_complete = False
        self.disconnected = False
        self.write = write

    def answer(self, answer: Answer | None) -> None:
        """Called once per request by the request path (see `serve_soon`)."""
        self.write(self, answer)


class Utf8CheckingWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn logs a traceback for a text frame that is not UTF-8 and closes without a reason."""

    def send_receive_event_to_app(self) -> None:
        if self.curr_msg_data_type == "text" and not self.close_sent:
            data = b"".join(self.frames)
            try:
                data.decode()
            except UnicodeDecodeError as error:
                self.frames = []
                self.logger.info("closed a WebSocket: text frame not UTF-8 (%s)", error.reason)
                self.conn.send_close(1007, "message: text frame is not valid UTF-8")
                self.handle_parser_exception()
                return
        super().send_receive_event_to_app()

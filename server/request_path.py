"""The one request path: every protocol (JSON, binary and msgpack `/act`, the WebSocket, KServe v2 infer)
hands it a decoder and gets back a `Reply`; this module alone counts requests in flight, records metrics and
statistics, and maps failures to statuses. Protocols only decode their input and encode the reply. Two
entries share its steps: `serve` (a coroutine, for the ASGI routes) and `serve_soon` (callbacks, for the
protocol that answers `/act` straight from uvicorn's parser).

Order of work, cheapest refusal first: a full queue is refused before the input is read or decoded (the
caller's `decode` is not even called), then the input is decoded and validated against the model being
served, queued on its batcher, and awaited (watching for the client to go away when the wait is long).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np
import orjson

from server.backends import ModelSpec
from server.batcher import BatcherClosed, DeadlineExceeded, DynamicBatcher, PendingRequest, Timing
from server.runtime import ModelRuntime
from server.service import PolicyService, ServiceUnavailable
from server.validation import ActOptions, InvalidRequest, observations_array

# A disconnect watcher costs a task per request: only worth it when the wait is long enough to matter.
WATCH_DISCONNECTS_AFTER_S = 0.002


@dataclass(slots=True)
class Decoded:
    """A protocol's input, decoded but not yet validated against the served model."""

    observations: object  # nested lists or an array: [n_agents][obs_dim] or [batch][n_agents][obs_dim]
    options: ActOptions
    field: str = "observations"  # named in the validation errors
    booleans_possible: bool = True  # False: the protocol knows the input holds no bool (skips a scan)
    strings_possible: bool = True  # False: nor a string (then it is converted straight to float32)


@dataclass(slots=True)
class Reply:
    """What a protocol encodes: actions (same nesting as the observations) or an error."""

    status: int
    actions: np.ndarray | None = None
    spec: ModelSpec | None = None
    timing: Timing | None = None
    options: ActOptions | None = None
    error: str | None = None
    field: str | None = None
    headers: dict[str, str] | None = None  # e.g. retry-after on 503

    def error_body(self) -> dict:
        return {"error": self.error, "field": self.field}


class ClientGone(Exception):
    """The client disconnected before its answer: nobody to reply to."""


class DisconnectHook:
    """How a protocol that learns of a lost connection by callback (`server.protocols`) lets a long wait drop
    the request's queued rows: while `serve` waits, `on_disconnect` holds the drop, and the protocol calls
    `client_left()`. Where ASGI needs a task per request awaiting `receive()`, this is one attribute."""

    __slots__ = ("on_disconnect",)

    def __init__(self) -> None:
        self.on_disconnect: Callable[[], None] | None = None

    def client_left(self) -> None:
        if self.on_disconnect is not None:
            self.on_disconnect()


Receive = Callable[[], Awaitable[dict]]
"""An ASGI `receive`: its next message after the body can only be `http.disconnect`."""


async def serve(
    service: PolicyService,
    protocol: str,
    decode: Callable[[], Awaitable[Decoded]] | Callable[[], Decoded],
    receive: Receive | DisconnectHook | None = None,
) -> Reply:
    """Run one request; `decode()` (sync or async) reads and parses the protocol's input and raises
    `InvalidRequest` naming the field; `receive` (ASGI, or a `DisconnectHook`) lets a long wait notice a
    disconnect. Raises `ClientGone` when the client left (counted as cancelled), never anything else."""
    started = time.perf_counter()
    service.inflight += 1
    outcome = "ok"
    try:
        refusal = service.shed()
        if refusal is not None:
            raise refusal
        decoded = decode()
        if not isinstance(decoded, Decoded):
            decoded = await decoded
        alone = _alone(service)
        if alone and service.runtime.batcher.idle():  # type: ignore[union-attr]
            # Alone, as far as this task knows. One round of the loop lets requests that arrived with it
            # start (and count themselves in flight): then they batch together instead of going one by one.
            await asyncio.sleep(0)
        runtime, obs, batched, result = _validate_and_queue(service, decoded, alone)
        if isinstance(result, PendingRequest):
            result = await _await_watching(runtime.batcher, result, receive)
        return _succeeded(service, runtime, obs, batched, decoded.options, result, started)
    except (asyncio.CancelledError, ClientGone):
        if (task := asyncio.current_task()) is not None and task.cancelling():
            raise  # the server is shutting down this task
        outcome = "cancelled"
        raise ClientGone from None
    except Exception as error:
        reply, outcome = _failed(service, error, started)
        return reply
    finally:
        service.inflight -= 1
        service.observe(protocol, outcome, started)


def serve_soon(
    service: PolicyService,
    protocol: str,
    decode: Callable[[], Decoded],
    hook: DisconnectHook,
    answer: Callable[[Reply | None], None],
    only_connection: bool = False,
) -> None:
    """`serve` driven by callbacks instead of a task, for a protocol that gets its input whole from a parser
    callback (`server.protocols`): the same steps, counts, metrics and statuses, and `answer(reply)` (None:
    the client left) is called exactly once, from this call or from a later callback of the event loop.
    `only_connection`: the server has no other connection, so no request can arrive to batch with this one
    and a lone request skips `serve`'s round of the loop."""
    _CallbackRequest(service, protocol, hook, answer).start(decode, only_connection)


class _CallbackRequest:
    """One request of `serve_soon`, between its callbacks."""

    __slots__ = ("answer", "batched", "decoded", "hook", "obs", "protocol", "runtime", "service", "started")

    def __init__(
        self,
        service: PolicyService,
        protocol: str,
        hook: DisconnectHook,
        answer: Callable[[Reply | None], None],
    ) -> None:
        self.service, self.protocol, self.hook, self.answer = service, protocol, hook, answer
        self.started = time.perf_counter()
        service.inflight += 1

    def start(self, decode: Callable[[], Decoded], only_connection: bool) -> None:
        service = self.service
        try:
            refusal = service.shed()
            if refusal is not None:
                raise refusal
            self.decoded = decode()
            alone = _alone(service)
            if alone and not only_connection and service.runtime.batcher.idle():  # type: ignore[union-attr]
                # As in `serve`: one round of the loop for requests that arrived with it.
                asyncio.get_running_loop().call_soon(self.queue, True)
                return
        except Exception as error:
            self.fail(error)
            return
        self.queue(alone)

    def queue(self, alone: bool) -> None:
        try:
            runtime, obs, batched, result = _validate_and_queue(self.service, self.decoded, alone)
        except Exception as error:
            self.fail(error)
            return
        if isinstance(result, PendingRequest):
            self.runtime, self.obs, self.batched = runtime, obs, batched
            self.hook.on_disconnect = result.cancel
            result.future.add_done_callback(self.resolved)
            return
        self.succeed(runtime, obs, batched, result)

    def resolved(self, future: asyncio.Future) -> None:
        self.hook.on_disconnect = None
        if future.cancelled():  # the client left (`DisconnectHook.client_left`)
            self.end("cancelled")
            self.answer(None)
            return
        error = future.exception()
        if error is not None:
            self.fail(error)
            return
        self.succeed(self.runtime, self.obs, self.batched, future.result())

    def succeed(self, runtime: ModelRuntime, obs: np.ndarray, batched: bool, result: tuple) -> None:
        try:
            reply = _succeeded(
                self.service, runtime, obs, batched, self.decoded.options, result, self.started
            )
        except Exception as error:
            self.fail(error)
            return
        self.end("ok")
        self.answer(reply)

    def fail(self, error: BaseException) -> None:
        reply, outcome = _failed(self.service, error, self.started)
        self.end(outcome)
        self.answer(reply)

    def end(self, outcome: str) -> None:
        self.service.inflight -= 1
        self.service.observe(self.protocol, outcome, self.started)


def _alone(service: PolicyService) -> bool:
    """The only request in flight, with a batcher to run it on."""
    current = service.runtime
    return service.inflight == 1 and current is not None and current.batcher is not None


def _validate_and_queue(
    service: PolicyService, decoded: Decoded, alone: bool
) -> tuple[ModelRuntime, np.ndarray, bool, tuple | PendingRequest]:
    """Validate against the model served now and queue on its batcher (or, `alone`, compute at once when
    the batcher allows): `(runtime, obs, batched, result or pending)`. Synchronous, so that a reload cannot
    swap the model between validation and queuing."""
    runtime = service.current()
    obs, batched = observations_array(
        decoded.observations,
        runtime.spec,
        service.settings.max_batch_rows,
        decoded.field,
        decoded.booleans_possible,
        decoded.strings_possible,
    )
    result = service.run_now(runtime, obs, decoded.options) if alone else None
    if result is None:
        result = service.submit(runtime, obs, decoded.options)
    return runtime, obs, batched, result


def _succeeded(
    service: PolicyService,
    runtime: ModelRuntime,
    obs: np.ndarray,
    batched: bool,
    options: ActOptions,
    result: tuple,
    started: float,
) -> Reply:
    actions, timing = result
    service.record_success(runtime, obs.shape[0], timing, started)
    return Reply(200, actions if batched else actions[0], runtime.spec, timing, options)


def _failed(service: PolicyService, error: BaseException, started: float) -> tuple[Reply, str]:
    """The error reply of a failed request and its outcome label."""
    status, outcome, headers, message = error_status(error)
    service.record_failure(started)
    field_name = error.field if isinstance(error, InvalidRequest) else None
    return Reply(status, error=message, field=field_name, headers=headers), outcome


def early_refusal(service: PolicyService, admitted: int) -> bytes | None:
    """The whole HTTP 503 response for a request refused from its request line alone (`server.protocols`
    calls this before the headers are even turned into an ASGI scope), or None to admit it. `admitted`:
    requests admitted this round of the event loop that have not reached the queue yet (one row each)."""
    runtime = service.runtime
    if runtime is None or runtime.batcher is None:
        return None  # loading: `serve` says so
    batcher = runtime.batcher
    if batcher.queued_rows + admitted < batcher.max_queue_rows and not batcher.full():
        return None
    refusal = service.shed() or ServiceUnavailable(
        f"queue full ({batcher.queued_rows} of {batcher.max_queue_rows} rows waiting); retry later",
        batcher.retry_after_s(),
    )
    _, outcome, headers, message = error_status(refusal)
    service.record_failure(time.perf_counter())
    service.observe(None, outcome, 0.0)  # no protocol yet: counted, not timed
    body = orjson.dumps({"error": message, "field": None})
    return (
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: "
        + headers["retry-after"].encode()
        + b"\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


async def _await_watching(
    batcher: DynamicBatcher | None, pending: PendingRequest, receive: Receive | DisconnectHook | None
) -> tuple:
    """Await the batcher's answer; if the client disconnects first, its rows are dropped before compute
    (Triton PR 8982)."""
    assert batcher is not None
    if receive is None or batcher.expected_wait_s() < WATCH_DISCONNECTS_AFTER_S:
        try:
            return await pending.future
        except asyncio.CancelledError:
            pending.cancel()
            raise
    if isinstance(receive, DisconnectHook):
        receive.on_disconnect = pending.cancel
        try:
            return await pending.future
        finally:
            receive.on_disconnect = None
    watcher = asyncio.ensure_future(receive())
    watcher.add_done_callback(lambda _: pending.cancel())
    try:
        return await pending.future
    finally:
        watcher.cancel()


def error_status(error: BaseException) -> tuple[int, str, dict, str]:
    """(status, outcome label, extra headers, message) for any failure of an action request."""
    if isinstance(error, InvalidRequest):
        return error.status, "invalid", {}, error.message
    if isinstance(error, ServiceUnavailable):
        return 503, "rejected", {"retry-after": str(max(1, round(error.retry_after_s)))}, str(error)
    if isinstance(error, DeadlineExceeded):
        return 504, "timeout", {}, "deadline exceeded: the server is overloaded; retry with backoff"
    if isinstance(error, BatcherClosed):
        return 503, "rejected", {"retry-after": "1"}, str(error)
    return 500, "error", {}, f"internal error: {type(error).__name__}: {error}"


def timing_dict(timing: Timing) -> dict:
    return {"queue_us": round(timing.queue_s * 1e6), "compute_us": round(timing.compute_s * 1e6)}


def act_body(reply: Reply) -> dict:
    """The `/act` (and WebSocket) JSON answer of a successful reply."""
    assert reply.spec is not None and reply.timing is not None and reply.options is not None
    return {
        "actions": reply.actions,
        "model": reply.spec.name,
        "version": reply.spec.version,
        "request_id": reply.options.request_id,
        "timing": timing_dict(reply.timing),
    }


def dumps(payload: dict) -> bytes:
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)

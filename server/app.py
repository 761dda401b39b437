"""The web layer: FastAPI for the contract, the docs and the slow paths; a raw ASGI `POST /act` in front.

`create_app(settings)` returns an ASGI app: `POST /act` goes straight to `server.act.ActEndpoint`,
everything else (including lifespan) to the FastAPI app, which also declares `/act` for the schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import orjson
from fastapi import APIRouter, Depends, FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.act import ActEndpoint, act_from_json, api_key_ok, dumps, offered_api_key
from server.metrics import METRICS_CONTENT_TYPE, ServerMetrics
from server.schemas import (
    ActRequest,
    ActResponse,
    ErrorResponse,
    ModelList,
    ReadyResponse,
    ReloadRequest,
    ReloadResponse,
)
from server.service import PolicyService, ReloadFailed, ServiceUnavailable, error_status
from server.settings import ServerSettings
from server.v2 import v2_router
from server.validation import DECODE_IN_THREAD_BYTES, InvalidRequest

log = logging.getLogger("om2p.server")
ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 413, 422, 503, 504)}


def error_response(error: BaseException) -> JSONResponse:
    status, _, headers, message = error_status(error)
    field = error.field if isinstance(error, InvalidRequest) else None
    return JSONResponse({"error": message, "field": field}, status, headers=headers)


def create_fastapi(service: PolicyService, on_fatal: Callable[[], None] | None = None) -> FastAPI:
    settings = service.settings

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def start() -> None:
            try:
                await service.start()
            except Exception:
                if on_fatal is not None:
                    on_fatal()

        # Load and warm up while /healthz already answers; /readyz says when it is done.
        loading = asyncio.get_running_loop().create_task(start())
        yield
        loading.cancel()
        await service.stop()

    app = FastAPI(
        title="om2p policy server",
        summary="One-step mean-flow multi-agent policies: POST joint observations, get joint actions.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.service = service

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"] if part != "body") or "body"
        return JSONResponse({"error": f"{field}: {first['msg']}", "field": field}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if isinstance(error.__cause__, InvalidRequest):  # FastAPI wraps errors raised while reading the body
            return error_response(error.__cause__)
        return JSONResponse(
            {"error": str(error.detail), "field": None}, error.status_code, headers=error.headers
        )

    def require_api_key(request: Request) -> None:
        if not api_key_ok(service.api_key, offered_api_key(dict(request.headers.raw))):
            raise InvalidRequest(401, "X-API-Key: missing or wrong API key", "X-API-Key")

    @app.exception_handler(InvalidRequest)
    async def invalid_request(request: Request, error: InvalidRequest) -> JSONResponse:
        return error_response(error)

    app.include_router(_health_router(service))
    app.include_router(_act_router(service, require_api_key))
    app.include_router(v2_router(service, require_api_key, ERRORS))
    if settings.admin:
        app.include_router(_admin_router(service, require_api_key))
    if importlib.util.find_spec("server.dashboard") is not None:
        from server.dashboard import router as dashboard_router

        app.include_router(dashboard_router)
    return app


def _health_router(service: PolicyService) -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/healthz", summary="alive (the process answers)")
    async def healthz() -> dict:
        return {"status": "alive"}

    @router.get("/readyz", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
    async def readyz() -> JSONResponse:
        """200 once the model is loaded and warmed up; 503 while loading and from SIGTERM on."""
        runtime = service.runtime
        if service.ready and runtime is not None:
            return JSONResponse({"ready": True, "model": runtime.spec.name, "version": runtime.spec.version})
        reason = "draining" if service.draining else service.load_error or "loading and warming up the model"
        return JSONResponse({"ready": False, "reason": reason}, 503)

    @router.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(service.metrics.exposition(), media_type=METRICS_CONTENT_TYPE)

    @router.get("/v1/models", response_model=ModelList)
    async def models() -> dict:
        runtime = service.runtime
        return {"models": [runtime.describe()] if runtime is not None else []}

    return router


def _act_router(service: PolicyService, require_api_key: Callable) -> APIRouter:
    router = APIRouter(tags=["actions"])

    @router.post(
        "/act",
        response_model=ActResponse,
        responses=ERRORS,
        dependencies=[Depends(require_api_key)],
        summary="actions for joint observations",
    )
    async def act(request: ActRequest) -> Response:
        """JSON as below; also `application/octet-stream` (float32 little-endian, shape in `X-Shape:
        B,N,obs_dim` or `N,obs_dim`, options in `X-Deterministic`, `X-Seed`, `X-Request-Id`; the answer is
        octet-stream with `X-Shape`) and `application/msgpack` (the JSON body as a msgpack map). Served by
        a lean ASGI endpoint in front of FastAPI; this declaration is the schema."""
        try:
            return Response(
                dumps(await act_from_json(service, request.model_dump())), media_type="application/json"
            )
        except Exception as error:
            return error_response(error)

    @router.websocket("/act/ws")
    async def act_ws(websocket: WebSocket) -> None:
        """One `/act` JSON body per text message, one `/act` JSON response (or error) per answer."""
        offered = offered_api_key(dict(websocket.scope["headers"]))
        if offered is None and "api_key" in websocket.query_params:  # browsers cannot set headers here
            offered = websocket.query_params["api_key"].encode()
        if not api_key_ok(service.api_key, offered):
            await websocket.close(code=1008, reason="missing or wrong API key")
            return
        await websocket.accept()
        metrics = service.metrics
        duration, outcomes = metrics.by_protocol["ws"], metrics.by_outcome
        try:
            while True:
                received = await websocket.receive()
                if received["type"] == "websocket.disconnect":
                    return
                message = received.get("text")
                if message is None:  # a binary frame: say why before closing, not a dropped connection
                    await websocket.close(code=1003, reason="message: binary frame; send /act JSON as text")
                    return
                started = time.perf_counter()
                service.inflight += 1
                try:
                    try:
                        if len(message) > DECODE_IN_THREAD_BYTES:
                            data = await asyncio.to_thread(orjson.loads, message)
                        else:
                            data = orjson.loads(message)
                    except orjson.JSONDecodeError as error:
                        raise InvalidRequest(400, f"message: not valid JSON ({error})", "message") from None
                    if not isinstance(data, dict) or "observations" not in data:
                        raise InvalidRequest(422, "observations: field required", "observations")
                    answer, outcome = dumps(await act_from_json(service, data)), "ok"
                except Exception as error:
                    service.record_failure(started)
                    status, outcome, _, text = error_status(error)
                    field = error.field if isinstance(error, InvalidRequest) else None
                    answer = dumps({"error": text, "field": field, "status": status})
                finally:
                    service.inflight -= 1
                await websocket.send_text(answer.decode())
                duration.observe(time.perf_counter() - started)
                outcomes[outcome].inc()
        except WebSocketDisconnect:
            return

    return router


def _admin_router(service: PolicyService, require_api_key: Callable) -> APIRouter:
    router = APIRouter(prefix="/admin", tags=["operations"], dependencies=[Depends(require_api_key)])

    @router.post("/reload", response_model=ReloadResponse, responses={409: {"model": ErrorResponse}})
    async def reload(request: ReloadRequest | None = None) -> JSONResponse:
        """Load the newest version (or `model`), check it and warm it up, then swap without dropping
        requests. If the new version fails, the current one keeps serving and the answer is 409."""
        request = request or ReloadRequest()
        try:
            result = await service.reload(Path(request.model) if request.model else None, force=request.force)
        except ReloadFailed as error:
            return JSONResponse({"error": str(error), "field": "model"}, 409)
        return JSONResponse(result)

    return router


class Om2pApp:
    """The ASGI app uvicorn runs: the lean `/act` endpoint in front of the FastAPI app."""

    def __init__(self, service: PolicyService, on_fatal: Callable[[], None] | None = None) -> None:
        self.service = service
        self.fastapi = create_fastapi(service, on_fatal)
        self.act = ActEndpoint(service)
        self._admitted = 0  # see shed()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            if scope["method"] == "POST" and (refusal := self.service.shed()) is not None:
                path = scope["path"]
                if path == "/act" or (path.startswith("/v2/models/") and path.endswith("/infer")):
                    await self._refuse(refusal, send)
                    return
            if scope["path"] == "/act" and scope["method"] == "POST":
                await self.act(scope, receive, send)  # enforces the body limit itself, on the hot path
                return
            receive = self._limited(scope, receive)
            if receive is None:
                await _send_json(
                    send,
                    413,
                    {"error": f"body: more than the limit of {self.max_body} bytes", "field": "body"},
                )
                return
        await self.fastapi(scope, receive, send)

    def shed(self, path: bytes) -> bytes | None:
        """For `server.protocols`: the whole HTTP 503 response for a POST that must be refused now, decided
        from its path and the queue depth before anything else is done with the request, or None.

        Requests admitted here reach the queue only when their ASGI tasks run, in the loop's next round;
        until then they are counted as one row each, so that one round's arrivals cannot all be admitted
        into a queue that has room for a few (they would each be parsed, then refused)."""
        if path != b"/act" and not (path.startswith(b"/v2/models/") and path.endswith(b"/infer")):
            return None
        service = self.service
        runtime = service.runtime
        if runtime is None or runtime.batcher is None:
            return None  # loading: the request path says so
        batcher = runtime.batcher
        if batcher.queued_rows + self._admitted < batcher.max_queue_rows and not batcher.full():
            self._admitted += 1
            if self._admitted == 1:
                asyncio.get_running_loop().call_soon(self._new_round)
            return None
        refusal = service.shed() or ServiceUnavailable(
            f"queue full ({batcher.queued_rows} of {batcher.max_queue_rows} rows waiting); retry later",
            batcher.retry_after_s(),
        )
        _, outcome, headers, message = error_status(refusal)
        service.record_failure(time.perf_counter())
        service.metrics.by_outcome[outcome].inc()
        body = orjson.dumps({"error": message, "field": None})
        return (
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: "
            + headers["retry-after"].encode()
            + b"\r\ncontent-length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )

    def _new_round(self) -> None:
        # Runs before the tasks admitted last round (FIFO), which then queue their rows at once.
        self._admitted = 0

    async def _refuse(self, refusal: ServiceUnavailable, send) -> None:
        """503 + Retry-After without reading the body (uvicorn discards what the client still sends, and
        keeps the connection)."""
        status, outcome, headers, message = error_status(refusal)
        self.service.record_failure(time.perf_counter())
        self.service.metrics.by_outcome[outcome].inc()
        body = orjson.dumps({"error": message, "field": None})
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", headers["retry-after"].encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    @property
    def max_body(self) -> int:
        return self.service.settings.max_body_bytes

    def _limited(self, scope, receive):
        """The body limit for every other route: refuse a too-large Content-Length at once (None), and stop a
        chunked body that grows past the limit while it is read (FastAPI turns that into the same 413)."""
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body:
                return None
        received = 0
        limit = self.max_body

        async def receive_limited():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise InvalidRequest(413, f"body: more than the limit of {limit} bytes", "body")
            return message

        return receive_limited


async def _send_json(send, status: int, payload: dict) -> None:
    body = orjson.dumps(payload)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_app(settings: ServerSettings | None = None, on_fatal: Callable[[], None] | None = None) -> Om2pApp:
    settings = settings or ServerSettings()
    problem = settings.exposure_problem()  # `om2p serve` says it first; this guards other launchers
    if problem is not None:
        raise ValueError(problem)
    return Om2pApp(PolicyService(settings, ServerMetrics()), on_fatal)


def app_from_env() -> Om2pApp:
    """uvicorn factory for worker processes (`server.app:app_from_env`): settings from `OM2P_*`."""
    return create_app(ServerSettings())

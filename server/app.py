"""The web layer: FastAPI for the contract, the docs and the slow paths; a raw ASGI `POST /act` in front.

`create_app(settings)` returns an ASGI app: `POST /act` goes straight to `server.act.ActEndpoint`,
everything else (including lifespan) to the FastAPI app, whose routers live in `server.routes`. Every
request for actions, whatever its protocol, runs through `server.request_path.serve`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
from collections.abc import AsyncIterator, Callable

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.act import ActEndpoint, Answer
from server.metrics import ServerMetrics
from server.request_path import DisconnectHook, early_refusal
from server.routes import api_key_dependency, error_response
from server.routes.act import act_router
from server.routes.admin import admin_router
from server.routes.health import health_router
from server.routes.v2 import v2_router
from server.schemas import shape_openapi
from server.service import PolicyService
from server.settings import ServerSettings
from server.validation import InvalidRequest

log = logging.getLogger("om2p.server")


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

    @app.exception_handler(InvalidRequest)
    async def invalid_request(request: Request, error: InvalidRequest) -> JSONResponse:
        return error_response(error)

    app.include_router(health_router(service))
    app.include_router(act_router(service))
    app.include_router(v2_router(service))
    if settings.admin:
        app.include_router(admin_router(service, api_key_dependency(service)))
    _serve_shaped_openapi(app, service)
    if importlib.util.find_spec("server.dashboard") is not None:
        from server.dashboard import router as dashboard_router

        app.include_router(dashboard_router)
    return app


def _serve_shaped_openapi(app: FastAPI, service: PolicyService) -> None:
    """/openapi.json with the served model's shapes (`server.schemas.shape_openapi`), rebuilt when a reload
    changes them; before the model is loaded, FastAPI's schema as declared."""
    cached: dict = {}

    def openapi() -> dict:
        runtime = service.runtime
        spec = runtime.spec if runtime is not None else None
        key = None if spec is None else (spec.name, spec.n_agents, spec.obs_dim, spec.act_dim)
        if "schema" not in cached or cached["key"] != key:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
            )
            if spec is not None:
                schema = shape_openapi(schema, spec, service.settings.max_batch_rows)
            cached.update(schema=schema, key=key)
        return cached["schema"]

    app.openapi = openapi  # type: ignore[method-assign]


class Om2pApp:
    """The ASGI app uvicorn runs: the lean `/act` endpoint in front of the FastAPI app."""

    def __init__(self, service: PolicyService, on_fatal: Callable[[], None] | None = None) -> None:
        self.service = service
        self.fastapi = create_fastapi(service, on_fatal)
        self.act = ActEndpoint(service)
        self._admitted = 0  # see shed()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
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

    def direct_act(
        self,
        headers: dict[bytes, bytes],
        body: bytes,
        hook: DisconnectHook,
        answer: Callable[[Answer | None], None],
        only_connection: bool = False,
    ) -> None:
        """For `server.protocols`: `POST /act` without the ASGI request cycle (`ActEndpoint.respond_soon`)."""
        self.act.respond_soon(headers, body, hook, answer, only_connection)
        if self._admitted:
            self._admitted -= 1  # admitted by `shed` and now queued (or answered): no longer on its way

    def shed(self, path: bytes) -> bytes | None:
        """For `server.protocols`: the whole HTTP 503 response for a POST that must be refused now, decided
        from its path and the queue depth before anything else is done with the request, or None.

        Requests admitted here that take the ASGI route reach the queue only when their tasks run, in the
        loop's next round; until then they are counted as one row each, so that one round's arrivals cannot
        all be admitted into a queue that has room for a few (they would each be parsed, then refused).
        A request that `direct_act` takes is queued at once and stops being counted there."""
        if path != b"/act" and not (path.startswith(b"/v2/models/") and path.endswith(b"/infer")):
            return None
        response = early_refusal(self.service, self._admitted)
        if response is None:
            self._admitted += 1
            if self._admitted == 1:
                asyncio.get_running_loop().call_soon(self._new_round)
        return response

    def _new_round(self) -> None:
        # Runs before the tasks admitted last round (FIFO), which then queue their rows at once.
        self._admitted = 0

    @property
    def refused_read_pause_s(self) -> float:
        """For `server.protocols`: how long a connection refused by `shed` is not read (0: not at all)."""
        return self.service.settings.refused_read_pause_ms / 1000.0

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

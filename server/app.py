"""The web layer: FastAPI for the contract, the docs and the slow paths; a raw ASGI `POST /act` in front.

`create_app(settings)` returns an ASGI app: `POST /act` goes straight to `server.act.ActEndpoint`,
everything else (including lifespan) to the FastAPI app, which also declares `/act` for the schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
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
    V2InferRequest,
    V2InferResponse,
    V2ModelMetadata,
)
from server.service import PolicyService, ReloadFailed, error_status
from server.settings import ServerSettings
from server.validation import InvalidRequest, observations_array, options_from

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
        if not api_key_ok(settings.api_key, offered_api_key(dict(request.headers.raw))):
            raise InvalidRequest(401, "X-API-Key: missing or wrong API key", "X-API-Key")

    @app.exception_handler(InvalidRequest)
    async def invalid_request(request: Request, error: InvalidRequest) -> JSONResponse:
        return error_response(error)

    app.include_router(_health_router(service))
    app.include_router(_act_router(service, require_api_key))
    app.include_router(_v2_router(service, require_api_key))
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
        offered = websocket.headers.get("x-api-key") or websocket.query_params.get("api_key")
        if not api_key_ok(service.settings.api_key, offered):
            await websocket.close(code=1008, reason="missing or wrong API key")
            return
        await websocket.accept()
        metrics = service.metrics
        duration, outcomes = metrics.by_protocol["ws"], metrics.by_outcome
        loop = asyncio.get_running_loop()
        try:
            while True:
                message = await websocket.receive_text()
                started = loop.time()
                service.inflight += 1
                try:
                    try:
                        data = orjson.loads(message)
                    except orjson.JSONDecodeError as error:
                        raise InvalidRequest(400, f"message: not valid JSON ({error})", "message") from None
                    if not isinstance(data, dict) or "observations" not in data:
                        raise InvalidRequest(422, "observations: field required", "observations")
                    answer, outcome = dumps(await act_from_json(service, data)), "ok"
                except Exception as error:
                    status, outcome, _, text = error_status(error)
                    field = error.field if isinstance(error, InvalidRequest) else None
                    answer = dumps({"error": text, "field": field, "status": status})
                finally:
                    service.inflight -= 1
                await websocket.send_text(answer.decode())
                duration.observe(loop.time() - started)
                outcomes[outcome].inc()
        except WebSocketDisconnect:
            return

    return router


def _v2_router(service: PolicyService, require_api_key: Callable) -> APIRouter:
    """KServe Open Inference Protocol v2, so Triton's and KServe's clients and tools work unchanged."""
    router = APIRouter(prefix="/v2", tags=["kserve-v2"])
    settings = service.settings

    def model_or_404(model_name: str):
        runtime = service.current()
        if model_name != runtime.spec.name:
            raise InvalidRequest(
                404, f"model {model_name!r} not found; serving {runtime.spec.name!r}", "model_name"
            )
        return runtime

    @router.get("")
    async def server_metadata() -> dict:
        return {"name": "om2p", "version": "0.1.0", "extensions": ["model_configuration"]}

    @router.get("/health/live")
    async def live() -> dict:
        return {"live": True}

    @router.get("/health/ready")
    async def ready() -> JSONResponse:
        return JSONResponse({"ready": service.ready}, 200 if service.ready else 503)

    @router.get("/models/{model_name}", response_model=V2ModelMetadata)
    async def metadata(model_name: str) -> dict:
        spec = model_or_404(model_name).spec
        return {
            "name": spec.name,
            "versions": [str(spec.version)],
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": "obs", "datatype": "FP32", "shape": [-1, spec.n_agents, spec.obs_dim]}],
            "outputs": [{"name": "actions", "datatype": "FP32", "shape": [-1, spec.n_agents, spec.act_dim]}],
        }

    @router.get("/models/{model_name}/ready")
    async def model_ready(model_name: str) -> JSONResponse:
        model_or_404(model_name)
        return JSONResponse({"name": model_name, "ready": service.ready}, 200 if service.ready else 503)

    @router.get("/models/{model_name}/config")
    async def config(model_name: str) -> dict:
        """Triton's model configuration, for tools that read `max_batch_size`, `input`, `output`."""
        runtime = model_or_404(model_name)
        spec = runtime.spec
        return {
            "name": spec.name,
            "platform": "onnxruntime_onnx",
            "backend": runtime.backend_name,
            "max_batch_size": settings.max_batch_rows,
            "input": [{"name": "obs", "data_type": "TYPE_FP32", "dims": [spec.n_agents, spec.obs_dim]}],
            "output": [{"name": "actions", "data_type": "TYPE_FP32", "dims": [spec.n_agents, spec.act_dim]}],
            "dynamic_batching": {
                "max_queue_delay_microseconds": settings.max_delay_us,
                "default_queue_policy": {
                    "timeout_action": "REJECT",
                    "default_timeout_microseconds": settings.request_timeout_ms * 1000,
                    "max_queue_size": settings.max_queue_rows,
                },
            },
            "parameters": {"agents": list(spec.agents), "env": spec.env, "version": str(spec.version)},
        }

    @router.post(
        "/models/{model_name}/infer",
        response_model=V2InferResponse,
        responses=ERRORS,
        dependencies=[Depends(require_api_key)],
    )
    async def infer(model_name: str, request: V2InferRequest) -> Response:
        """Input `obs` FP32 shaped `[n_agents, obs_dim]` or `[batch, n_agents, obs_dim]`; output `actions`.
        `parameters` may hold `deterministic` and `seed`."""
        metrics = service.metrics
        loop = asyncio.get_running_loop()
        started = loop.time()
        service.inflight += 1
        outcome = "ok"
        try:
            runtime = model_or_404(model_name)
            obs, shape = _v2_obs(request, runtime.spec, settings.max_batch_rows)
            parameters = request.parameters or {}
            options = options_from(
                {"deterministic": parameters.get("deterministic", False), "seed": parameters.get("seed")},
                prefix="parameters.",
            )
            options.request_id = request.id
            result = await service.act(obs, options, runtime)
            actions = result.actions if len(shape) == 3 else result.actions[0]
            body = {
                "model_name": runtime.spec.name,
                "model_version": str(runtime.spec.version),
                "id": request.id,
                "parameters": {
                    "queue_us": round(result.timing.queue_s * 1e6),
                    "compute_us": round(result.timing.compute_s * 1e6),
                },
                "outputs": [
                    {
                        "name": "actions",
                        "shape": list(actions.shape),
                        "datatype": "FP32",
                        "data": actions.ravel(),
                    }
                ],
            }
            return Response(dumps(body), media_type="application/json")
        except Exception as error:
            outcome = error_status(error)[1]
            return error_response(error)
        finally:
            service.inflight -= 1
            metrics.by_protocol["v2"].observe(loop.time() - started)
            metrics.by_outcome[outcome].inc()

    return router


def _v2_obs(request: V2InferRequest, spec, max_rows: int) -> tuple[np.ndarray, list[int]]:
    tensors = {tensor.name: tensor for tensor in request.inputs}
    if "obs" not in tensors:
        raise InvalidRequest(422, f"inputs: expected an input named 'obs', got {sorted(tensors)}", "inputs")
    tensor = tensors["obs"]
    if tensor.datatype != "FP32":
        raise InvalidRequest(
            422, f"inputs.obs.datatype: expected FP32, got {tensor.datatype!r}", "inputs.obs.datatype"
        )
    shape = tensor.shape
    expected = f"[{spec.n_agents}, {spec.obs_dim}] or [batch, {spec.n_agents}, {spec.obs_dim}]"
    if len(shape) not in (2, 3) or list(shape[-2:]) != [spec.n_agents, spec.obs_dim] or min(shape) < 1:
        raise InvalidRequest(422, f"inputs.obs.shape: expected {expected}, got {shape}", "inputs.obs.shape")
    try:
        values = np.array(tensor.data)
    except (ValueError, TypeError):
        raise InvalidRequest(422, "inputs.obs.data: ragged nested lists", "inputs.obs.data") from None
    if values.dtype.kind not in "fiu":
        raise InvalidRequest(422, "inputs.obs.data: expected numbers", "inputs.obs.data")
    if values.size != int(np.prod(shape)):
        raise InvalidRequest(
            422,
            f"inputs.obs.data: {values.size} values, shape {shape} needs {int(np.prod(shape))}",
            "inputs.obs.data",
        )
    obs, _ = observations_array(values.reshape(shape), spec, max_rows, field="inputs.obs.data")
    return obs, shape


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
    return Om2pApp(PolicyService(settings, ServerMetrics()), on_fatal)


def app_from_env() -> Om2pApp:
    """uvicorn factory for worker processes (`server.app:app_from_env`): settings from `OM2P_*`."""
    return create_app(ServerSettings())

"""KServe Open Inference Protocol v2 as Triton's clients use it: JSON bodies whatever the Content-Type, the
binary tensor extension (requests and responses), the model repository index and the statistics extension.

Binary extension: the body is the JSON header (its byte count in `Inference-Header-Content-Length`) followed
by the raw tensors, in the order of the inputs (or outputs) whose `parameters` carry `binary_data_size`.
"""

from __future__ import annotations

import asyncio

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from server.act import check_api_key
from server.request_path import ClientGone, Decoded, Reply, dumps, serve
from server.runtime import ModelRuntime
from server.schemas import V2InferResponse, V2ModelMetadata
from server.service import PolicyService
from server.validation import (
    DECODE_IN_THREAD_BYTES,
    InvalidRequest,
    V2Request,
    options_from,
    parse_v2_request,
    split_v2_body,
)

from . import ERRORS

SERVER_VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data", "model_configuration", "model_repository", "statistics"]
INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "description": "id, parameters (deterministic, seed, binary_data_output), inputs, outputs "
                    "(the served model's shapes appear here once it is loaded)",
                }
            },
        },
    }
}


# A model name (or version) not served, and no model loaded yet (or draining, for /ready).
MODEL_ERRORS = {404: ERRORS[422], 503: ERRORS[503]}


def v2_router(service: PolicyService) -> APIRouter:
    router = APIRouter(prefix="/v2", tags=["kserve-v2"])
    settings = service.settings

    def model_or_404(model_name: str, version: str | None = None) -> ModelRuntime:
        runtime = service.current()
        if model_name != runtime.spec.name:
            raise InvalidRequest(
                404, f"model {model_name!r} not found; serving {runtime.spec.name!r}", "model_name"
            )
        if version not in (None, "", str(runtime.spec.version)):
            raise InvalidRequest(
                404, f"model version {version!r} not found; serving {runtime.spec.version}", "model_version"
            )
        return runtime

    @router.get("")
    async def server_metadata() -> dict:
        return {"name": "om2p", "version": SERVER_VERSION, "extensions": EXTENSIONS}

    @router.get("/health/live")
    async def live() -> dict:
        return {"live": True}

    @router.get("/health/ready", responses={503: {"description": "not ready"}})
    async def ready() -> JSONResponse:
        return JSONResponse({"ready": service.ready}, 200 if service.ready else 503)

    @router.post("/repository/index", summary="the models in the repository and their state")
    async def repository_index() -> list[dict]:
        runtime = service.runtime
        if runtime is None:
            name = settings.model_path().name
            reason = service.load_error or "loading"
            return [
                {"name": name, "state": "UNAVAILABLE" if service.load_error else "LOADING", "reason": reason}
            ]
        return [
            {"name": runtime.spec.name, "version": str(runtime.spec.version), "state": "READY", "reason": ""}
        ]

    # Declared before /models/{model_name} so that "stats" is not read as a model name.
    @router.get("/models/stats", summary="statistics of every model version served")
    async def all_stats() -> dict:
        return {"model_stats": [stats.as_dict() for stats in service.stats.values()]}

    @router.get("/models/{model_name}/stats", summary="Triton's statistics extension", responses=MODEL_ERRORS)
    @router.get("/models/{model_name}/versions/{model_version}/stats", include_in_schema=False)
    async def model_stats(model_name: str, model_version: str | None = None) -> dict:
        model_or_404(model_name)
        versions = [
            stats.as_dict()
            for (name, version), stats in service.stats.items()
            if name == model_name and model_version in (None, "", str(version))
        ]
        if not versions:
            raise InvalidRequest(404, f"model version {model_version!r} not found", "model_version")
        return {"model_stats": versions}

    @router.get("/models/{model_name}", response_model=V2ModelMetadata, responses=MODEL_ERRORS)
    @router.get("/models/{model_name}/versions/{model_version}", include_in_schema=False)
    async def metadata(model_name: str, model_version: str | None = None) -> dict:
        spec = model_or_404(model_name, model_version).spec
        return {
            "name": spec.name,
            "versions": [str(spec.version)],
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": "obs", "datatype": "FP32", "shape": [-1, spec.n_agents, spec.obs_dim]}],
            "outputs": [{"name": "actions", "datatype": "FP32", "shape": [-1, spec.n_agents, spec.act_dim]}],
        }

    @router.get("/models/{model_name}/ready", responses=MODEL_ERRORS)
    @router.get("/models/{model_name}/versions/{model_version}/ready", include_in_schema=False)
    async def model_ready(model_name: str, model_version: str | None = None) -> JSONResponse:
        model_or_404(model_name, model_version)
        return JSONResponse({"name": model_name, "ready": service.ready}, 200 if service.ready else 503)

    @router.get("/models/{model_name}/config", responses=MODEL_ERRORS)
    @router.get("/models/{model_name}/versions/{model_version}/config", include_in_schema=False)
    async def config(model_name: str, model_version: str | None = None) -> dict:
        """Triton's model configuration, for tools that read `max_batch_size`, `input`, `output`."""
        runtime = model_or_404(model_name, model_version)
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
        responses={**ERRORS, 404: ERRORS[422]},
        openapi_extra=INFER_BODY,
    )
    @router.post(
        "/models/{model_name}/versions/{model_version}/infer",
        include_in_schema=False,
    )
    async def infer(model_name: str, request: Request, model_version: str | None = None) -> Response:
        """Input `obs` FP32 shaped `[n_agents, obs_dim]` or `[batch, n_agents, obs_dim]`, as JSON `data` or
        binary (`parameters.binary_data_size`); output `actions`, binary when the request asks for it
        (`parameters.binary_data_output` or the output's `parameters.binary_data`). `parameters` may hold
        `deterministic` and `seed`. The body is parsed as JSON whatever its Content-Type."""
        parsed: list[V2Request] = []

        async def decoded() -> Decoded:
            check_api_key(service.api_key, dict(request.headers.raw))
            spec = model_or_404(model_name, model_version).spec
            body = await request.body()
            header, binary = split_v2_body(body, request.headers.get("inference-header-content-length"))
            arguments = (header, binary, spec, settings.max_batch_rows)
            if len(header) > DECODE_IN_THREAD_BYTES:
                v2 = await asyncio.to_thread(parse_v2_request, *arguments)
            else:
                v2 = parse_v2_request(*arguments)
            parameters = v2.parameters
            options = options_from(
                {"deterministic": parameters.get("deterministic", False), "seed": parameters.get("seed")},
                prefix="parameters.",
            )
            options.request_id = v2.id
            parsed.append(v2)
            return Decoded(v2.values, options, field="inputs.obs.data")

        try:
            reply = await serve(service, "v2", decoded)
        except ClientGone:
            return Response(status_code=499)  # nobody reads it
        if reply.status != 200:
            return JSONResponse(reply.error_body(), reply.status, headers=reply.headers)
        return _infer_answer(reply, parsed[0])

    return router


def _infer_answer(reply: Reply, request: V2Request) -> Response:
    actions, spec, timing = reply.actions, reply.spec, reply.timing
    assert actions is not None and spec is not None and timing is not None
    output: dict = {"name": "actions", "shape": list(actions.shape), "datatype": "FP32"}
    answer = {
        "model_name": spec.name,
        "model_version": str(spec.version),
        "parameters": {"queue_us": round(timing.queue_s * 1e6), "compute_us": round(timing.compute_s * 1e6)},
        "outputs": [output],
    }
    if request.id is not None:
        answer["id"] = request.id
    if not request.binary_output:
        output["data"] = actions.ravel()
        return Response(dumps(answer), media_type="application/json")
    raw = actions.astype("<f4", copy=False).tobytes()
    output["parameters"] = {"binary_data_size": len(raw)}
    json_header = orjson.dumps(answer)
    return Response(
        json_header + raw,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(json_header))},
    )

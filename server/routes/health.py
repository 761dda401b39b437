"""Probes, Prometheus metrics and the model list."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from server.metrics import METRICS_CONTENT_TYPE
from server.schemas import ModelList, ReadyResponse
from server.service import PolicyService


def health_router(service: PolicyService) -> APIRouter:
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

    @router.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def metrics() -> Response:
        return Response(service.metrics.exposition(), media_type=METRICS_CONTENT_TYPE)

    @router.get("/v1/models", response_model=ModelList)
    async def models() -> dict:
        runtime = service.runtime
        return {"models": [runtime.describe()] if runtime is not None else []}

    return router

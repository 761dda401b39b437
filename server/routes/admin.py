"""`POST /admin/reload` (mounted only with `--admin`, and beyond loopback only with an API key)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from server.schemas import ErrorResponse, ReloadRequest, ReloadResponse
from server.service import PolicyService, ReloadFailed


def admin_router(service: PolicyService, require_api_key: Callable) -> APIRouter:
    router = APIRouter(prefix="/admin", tags=["operations"], dependencies=[Depends(require_api_key)])

    @router.post(
        "/reload",
        response_model=ReloadResponse,
        responses={status: {"model": ErrorResponse} for status in (400, 401, 409, 413, 422)},
    )
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

"""FastAPI routers, one per concern: health (probes, metrics, model list), act (the `/act` schema and the
WebSocket), v2 (KServe Open Inference Protocol), admin (reload). Shared here: the error answer and the
API-key dependency."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request
from fastapi.responses import JSONResponse

from server.act import check_api_key
from server.request_path import error_status
from server.schemas import ErrorResponse
from server.service import PolicyService
from server.validation import InvalidRequest

# Documented answers of the routes that take a body (every one is {"error", "field"}).
ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 413, 422, 503, 504)}


def error_response(error: BaseException) -> JSONResponse:
    status, _, headers, message = error_status(error)
    field = error.field if isinstance(error, InvalidRequest) else None
    return JSONResponse({"error": message, "field": field}, status, headers=headers)


def api_key_dependency(service: PolicyService) -> Callable[[Request], None]:
    """A FastAPI dependency: 401 unless the request carries the API key (when one is set)."""

    def require_api_key(request: Request) -> None:
        check_api_key(service.api_key, dict(request.headers.raw))

    return require_api_key

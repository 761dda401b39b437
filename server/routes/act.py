"""`/act`: the schema of `POST /act` (served by `server.act.ActEndpoint` in front of FastAPI) and the
WebSocket, one `/act` JSON body per text message and one answer per message."""

from __future__ import annotations

import asyncio

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from server.act import api_key_ok, offered_api_key
from server.request_path import ClientGone, Decoded, act_body, dumps, serve
from server.schemas import ActRequest, ActResponse
from server.service import PolicyService
from server.validation import (
    DECODE_IN_THREAD_BYTES,
    InvalidRequest,
    json_may_hold_booleans,
    json_may_hold_strings,
    options_from,
)

from . import ERRORS


def act_router(service: PolicyService) -> APIRouter:
    router = APIRouter(tags=["actions"])

    @router.post(
        "/act", response_model=ActResponse, responses=ERRORS, summary="actions for joint observations"
    )
    async def act(request: ActRequest) -> ActResponse:
        """JSON as below; also `application/octet-stream` (float32 little-endian, shape in `X-Shape:
        B,N,obs_dim` or `N,obs_dim`, options in `X-Deterministic`, `X-Seed`, `X-Request-Id`; the answer is
        octet-stream with `X-Shape`) and `application/msgpack` (the JSON body as a msgpack map). Needs
        `X-API-Key` (or `Authorization: Bearer`) when the server has a key."""
        # The declaration is the contract; requests never get here (server.app.Om2pApp routes them).
        raise RuntimeError("POST /act is served by server.act.ActEndpoint")

    @router.websocket("/act/ws")
    async def act_ws(websocket: WebSocket) -> None:
        offered = offered_api_key(dict(websocket.scope["headers"]))
        if offered is None and "api_key" in websocket.query_params:  # browsers cannot set headers here
            offered = websocket.query_params["api_key"].encode()
        if not api_key_ok(service.api_key, offered):
            await websocket.close(code=1008, reason="missing or wrong API key")
            return
        await websocket.accept()
        try:
            while True:
                received = await websocket.receive()
                if received["type"] == "websocket.disconnect":
                    return
                message = received.get("text")
                if message is None:  # a binary frame: say why before closing, not a dropped connection
                    await websocket.close(code=1003, reason="message: binary frame; send /act JSON as text")
                    return
                try:
                    reply = await serve(service, "ws", lambda text=message: _decode_message(text))
                except ClientGone:
                    return
                if reply.status == 200:
                    answer = dumps(act_body(reply))
                else:
                    answer = dumps({**reply.error_body(), "status": reply.status})
                await websocket.send_text(answer.decode())
        except WebSocketDisconnect:
            return

    return router


async def _decode_message(message: str) -> Decoded:
    try:
        if len(message) > DECODE_IN_THREAD_BYTES:
            data = await asyncio.to_thread(orjson.loads, message)
        else:
            data = orjson.loads(message)
    except orjson.JSONDecodeError as error:
        raise InvalidRequest(400, f"message: not valid JSON ({error})", "message") from None
    if not isinstance(data, dict) or "observations" not in data:
        raise InvalidRequest(422, "observations: field required", "observations")
    return Decoded(
        data["observations"],
        options_from(data),
        booleans_possible=json_may_hold_booleans(message),
        strings_possible=json_may_hold_strings(message, data),
    )

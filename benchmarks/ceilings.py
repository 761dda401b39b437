"""The two HTTP ceilings `/act` is compared with: a raw ASGI app and a FastAPI route, both answering a
constant of the size of an `/act` answer (3 agents x 5 actions). Run with `uvicorn benchmarks.ceilings:raw_app`."""

from __future__ import annotations

import orjson
from fastapi import FastAPI, Request, Response

CONSTANT = orjson.dumps({"actions": [[0.0] * 5] * 3, "model": "constant", "version": 1})


async def raw_app(scope: dict, receive, send) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:  # drain the body, as /act must
        message = await receive()
        more = message.get("more_body", False)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(CONSTANT)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": CONSTANT})


def _fastapi_app() -> FastAPI:
    # Module-level imports: with postponed annotations FastAPI resolves `Request` by name in this module's
    # globals; imported locally it would become a required query parameter and every call a 422.
    app = FastAPI()

    @app.post("/act")
    async def act(request: Request) -> Response:
        await request.body()
        return Response(CONSTANT, media_type="application/json")

    return app


fastapi_app = _fastapi_app()

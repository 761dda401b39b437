"""WebSocket control-loop client: one connection, one `/act` JSON message per environment tick, so a
control loop pays the TCP and HTTP handshake once instead of per step."""

from __future__ import annotations

import json

import numpy as np

from clients.client import ActResult, Om2pError


class WebSocketPolicyClient:
    """`with WebSocketPolicyClient(url) as ws: ws.act(obs)`; `url` is the server's http(s) base URL."""

    def __init__(self, url: str, timeout_s: float = 10.0, api_key: str | None = None) -> None:
        from websockets.sync.client import connect

        ws_url = url.rstrip("/").replace("http://", "ws://", 1).replace("https://", "wss://", 1) + "/act/ws"
        headers = {"X-API-Key": api_key} if api_key else None
        self._socket = connect(ws_url, open_timeout=timeout_s, additional_headers=headers)
        self.timeout_s = timeout_s

    def act(
        self, observations: np.ndarray | list, deterministic: bool = False, seed: int | None = None
    ) -> ActResult:
        body = {
            "observations": np.asarray(observations, dtype=np.float32).tolist(),
            "deterministic": deterministic,
            "seed": seed,
        }
        self._socket.send(json.dumps(body))
        answer = json.loads(self._socket.recv(timeout=self.timeout_s))
        if "error" in answer:
            raise Om2pError(str(answer["error"]), answer.get("status"), answer.get("field"))
        timing = answer.get("timing") or {}
        return ActResult(
            np.asarray(answer["actions"], dtype=np.float32),
            model=answer.get("model"),
            version=answer.get("version"),
            request_id=answer.get("request_id"),
            queue_us=timing.get("queue_us"),
            compute_us=timing.get("compute_us"),
        )

    def close(self) -> None:
        self._socket.close()

    def __enter__(self) -> WebSocketPolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""A corpus of malformed inputs against a real server: each gets a 4xx naming the field (or, on the
WebSocket, a close whose reason names the message), never a 5xx or a dropped connection."""

from __future__ import annotations

import base64
import math
import os
import socket
import struct
from pathlib import Path

import msgpack
import numpy as np
import orjson
import pytest

from server.backends import ModelSpec
from server.validation import (
    InvalidRequest,
    json_may_hold_booleans,
    json_may_hold_strings,
    observations_array,
)

API_KEY = "test-key"  # as in conftest.py
ROW = [0.0] * 18
V2 = "/v2/models/synthetic/infer"

CORPUS = {
    "msgpack shape of booleans": (
        "/act", {"content": msgpack.packb({"observations": b"\0" * 216, "shape": [True, 3, 18]}),
                 "headers": {"Content-Type": "application/msgpack"}}, 400, "shape"),
    "boolean in a JSON row": ("/act", {"json": {"observations": [[True, *ROW[1:]], ROW, ROW]}}, 422, "observations"),
    "boolean deep in a JSON batch": (
        "/act", {"content": b'{"observations": [[' + b",".join([b"[" + b",".join([b"0.5"] * 18) + b"]"] * 2)
                 + b",[" + b",".join([b"0.5"] * 17) + b",\n  false ]]]}",
                 "headers": {"Content-Type": "application/json"}}, 422, "observations"),
    "boolean in a msgpack row": (
        "/act", {"content": msgpack.packb({"observations": [[False, *ROW[1:]], ROW, ROW]}),
                 "headers": {"Content-Type": "application/msgpack"}}, 422, "observations"),
    "boolean in v2 data": (
        V2, {"json": {"inputs": [{"name": "obs", "shape": [3, 18], "datatype": "FP32", "data": [True, *ROW[1:], *ROW, *ROW]}]}},
        422, "inputs.obs.data"),
    "v2 shape of booleans": (
        V2, {"json": {"inputs": [{"name": "obs", "shape": [True, 3, 18], "datatype": "FP32", "data": ROW * 3}]}},
        422, "inputs.obs.shape"),
    "v2 id too long": (
        V2, {"json": {"id": "x" * 257, "inputs": [{"name": "obs", "shape": [3, 18], "datatype": "FP32", "data": ROW * 3}]}},
        422, "id"),
    "X-Request-Id too long": (
        "/act", {"content": b"\0" * 216, "headers": {"Content-Type": "application/octet-stream", "X-Shape": "3,18",
                                                     "X-Request-Id": "x" * 257}}, 422, "X-Request-Id"),
    "request_id too long": ("/act", {"json": {"observations": [ROW] * 3, "request_id": "x" * 257}}, 422, "request_id"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CORPUS), ids=list(CORPUS))
def test_malformed_input_gets_a_4xx_naming_the_field(client, case):
    path, request, status, field = CORPUS[case]
    response = client.post(path, **request)
    assert response.status_code == status, response.text
    assert response.json()["field"] == field and field in response.json()["error"]


def test_the_boolean_shortcut_only_skips_documents_without_the_literals():
    assert not json_may_hold_booleans(b'{"observations": [[0.5, -1e3]], "request_id": "tru e"}')
    assert json_may_hold_booleans(b'{"observations": [[0.5, true]]}')
    assert json_may_hold_booleans('{"observations": [[false]]}')  # WebSocket text
    # A literal inside a string only costs the full scan.
    assert json_may_hold_booleans(b'{"observations": [[0.5]], "request_id": "not true"}')


def test_the_string_shortcut_counts_every_quote_that_is_not_a_key_or_a_top_level_string():
    for text in (b'{"observations": [[0.5]]}', '{"observations": [[0.5]], "request_id": "a b"}'):
        assert not json_may_hold_strings(text, orjson.loads(text))
    for text in (
        b'{"observations": [[0.5, "1.5"]]}',
        b'{"observations": [[0.5]], "request_id": "say \\"hi\\""}',  # an escaped quote: the full scan
        b'{"observations": [["a"]], "observations": [[0.5]]}',  # a repeated key, whatever its values
        b'{"observations": [[0.5]], "extra": ["x"]}',
    ):
        assert json_may_hold_strings(text, orjson.loads(text)), text


SPEC = ModelSpec("m", 1, ("a", "b"), 3, 2, np.ones((2, 2), bool), -1.0, 1.0, Path("."))
EQUIVALENCE = {
    "one row": [[0.1, -2.0, 3], [4, 5, 6e5]],
    "a batch": [[[0.5] * 3] * 2] * 4,
    "ints": [[1, 2, 3], [-4, 5, 1000000]],
    "at the bound": [[1e6, -1e6, 0.0], [0.0, 0.0, 0.0]],
    "just past the bound": [[1e6 + 0.0625, 0.0, 0.0], [0.0, 0.0, 0.0]],
    "many values near the bound": [[[9.9e5] * 3] * 2] * 8,
    "float64 beyond float32": [[1e300, 0.0, 0.0], [0.0, 0.0, 0.0]],
    "NaN": [[math.nan, 0.0, 0.0], [0.0, 0.0, 0.0]],
    "Inf": [[0.0, -math.inf, 0.0], [0.0, 0.0, 0.0]],
    "null": [[None, 0.0, 0.0], [0.0, 0.0, 0.0]],
    "ragged": [[0.0, 0.0, 0.0], [0.0, 0.0]],
    "wrong shape": [[0.0, 0.0], [0.0, 0.0]],
    "too deep": [[[[0.0] * 3] * 2]],
    "a flat row": [0.0, 0.0, 0.0],
    "empty": [],
    "empty batch": [[]],
    "too many rows": [[[0.0] * 3] * 2] * 9,
    "an object inside": [[{"x": 1}, 0.0, 0.0], [0.0, 0.0, 0.0]],
}


@pytest.mark.parametrize("value", EQUIVALENCE.values(), ids=EQUIVALENCE.keys())
def test_the_plain_number_shortcut_answers_as_the_checked_way(value):
    """Lists known to hold no bool and no string are converted straight to float32: the same array, or
    the same refusal with the same message, as the checked way."""

    def outcome(**flags):
        try:
            array, batched = observations_array(value, SPEC, 8, **flags)
        except InvalidRequest as error:
            return error.status, error.message, error.field
        assert array.dtype == np.float32 and array.flags.c_contiguous
        return array.tobytes(), array.shape, batched

    assert outcome(booleans_possible=False, strings_possible=False) == outcome()


def test_oversized_headers_get_431(client):
    response = client.get("/healthz", headers={"X-Big": "a" * 100_000})
    assert response.status_code == 431 and response.json()["field"] == "headers"


def _ws_close(port: int, opcode: int, payload: bytes) -> tuple[int, bytes]:
    """A raw WebSocket client (stock clients refuse to send invalid UTF-8): one frame, then the close."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            f"GET /act/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-API-Key: {API_KEY}\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 101")
        mask = os.urandom(4)
        masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
        sock.sendall(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)
        frame = answer.split(b"\r\n\r\n", 1)[1]
        while len(frame) < 2 or len(frame) < 2 + frame[1]:
            frame += sock.recv(4096)
    assert frame[0] == 0x88  # a close frame, not a dropped connection
    (code,) = struct.unpack(">H", frame[2:4])
    return code, frame[4 : 2 + frame[1]]


@pytest.mark.parametrize(("opcode", "payload", "code"), [(0x2, b"\0\1", 1003), (0x1, b"\xff\xfe{", 1007)],
                         ids=["binary frame", "invalid UTF-8"])  # fmt: skip
def test_bad_websocket_frames_get_a_close_naming_the_message(server, opcode, payload, code):
    closed_code, reason = _ws_close(server.port, opcode, payload)
    assert closed_code == code and reason.startswith(b"message:")
    assert "Traceback" not in server.log()

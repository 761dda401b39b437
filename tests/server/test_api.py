"""The HTTP, binary, msgpack, WebSocket and KServe v2 APIs of a real `om2p serve` on loopback."""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import msgpack
import numpy as np
import onnxruntime as ort
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from export.manifest import resolve_version_dir
from server.synthetic import reference_policy

API_KEY = "test-key"  # as in conftest.py (importlib mode: conftest is not importable)
N_AGENTS, OBS_DIM, ACT_DIM = 3, 18, 5


@pytest.fixture(scope="module")
def direct(model_repository):
    """The backend's direct answer: the same ONNX file in a plain ONNX Runtime session, noise = 0."""
    session = ort.InferenceSession(
        str(resolve_version_dir(model_repository) / "model.onnx"), providers=["CPUExecutionProvider"]
    )

    def actions(obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, np.float32).reshape(-1, N_AGENTS, OBS_DIM)
        return session.run(None, {"obs": obs, "noise": np.zeros((len(obs), N_AGENTS, ACT_DIM), np.float32)})[
            0
        ]

    return actions


def metric_samples(text: str, name: str) -> dict[str, float]:
    """`{labels: value}` of one metric family's samples in the Prometheus text format."""
    samples = {}
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", line)
        if match:
            samples[match.group(1) or ""] = float(match.group(2))
    return samples


def test_200_concurrent_clients_each_get_their_own_actions_in_shared_batches(server, direct):
    rng = np.random.default_rng(7)
    requests = []
    for index in range(200):
        rows = int(rng.integers(1, 4))
        obs = rng.normal(0, 1, (rows, N_AGENTS, OBS_DIM)).astype(np.float32)
        batched = index % 2 == 0
        requests.append((obs, batched))

    async def call(http: httpx.AsyncClient, obs: np.ndarray, batched: bool, index: int) -> httpx.Response:
        payload = obs.tolist() if batched else obs[0].tolist()
        return await http.post(
            "/act", json={"observations": payload, "deterministic": True, "request_id": f"r{index}"}
        )

    async def bad_call(http: httpx.AsyncClient) -> httpx.Response:
        return await http.post("/act", json={"observations": [[0.0] * OBS_DIM] * (N_AGENTS - 1)})

    async def run() -> tuple[list[httpx.Response], list[httpx.Response]]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(
            base_url=server.url, headers={"X-API-Key": API_KEY}, limits=limits, timeout=30
        ) as http:
            good = [call(http, obs, batched, index) for index, (obs, batched) in enumerate(requests)]
            bad = [bad_call(http) for _ in range(20)]  # interleaved bad requests must not touch the good ones
            answers = await asyncio.gather(*good, *bad)
        return answers[:200], answers[200:]

    good, bad = asyncio.run(run())
    for index, ((obs, batched), response) in enumerate(zip(requests, good, strict=True)):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["request_id"] == f"r{index}" and body["model"] == "synthetic" and body["version"] == 1
        actions = np.asarray(body["actions"], np.float32)
        expected = direct(obs) if batched else direct(obs)[0]
        np.testing.assert_allclose(actions, expected, rtol=1e-5, atol=1e-6)
        assert body["timing"]["compute_us"] > 0 and body["timing"]["queue_us"] >= 0
    assert all(response.status_code == 422 for response in bad)

    metrics = httpx.get(f"{server.url}/metrics").text
    rows = metric_samples(metrics, "om2p_batch_rows_bucket")
    batches, single = rows['{le="+Inf"}'], rows['{le="1.0"}']
    assert batches > single  # some forward passes carried more than one row
    assert metric_samples(metrics, "om2p_batch_rows_count")[""] < 200  # fewer passes than requests
    outcomes = metric_samples(metrics, "om2p_requests_total")
    assert outcomes['{outcome="ok"}'] >= 200 and outcomes['{outcome="invalid"}'] >= 20


def test_actions_match_the_policy_function_and_masked_entries_are_zero(client, model_repository):
    obs = np.random.default_rng(1).normal(0, 1, (4, N_AGENTS, OBS_DIM)).astype(np.float32)
    body = client.post("/act", json={"observations": obs.tolist(), "deterministic": True}).json()
    actions = np.asarray(body["actions"], np.float32)
    reference = reference_policy(model_repository)(obs, np.zeros((4, N_AGENTS, ACT_DIM), np.float32))
    np.testing.assert_allclose(actions, reference, atol=1e-5)
    assert np.all(actions[:, 2, -1] == 0.0) and np.all(np.abs(actions) <= 1.0)


def test_noise_is_fresh_per_request_unless_seeded(client):
    payload = {"observations": [[0.5] * OBS_DIM] * N_AGENTS}
    first, second = (np.asarray(client.post("/act", json=payload).json()["actions"]) for _ in range(2))
    assert not np.array_equal(first, second)
    seeded = [client.post("/act", json={**payload, "seed": 42}).json()["actions"] for _ in range(2)]
    assert seeded[0] == seeded[1]


def test_binary_octet_stream_round_trip(client, direct):
    obs = np.random.default_rng(2).normal(0, 1, (5, N_AGENTS, OBS_DIM)).astype("<f4")
    response = client.post(
        "/act",
        content=obs.tobytes(),
        headers={"Content-Type": "application/octet-stream", "X-Shape": "5,3,18", "X-Deterministic": "1",
                 "X-Request-Id": "bin-1"},
    )  # fmt: skip
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    assert (
        response.headers["x-shape"] == f"5,{N_AGENTS},{ACT_DIM}"
        and response.headers["x-request-id"] == "bin-1"
    )
    actions = np.frombuffer(response.content, "<f4").reshape(5, N_AGENTS, ACT_DIM)
    np.testing.assert_allclose(actions, direct(obs), rtol=1e-5, atol=1e-6)
    single = client.post(
        "/act",
        content=obs[0].tobytes(),
        headers={"Content-Type": "application/octet-stream", "X-Shape": "3,18", "X-Deterministic": "true"},
    )
    assert single.headers["x-shape"] == f"{N_AGENTS},{ACT_DIM}"
    np.testing.assert_allclose(
        np.frombuffer(single.content, "<f4").reshape(N_AGENTS, ACT_DIM), direct(obs)[0], atol=1e-6
    )


def test_msgpack_round_trip(client, direct):
    obs = np.random.default_rng(3).normal(0, 1, (N_AGENTS, OBS_DIM)).astype(np.float32)
    for observations in (obs.tolist(), obs.astype("<f4").tobytes()):
        body = {"observations": observations, "shape": [N_AGENTS, OBS_DIM], "deterministic": True}
        response = client.post(
            "/act", content=msgpack.packb(body), headers={"Content-Type": "application/msgpack"}
        )
        assert response.status_code == 200, response.text
        answer = msgpack.unpackb(response.content)
        np.testing.assert_allclose(np.asarray(answer["actions"], np.float32), direct(obs)[0], atol=1e-6)


def test_websocket_one_observation_per_tick(server, direct):
    obs = np.random.default_rng(4).normal(0, 1, (3, N_AGENTS, OBS_DIM)).astype(np.float32)
    with connect(f"ws://127.0.0.1:{server.port}/act/ws", additional_headers={"X-API-Key": API_KEY}) as ws:
        for tick in range(3):
            ws.send(
                json.dumps(
                    {"observations": obs[tick].tolist(), "deterministic": True, "request_id": str(tick)}
                )
            )
            answer = json.loads(ws.recv())
            assert answer["request_id"] == str(tick)
            np.testing.assert_allclose(
                np.asarray(answer["actions"], np.float32), direct(obs[tick])[0], atol=1e-6
            )
        ws.send(json.dumps({"observations": [[1.0] * 2]}))
        error = json.loads(ws.recv())
        assert error["status"] == 422 and error["field"] == "observations"
        ws.send(
            json.dumps({"observations": obs[0].tolist(), "deterministic": True})
        )  # still open after an error
        assert "actions" in json.loads(ws.recv())


def test_websocket_needs_the_api_key(server):
    with pytest.raises(InvalidStatus) as refused:
        connect(f"ws://127.0.0.1:{server.port}/act/ws")
    assert refused.value.response.status_code == 403  # the handshake is refused before any message


def test_kserve_v2_protocol(client, direct):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").status_code == 200
    metadata = client.get("/v2/models/synthetic").json()
    assert metadata["inputs"] == [{"name": "obs", "datatype": "FP32", "shape": [-1, N_AGENTS, OBS_DIM]}]
    assert client.get("/v2/models/synthetic/ready").status_code == 200
    config = client.get("/v2/models/synthetic/config").json()
    assert config["max_batch_size"] == 64 and config["input"][0]["dims"] == [N_AGENTS, OBS_DIM]
    obs = np.random.default_rng(5).normal(0, 1, (2, N_AGENTS, OBS_DIM)).astype(np.float32)
    request = {
        "id": "v2-1",
        "parameters": {"deterministic": True},
        "inputs": [
            {"name": "obs", "shape": [2, N_AGENTS, OBS_DIM], "datatype": "FP32", "data": obs.ravel().tolist()}
        ],
    }
    answer = client.post("/v2/models/synthetic/infer", json=request).json()
    assert answer["model_name"] == "synthetic" and answer["model_version"] == "1" and answer["id"] == "v2-1"
    output = answer["outputs"][0]
    assert (
        output["name"] == "actions"
        and output["shape"] == [2, N_AGENTS, ACT_DIM]
        and output["datatype"] == "FP32"
    )
    np.testing.assert_allclose(
        np.asarray(output["data"], np.float32).reshape(2, N_AGENTS, ACT_DIM), direct(obs), atol=1e-6
    )
    wrong = client.post("/v2/models/other/infer", json=request)
    assert wrong.status_code == 404 and "error" in wrong.json()
    int_input = {**request, "inputs": [{**request["inputs"][0], "datatype": "INT32"}]}
    refused = client.post("/v2/models/synthetic/infer", json=int_input)
    assert refused.status_code == 422 and "FP32" in refused.json()["error"]
    string_flag = client.post(
        "/v2/models/synthetic/infer", json={**request, "parameters": {"deterministic": "no"}}
    )
    assert string_flag.status_code == 422 and string_flag.json()["field"] == "parameters.deterministic"
    short = {**request, "inputs": [{**request["inputs"][0], "data": obs.ravel().tolist()[:-1]}]}
    too_short = client.post("/v2/models/synthetic/infer", json=short)
    assert too_short.status_code == 422 and "needs 108" in too_short.json()["error"]


def test_health_readiness_models_and_openapi(server, client):
    assert httpx.get(f"{server.url}/healthz").status_code == 200  # no API key needed
    assert httpx.get(f"{server.url}/readyz").json() == {"ready": True, "model": "synthetic", "version": 1}
    model = client.get("/v1/models").json()["models"][0]
    assert model["agents"] == ["agent_0", "agent_1", "agent_2"] and model["obs_dim"] == OBS_DIM
    assert model["backend"] == "onnxruntime" and "CPUExecutionProvider" in model["providers"]
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    for path in ("/act", "/v2/models/{model_name}/infer", "/readyz", "/admin/reload", "/v1/models"):
        assert path in paths
    metrics = httpx.get(f"{server.url}/metrics").text
    info = metric_samples(metrics, "om2p_model_info")
    assert info == {
        '{act_dim="5",agents="3",backend="onnxruntime",name="synthetic",obs_dim="18",version="1"}': 1.0
    }
    for name in ("om2p_queue_rows", "om2p_queue_capacity_rows", "om2p_inflight_requests"):
        assert name in metric_samples(metrics, name) or metric_samples(metrics, name)


def test_api_key_guards_act_infer_and_admin(server):
    observations = {"observations": [[0.0] * OBS_DIM] * N_AGENTS}
    assert httpx.post(f"{server.url}/act", json=observations).status_code == 401
    wrong = httpx.post(f"{server.url}/act", json=observations, headers={"X-API-Key": "nope"})
    assert wrong.status_code == 401 and wrong.json()["field"] == "X-API-Key"
    assert httpx.post(f"{server.url}/admin/reload").status_code == 401
    assert httpx.post(f"{server.url}/v2/models/synthetic/infer", json={"inputs": []}).status_code == 401
    bearer = httpx.post(
        f"{server.url}/act", json=observations, headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert bearer.status_code == 200


GOOD_ROW = [0.0] * OBS_DIM
BAD_INPUTS = {
    "wrong agent count": ({"json": {"observations": [GOOD_ROW] * 2}}, 422, "observations", "[3][18]"),
    "wrong obs dim": ({"json": {"observations": [[0.0] * 17] * 3}}, 422, "observations", "got shape [3, 17]"),
    "wrong agents in a batch": ({"json": {"observations": [[GOOD_ROW] * 4]}}, 422, "observations", "[3][18]"),
    "four levels of nesting": ({"json": {"observations": [[[GOOD_ROW] * 3]]}}, 422, "observations", "[batch][3][18]"),
    "ragged lists": ({"json": {"observations": [GOOD_ROW, GOOD_ROW, [0.0] * 17]}}, 422, "observations", "ragged"),
    "strings": ({"json": {"observations": [["0.5"] * OBS_DIM] * 3}}, 422, "observations", "strings"),
    "null values": ({"json": {"observations": [[None] * OBS_DIM] * 3}}, 422, "observations", "expected floats"),
    "beyond float32": ({"json": {"observations": [[1e39] * OBS_DIM] * 3}}, 422, "observations", "Inf"),
    "empty list": ({"json": {"observations": []}}, 422, "observations", "non-empty"),
    "empty batch": ({"json": {"observations": [[]]}}, 422, "observations", "[3][18]"),
    "missing observations": ({"json": {"obs": [GOOD_ROW] * 3}}, 422, "observations", "required"),
    "not an object": ({"json": [1, 2]}, 422, "body", "JSON object"),
    "empty body": ({"content": b""}, 400, "body", "empty"),
    "malformed JSON": ({"content": b'{"observations": [[0.0,'}, 400, "body", "not valid JSON"),
    "NaN literal": ({"content": b'{"observations": [[NaN]]}'}, 400, "body", "not valid JSON"),
    "deterministic not a bool": (
        {"json": {"observations": [GOOD_ROW] * 3, "deterministic": "yes"}}, 422, "deterministic", "true or false"),
    "negative seed": ({"json": {"observations": [GOOD_ROW] * 3, "seed": -1}}, 422, "seed", "integer"),
    "too many rows": ({"json": {"observations": [[GOOD_ROW] * 3] * 65}}, 413, "observations", "max of 64"),
    "oversized body": ({"content": b"[" + b"0.0," * 300_000 + b"0.0]"}, 413, "body", "limit"),
    "binary without shape": (
        {"content": b"\0" * 216, "headers": {"Content-Type": "application/octet-stream"}}, 400, "X-Shape", "required"),
    "binary shape not integers": (
        {"content": b"\0" * 216, "headers": {"Content-Type": "application/octet-stream", "X-Shape": "3,x"}},
        400, "X-Shape", "integers"),
    "binary byte count": (
        {"content": b"\0" * 215, "headers": {"Content-Type": "application/octet-stream", "X-Shape": "3,18"}},
        400, "body", "needs 216"),
    "binary wrong obs dim": (
        {"content": b"\0" * 204, "headers": {"Content-Type": "application/octet-stream", "X-Shape": "3,17"}},
        422, "observations", "[3][18]"),
    "binary NaN": (
        {"content": np.full((3, 18), np.nan, "<f4").tobytes(),
         "headers": {"Content-Type": "application/octet-stream", "X-Shape": "3,18"}}, 422, "observations", "NaN"),
    "binary Inf": (
        {"content": np.full((1, 3, 18), np.inf, "<f4").tobytes(),
         "headers": {"Content-Type": "application/octet-stream", "X-Shape": "1,3,18"}}, 422, "observations", "Inf"),
    "binary bad deterministic header": (
        {"content": b"\0" * 216,
         "headers": {"Content-Type": "application/octet-stream", "X-Shape": "3,18", "X-Deterministic": "maybe"}},
        400, "X-Deterministic", "true or false"),
    "malformed msgpack": ({"content": b"\xc1\xc1", "headers": {"Content-Type": "application/msgpack"}}, 400, "body", "msgpack"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_gets_a_4xx_naming_the_field(client, case):
    request, status, field, message = BAD_INPUTS[case]
    response = client.post("/act", **request)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["field"] == field and message in body["error"], body


def test_body_limit_guards_every_route(client):
    big = b'{"inputs": [' + b" " * 300_000 + b"]}"
    sized = client.post(
        "/v2/models/synthetic/infer", content=big, headers={"Content-Type": "application/json"}
    )
    assert sized.status_code == 413 and sized.json()["field"] == "body"

    def chunks():  # no Content-Length: the limit trips while the body is read
        for _ in range(40):
            yield b" " * 10_000

    chunked = client.post(
        "/v2/models/synthetic/infer", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert chunked.status_code == 413 and "limit" in chunked.json()["error"]
    streamed_act = client.post("/act", content=chunks(), headers={"Content-Type": "application/json"})
    assert streamed_act.status_code == 413 and streamed_act.json()["field"] == "body"

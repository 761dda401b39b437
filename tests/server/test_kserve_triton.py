"""Stock `tritonclient.http` (sync and aio), unchanged, against a real `om2p serve` on loopback: JSON and the
binary tensor extension, the repository index and the statistics extension. Answers equal `/act`'s."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import orjson
import pytest

tritonhttp = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is a dev dependency")
tritonaio = pytest.importorskip("tritonclient.http.aio")

API_KEY = "test-key"  # as in conftest.py (importlib mode: conftest is not importable)
N_AGENTS, OBS_DIM, ACT_DIM = 3, 18, 5
HEADERS = {"X-API-Key": API_KEY}  # passed as copies: tritonclient adds its own headers to the dict


@pytest.fixture(scope="module")
def triton(server):
    client = tritonhttp.InferenceServerClient(server.url.removeprefix("http://"))
    yield client
    client.close()


def act_actions(client: httpx.Client, obs: np.ndarray, **options) -> np.ndarray:
    answer = client.post("/act", json={"observations": obs.tolist(), **options})
    assert answer.status_code == 200, answer.text
    return np.asarray(answer.json()["actions"], np.float32)


def triton_infer(triton, obs: np.ndarray, binary_in: bool, binary_out: bool | None, **parameters):
    request = tritonhttp.InferInput("obs", list(obs.shape), "FP32")
    request.set_data_from_numpy(obs, binary_data=binary_in)
    outputs = (
        None if binary_out is None else [tritonhttp.InferRequestedOutput("actions", binary_data=binary_out)]
    )
    return triton.infer(
        "synthetic",
        [request],
        outputs=outputs,
        headers=dict(HEADERS),
        parameters=parameters or None,
        request_id="t-1",
    )


@pytest.mark.parametrize("batched", [False, True], ids=["[n_agents,obs_dim]", "[batch,n_agents,obs_dim]"])
@pytest.mark.parametrize(
    ("binary_in", "binary_out"),
    [(False, False), (True, True), (True, False), (False, True), (True, None)],
    ids=["json", "binary", "binary-in-json-out", "json-in-binary-out", "binary_data_output"],
)
def test_tritonclient_infer_equals_act(triton, client, batched, binary_in, binary_out):
    shape = (4, N_AGENTS, OBS_DIM) if batched else (N_AGENTS, OBS_DIM)
    obs = np.random.default_rng(7).normal(0, 1, shape).astype(np.float32)
    result = triton_infer(triton, obs, binary_in, binary_out, deterministic=True)
    actions = result.as_numpy("actions")
    assert actions.dtype == np.float32 and actions.shape == (*shape[:-1], ACT_DIM)
    np.testing.assert_allclose(actions, act_actions(client, obs, deterministic=True), atol=1e-6)
    answer = result.get_response()
    assert answer["model_name"] == "synthetic" and answer["id"] == "t-1"
    binary = binary_out if binary_out is not None else True  # no outputs named: binary_data_output
    assert ("binary_data_size" in (answer["outputs"][0].get("parameters") or {})) == binary
    seeded = triton_infer(triton, obs, binary_in, binary_out, seed=11).as_numpy("actions")
    np.testing.assert_allclose(seeded, act_actions(client, obs, seed=11), atol=1e-6)


def test_tritonclient_metadata_health_and_errors(triton):
    assert triton.is_server_live() and triton.is_server_ready() and triton.is_model_ready("synthetic")
    metadata = triton.get_server_metadata()
    assert {"binary_tensor_data", "statistics"} <= set(metadata["extensions"])
    model = triton.get_model_metadata("synthetic")
    assert model["inputs"][0]["name"] == "obs" and model["outputs"][0]["shape"] == [-1, N_AGENTS, ACT_DIM]
    assert triton.get_model_config("synthetic")["input"][0]["dims"] == [N_AGENTS, OBS_DIM]
    wrong = tritonhttp.InferInput("obs", [N_AGENTS, OBS_DIM + 1], "FP32")
    wrong.set_data_from_numpy(np.zeros((N_AGENTS, OBS_DIM + 1), np.float32))
    with pytest.raises(tritonhttp.InferenceServerException, match=r"inputs\.obs\.shape"):
        triton.infer("synthetic", [wrong], headers=dict(HEADERS))
    with pytest.raises(tritonhttp.InferenceServerException, match="API key"):
        triton.infer("synthetic", [wrong])  # no X-API-Key


def test_repository_index_and_statistics(triton, client):
    assert triton.get_model_repository_index() == [
        {"name": "synthetic", "version": "1", "state": "READY", "reason": ""}
    ]
    before = triton.get_inference_statistics("synthetic")["model_stats"][0]
    obs = np.zeros((2, N_AGENTS, OBS_DIM), np.float32)
    triton_infer(triton, obs, True, True)
    act_actions(client, obs[0])  # /act counts too: one request path, one set of statistics
    assert client.post("/act", json={"observations": [[True] * OBS_DIM] * N_AGENTS}).status_code == 422
    after = triton.get_inference_statistics("synthetic")["model_stats"][0]
    assert after["name"] == "synthetic" and after["version"] == "1"
    assert after["inference_count"] - before["inference_count"] == 3  # rows: 2 + 1
    assert after["execution_count"] > before["execution_count"]
    stats, old = after["inference_stats"], before["inference_stats"]
    assert stats["success"]["count"] - old["success"]["count"] == 2
    assert stats["fail"]["count"] - old["fail"]["count"] == 1
    for key in ("success", "queue", "compute_infer"):
        assert stats[key]["ns"] > old[key]["ns"]
    everything = triton.get_inference_statistics()["model_stats"]
    assert [entry["name"] for entry in everything] == ["synthetic"]
    assert client.get("/v2/models/other/stats").status_code == 404


def test_tritonclient_aio(server, client):
    obs = np.random.default_rng(3).normal(0, 1, (5, N_AGENTS, OBS_DIM)).astype(np.float32)

    async def main() -> list[np.ndarray]:
        triton = tritonaio.InferenceServerClient(server.url.removeprefix("http://"))
        try:
            assert await triton.is_model_ready("synthetic")

            async def one(binary: bool) -> np.ndarray:
                request = tritonaio.InferInput("obs", list(obs.shape), "FP32")
                request.set_data_from_numpy(obs, binary_data=binary)
                outputs = [tritonaio.InferRequestedOutput("actions", binary_data=binary)]
                result = await triton.infer(
                    "synthetic",
                    [request],
                    outputs=outputs,
                    headers=dict(HEADERS),
                    parameters={"deterministic": True},
                )
                return result.as_numpy("actions")

            return await asyncio.gather(*(one(binary) for binary in (True, False, True, False)))
        finally:
            await triton.close()

    expected = act_actions(client, obs, deterministic=True)
    for actions in asyncio.run(main()):
        np.testing.assert_allclose(actions, expected, atol=1e-6)


@pytest.mark.parametrize("content_type", [None, "application/json", "application/octet-stream", "text/plain"])
def test_v2_json_body_whatever_the_content_type(server, content_type):
    obs = np.zeros((N_AGENTS, OBS_DIM), np.float32)
    body = orjson.dumps(
        {
            "inputs": [
                {"name": "obs", "shape": list(obs.shape), "datatype": "FP32", "data": obs.ravel().tolist()}
            ]
        }
    )
    headers = {**HEADERS, **({"Content-Type": content_type} if content_type else {})}
    answer = httpx.post(f"{server.url}/v2/models/synthetic/infer", content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["shape"] == [N_AGENTS, ACT_DIM]


def test_binary_extension_by_hand(server):
    """The wire format itself: JSON header, then float32 bytes; the answer likewise, with its header length."""
    obs = np.random.default_rng(1).normal(0, 1, (2, N_AGENTS, OBS_DIM)).astype(np.float32)
    header = orjson.dumps(
        {
            "parameters": {"deterministic": True, "binary_data_output": True},
            "inputs": [
                {
                    "name": "obs",
                    "shape": [2, N_AGENTS, OBS_DIM],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": obs.nbytes},
                }
            ],
        }
    )
    headers = {
        **HEADERS,
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }
    answer = httpx.post(
        f"{server.url}/v2/models/synthetic/infer", content=header + obs.tobytes(), headers=headers
    )
    assert answer.status_code == 200, answer.text
    length = int(answer.headers["inference-header-content-length"])
    meta = orjson.loads(answer.content[:length])
    assert meta["outputs"][0]["parameters"]["binary_data_size"] == 2 * N_AGENTS * ACT_DIM * 4
    actions = np.frombuffer(answer.content[length:], "<f4").reshape(2, N_AGENTS, ACT_DIM)
    with httpx.Client(base_url=server.url, headers=dict(HEADERS)) as client:
        np.testing.assert_allclose(actions, act_actions(client, obs, deterministic=True), atol=1e-6)
    short = httpx.post(
        f"{server.url}/v2/models/synthetic/infer", content=header + obs.tobytes()[:-4], headers=headers
    )
    assert short.status_code == 400 and short.json()["field"] == "body"
    bad_length = httpx.post(
        f"{server.url}/v2/models/synthetic/infer",
        content=header + obs.tobytes(),
        headers={**headers, "Inference-Header-Content-Length": "x"},
    )
    assert bad_length.status_code == 400 and bad_length.json()["field"] == "Inference-Header-Content-Length"

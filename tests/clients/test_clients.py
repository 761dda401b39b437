"""Clients against a real server: JSON, binary and WebSocket answer the same actions as the numpy
reference of the model, and a full queue (503) is retried until it succeeds."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from clients.client import AsyncOm2pClient, Om2pClient, Om2pError, RetryPolicy
from clients.websocket import WebSocketPolicyClient
from server.process import run_server
from server.synthetic import reference_policy

RNG = np.random.default_rng(7)
OBS = RNG.normal(size=(4, 3, 18)).astype(np.float32)


def _expected(model: Path, obs: np.ndarray) -> np.ndarray:
    noise = np.zeros((*obs.shape[:-1], 5), np.float32)
    return reference_policy(model)(obs, noise)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_act_matches_reference(server_url: str, synthetic_model: Path, binary: bool) -> None:
    with Om2pClient(server_url, binary=binary) as client:
        batched = client.act(OBS, deterministic=True, request_id="r-1")
        single = client.act(OBS[0], deterministic=True)
    assert batched.actions.shape == (4, 3, 5) and single.actions.shape == (3, 5)
    np.testing.assert_allclose(batched.actions, _expected(synthetic_model, OBS), atol=1e-4)
    np.testing.assert_allclose(single.actions, batched.actions[0], atol=1e-5)
    assert batched.model == "synthetic" and batched.version == 1 and batched.request_id == "r-1"
    assert batched.compute_us is not None and batched.attempts == 1


def test_sampled_actions_follow_the_seed(server_url: str) -> None:
    with Om2pClient(server_url, binary=True) as client:
        first, again = (client.act(OBS, seed=11).actions for _ in range(2))
        other = client.act(OBS, seed=12).actions
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_websocket_matches_http(server_url: str, synthetic_model: Path) -> None:
    with WebSocketPolicyClient(server_url) as ws:
        answers = [ws.act(OBS[index], deterministic=True).actions for index in range(len(OBS))]
        with pytest.raises(Om2pError, match="observations"):
            ws.act(np.zeros((3, 7)))  # wrong obs_dim: an error message, and the socket stays usable
        again = ws.act(OBS[0], deterministic=True).actions
    np.testing.assert_allclose(np.stack(answers), _expected(synthetic_model, OBS), atol=1e-4)
    np.testing.assert_array_equal(again, answers[0])


def test_invalid_request_raises_with_field(server_url: str) -> None:
    with Om2pClient(server_url) as client, pytest.raises(Om2pError) as error:
        client.act(np.zeros((3, 7)))
    assert error.value.status in (400, 422) and error.value.field is not None


def test_connection_error_is_retried_then_reported() -> None:
    from server.process import free_port

    retry = RetryPolicy(attempts=3, backoff_s=0.01)
    with Om2pClient(f"http://127.0.0.1:{free_port()}", retry=retry) as client, pytest.raises(Om2pError):
        client.act(OBS[0])


def test_full_queue_503_is_retried(synthetic_model: Path) -> None:
    # Room for 4 rows and a long batching delay: while one 3-row request waits for its batch to fill,
    # every other 3-row request finds the queue full and gets 503 + Retry-After.
    async def burst(attempts: int) -> list[object]:
        retry = RetryPolicy(attempts=attempts, backoff_s=0.05, max_backoff_s=0.5)
        async with AsyncOm2pClient(url, binary=True, retry=retry) as client:
            calls = [client.act(OBS[:3], deterministic=True) for _ in range(4)]
            return await asyncio.gather(*calls, return_exceptions=True)

    with run_server(synthetic_model, max_batch_rows=4, max_queue_rows=4, max_delay_us=300_000) as url:
        without_retry = asyncio.run(burst(attempts=1))
        with_retry = asyncio.run(burst(attempts=30))
    rejected = [r for r in without_retry if isinstance(r, Om2pError)]
    assert rejected and all(r.status == 503 for r in rejected)
    assert not [r for r in with_retry if isinstance(r, BaseException)]
    assert max(r.attempts for r in with_retry) > 1  # type: ignore[union-attr]

"""A real `om2p serve` (uvicorn on loopback) on synthetic policies, shared by the server tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from server.process import ServerProcess
from server.synthetic import write_synthetic_repository

API_KEY = "test-key"
N_AGENTS, OBS_DIM, ACT_DIM = 3, 18, 5


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`<root>/synthetic/1`: a 2x64 actor, 3 agents, the last action entry of agent 2 masked."""
    mask = [[True] * ACT_DIM, [True] * ACT_DIM, [True] * (ACT_DIM - 1) + [False]]
    root = tmp_path_factory.mktemp("models")
    write_synthetic_repository(root, hidden=(64, 64), action_mask=mask)
    return root / "synthetic"


@pytest.fixture(scope="module")
def server(model_repository: Path) -> Iterator[ServerProcess]:
    """The API-key-protected server most tests talk to (batches close after at most 2 ms)."""
    process = ServerProcess(
        model_repository, api_key=API_KEY, max_delay_us=2000, max_batch_rows=64, max_body_bytes=262144
    )
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers={"X-API-Key": API_KEY}, timeout=10) as http:
        yield http

"""One real synthetic policy (cooperative_navigation's dims: 3 agents, obs 18, act 5) served by a real
`om2p serve` on loopback for the whole module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from server.process import run_server
from server.synthetic import write_synthetic_repository


@pytest.fixture(scope="session")
def synthetic_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_repository(tmp_path_factory.mktemp("models"), hidden=(64, 64), seed=3)


@pytest.fixture(scope="session")
def server_url(synthetic_model: Path) -> Iterator[str]:
    with run_server(synthetic_model, max_delay_us=200) as url:
        yield url

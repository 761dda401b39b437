"""`compile_update`: OM2P's losses through torch.compile (inductor on the CPU) give the eager step's numbers,
and without a C++ compiler the trainer warns once and runs eagerly."""

from __future__ import annotations

import pytest
import torch

from training import acceleration
from training.algos.base import Batch
from training.algos.om2p import OM2P
from training.config import TrainConfig
from training.envs import env_spec


def _om2p(compile_update: bool) -> OM2P:
    spec = env_spec("cooperative_navigation")
    config = TrainConfig(
        actor_hidden=[16], critic_hidden=[16], bf16_autocast=False, compile_update=compile_update
    )
    torch.manual_seed(0)
    return OM2P(
        spec, config, torch.zeros(spec.n_agents, spec.obs_dim), torch.ones(spec.n_agents, spec.obs_dim)
    )


def _batch() -> Batch:
    g = torch.Generator().manual_seed(1)
    return Batch(
        torch.randn(8, 3, 18, generator=g),
        torch.rand(8, 3, 5, generator=g) * 2 - 1,
        torch.randn(8, 3, generator=g),
        torch.randn(8, 3, 18, generator=g),
        torch.zeros(8, 3),
    )


@pytest.mark.skipif(acceleration.cxx_compiler() is None, reason="no C++ compiler for inductor's CPU backend")
def test_compiled_update_gives_the_eager_losses():
    eager, compiled = _om2p(False), _om2p(True)
    batch = _batch()
    for _ in range(3):
        torch.manual_seed(5)
        expected = eager.update(batch)
        torch.manual_seed(5)
        got = compiled.update(batch)
        for key, value in expected.items():
            torch.testing.assert_close(got[key], value, rtol=1e-4, atol=1e-5)
    for mine, theirs in zip(compiled.parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)


def test_without_a_compiler_the_update_runs_eagerly_with_a_warning(monkeypatch):
    monkeypatch.setattr(acceleration, "cxx_compiler", lambda: None)
    algorithm = _om2p(True)
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler"):
        info = algorithm.update(_batch())
    assert torch.isfinite(info["loss/actor"])
    assert algorithm.losses(torch.device("cpu"))[0] == algorithm.critic_loss

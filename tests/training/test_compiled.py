"""`compile_update`: the losses of OM2P, MA-TD3+BC and OMAR through torch.compile (inductor on the CPU) give
the eager step's numbers, and without a C++ compiler the trainer warns once and runs eagerly."""

from __future__ import annotations

import pytest
import torch

from training import acceleration
from training.algos import get_algorithm
from training.algos.base import Algorithm, Batch
from training.algos.critics import AgentCritics
from training.algos.om2p import OM2P
from training.config import TrainConfig
from training.envs import env_spec


def _algorithm(name: str, compile_update: bool) -> Algorithm:
    spec = env_spec("cooperative_navigation")
    config = TrainConfig(
        algo=name, actor_hidden=[16], critic_hidden=[16], bf16_autocast=False, compile_update=compile_update
    )
    torch.manual_seed(0)
    return get_algorithm(name)(
        spec, config, torch.zeros(spec.n_agents, spec.obs_dim), torch.ones(spec.n_agents, spec.obs_dim)
    )


def _om2p(compile_update: bool) -> OM2P:
    algorithm = _algorithm("om2p", compile_update)
    assert isinstance(algorithm, OM2P)
    return algorithm


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
@pytest.mark.parametrize("name", ["om2p", "matd3bc", "omar"])
def test_compiled_update_gives_the_eager_losses(name):
    eager, compiled = _algorithm(name, False), _algorithm(name, True)
    batch = _batch()
    # MA-TD3+BC and OMAR draw inside their losses (smoothing noise, CQL actions, the search's samples):
    # inductor's own generator would draw other numbers, so the compiled losses take eager's draws here.
    with torch._inductor.config.patch(fallback_random=True):
        steps = [_step_pair(eager, compiled, batch) for _ in range(3)]
    for expected, got in steps:
        for key, value in expected.items():
            torch.testing.assert_close(got[key], value, rtol=1e-4, atol=1e-5, msg=key)
    for mine, theirs in zip(compiled.parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)


def _step_pair(eager: Algorithm, compiled: Algorithm, batch: Batch) -> tuple[dict, dict]:
    torch.manual_seed(5)
    expected = eager.update(batch)
    torch.manual_seed(5)
    return expected, compiled.update(batch)


@pytest.mark.parametrize("share_parameters", [False, True])
@pytest.mark.parametrize("centralised", [False, True])
def test_one_critic_member_alone_is_that_member_of_the_ensemble(share_parameters, centralised):
    critics = AgentCritics(3, 7, 2, [16, 16], share_parameters=share_parameters, centralised=centralised)
    obs, actions = torch.randn(3, 5, 7), torch.randn(3, 5, 2, requires_grad=True)
    q = critics(obs, actions)
    for k in range(critics.ensemble):
        torch.testing.assert_close(critics.member(k, obs, actions), q[:, k])
    # Detached weights: the gradient reaches the actions and no weight.
    critics.member(0, obs, actions, detach_weights=True).sum().backward()
    assert actions.grad is not None and actions.grad.abs().sum() > 0
    assert all(p.grad is None for p in critics.parameters())


def test_without_a_compiler_the_update_runs_eagerly_with_a_warning(monkeypatch):
    monkeypatch.setattr(acceleration, "cxx_compiler", lambda: None)
    algorithm = _om2p(True)
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler"):
        info = algorithm.update(_batch())
    assert torch.isfinite(info["loss/actor"])
    assert algorithm.losses(torch.device("cpu"))[0] == algorithm.critic_loss

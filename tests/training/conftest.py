"""Shared fixtures: a small synthetic dataset in the datasets contract's array layout, and tiny configs."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from training.config import TrainConfig
from training.envs import env_spec

ENV = "cooperative_navigation"


@pytest.fixture(scope="session")
def spec():
    return env_spec(ENV)


def synthetic_dataset(transitions: int = 512, seed: int = 0) -> SimpleNamespace:
    """Random joint transitions with the shapes and dtypes of docs/architecture.md section 2."""
    spec = env_spec(ENV)
    rng = np.random.default_rng(seed)
    n, o, a = spec.n_agents, spec.obs_dim, spec.act_dim
    team_reward = rng.normal(size=(transitions, 1)).astype(np.float32)
    return SimpleNamespace(
        observations=rng.normal(size=(transitions, n, o)).astype(np.float32),
        actions=rng.uniform(-1, 1, size=(transitions, n, a)).astype(np.float32),
        rewards=np.repeat(team_reward, n, axis=1),
        next_observations=rng.normal(size=(transitions, n, o)).astype(np.float32),
        dones=np.zeros((transitions, n), dtype=np.float32),
        metadata={"env": ENV, "reference_returns": {"expert": -40.0, "random": -150.0}},
    )


@pytest.fixture
def dataset() -> SimpleNamespace:
    return synthetic_dataset()


def tiny_config(**changes) -> TrainConfig:
    """Small networks and short evaluations: the tests exercise the code paths, not the learning."""
    base = dict(
        env=ENV,
        actor_hidden=[32, 32],
        critic_hidden=[32, 32],
        batch_size=32,
        steps=4,
        eval_every=2,
        eval_episodes=2,
        eval_envs=2,
        log_every=1,
        num_threads=1,
    )
    return TrainConfig.from_dict({**base, **changes})  # `section.name` keys work too: `**{"omar.coef": 0.5}`


def random_batch(spec, batch_size: int = 16, seed: int = 0):
    from training.algos import Batch

    generator = torch.Generator().manual_seed(seed)
    n, o, a = spec.n_agents, spec.obs_dim, spec.act_dim
    return Batch(
        torch.randn(batch_size, n, o, generator=generator),
        torch.rand(batch_size, n, a, generator=generator) * 2 - 1,
        torch.randn(batch_size, n, generator=generator),
        torch.randn(batch_size, n, o, generator=generator),
        torch.zeros(batch_size, n),
    )


@pytest.fixture
def make_config():
    return tiny_config


@pytest.fixture
def make_batch():
    return random_batch


@pytest.fixture
def make_dataset():
    return synthetic_dataset


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks run fastest on one thread; on a shared 2-core machine two threads only contend."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

"""A tiny real MATD3 run and its shipped checkpoints, made once per session (a few seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

ENV = "cooperative_navigation"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    from training.behaviour.matd3 import MATD3Config, train

    run = tmp_path_factory.mktemp("matd3") / "run"
    config = MATD3Config(
        env=ENV, steps=400, seed=3, warmup=100, eval_interval=100, eval_episodes=2, batch_size=32
    )
    train(config, run)
    return run


@pytest.fixture(scope="session")
def checkpoint_root(tiny_run, tmp_path_factory) -> Path:
    from training.behaviour.registry import ship_behaviour

    root = tmp_path_factory.mktemp("checkpoints")
    ship_behaviour(tiny_run, ENV, root, replay_every=1, eval_episodes=4, reference_episodes=6)
    return root


@pytest.fixture(scope="session")
def tiny_dataset(checkpoint_root):
    from training.data.collect import collect

    return collect(ENV, "expert", 100, seed=1, n_envs=4, checkpoints_root=checkpoint_root, progress=False)

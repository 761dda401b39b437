"""Many seeded episodes at once: policies are called on a `[n_envs, n_agents, obs_dim]` batch per step."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from training.envs.base import MultiAgentEnv
from training.envs.registry import make_env

BatchPolicy = Callable[[np.ndarray], np.ndarray]
"""Maps observations `[n_envs, n_agents, obs_dim]` to actions `[n_envs, n_agents, act_dim]` in [-1, 1]."""


class VectorEnv:
    """`n_envs` copies of one benchmark stepped in lockstep (in-process: the simulators are cheap, and the
    win is one batched policy call per step instead of one per environment)."""

    def __init__(self, name: str, n_envs: int, make: Callable[[], MultiAgentEnv] | None = None) -> None:
        if n_envs < 1:
            raise ValueError(f"n_envs must be at least 1, got {n_envs}")
        self.envs = [make() if make else make_env(name) for _ in range(n_envs)]
        self.spec = self.envs[0].spec

    def reset(self, seeds: Sequence[int]) -> np.ndarray:
        if len(seeds) != len(self.envs):
            raise ValueError(f"need one seed per environment ({len(self.envs)}), got {len(seeds)}")
        return np.stack([env.reset(seed=int(seed)) for env, seed in zip(self.envs, seeds, strict=True)])

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        results = [env.step(action) for env, action in zip(self.envs, actions, strict=True)]
        return (
            np.stack([r.observations for r in results]),
            np.array([r.reward for r in results], dtype=np.float32),
            np.array([r.done for r in results]),
            [r.info for r in results],
        )

    def close(self) -> None:
        for env in self.envs:
            env.close()


@dataclass
class RolloutResult:
    returns: np.ndarray
    lengths: np.ndarray

    @property
    def mean_return(self) -> float:
        return float(np.mean(self.returns))


def evaluate_policy(
    name: str,
    policy: BatchPolicy,
    seeds: Sequence[int],
    n_envs: int = 10,
    make: Callable[[], MultiAgentEnv] | None = None,
) -> RolloutResult:
    """Run one episode per seed with `policy` and return the team returns, in seed order.

    Every environment of a benchmark has a fixed episode length, so the episodes of a chunk end together.
    """
    returns, lengths = [], []
    vector = VectorEnv(name, min(n_envs, len(seeds)), make)
    try:
        for start in range(0, len(seeds), len(vector.envs)):
            chunk = list(seeds[start : start + len(vector.envs)])
            active = vector.envs[: len(chunk)]
            observations = np.stack([env.reset(seed=s) for env, s in zip(active, chunk, strict=True)])
            episode_return = np.zeros(len(chunk))
            episode_length = np.zeros(len(chunk), dtype=np.int64)
            running = np.ones(len(chunk), dtype=bool)
            while running.any():
                actions = np.asarray(policy(observations), dtype=np.float32)
                for index in np.flatnonzero(running):
                    result = active[index].step(actions[index])
                    observations[index] = result.observations
                    episode_return[index] += result.reward
                    episode_length[index] += 1
                    running[index] = not result.done
            returns.extend(episode_return)
            lengths.extend(episode_length)
    finally:
        vector.close()
    return RolloutResult(np.asarray(returns, dtype=np.float64), np.asarray(lengths))


def random_policy(spec, seed: int = 0) -> BatchPolicy:
    """Uniform actions in [-1, 1], seeded: the baseline of the demo and of the `random` dataset check."""
    rng = np.random.default_rng(seed)

    def act(observations: np.ndarray) -> np.ndarray:
        return rng.uniform(-1.0, 1.0, size=(observations.shape[0], spec.n_agents, spec.act_dim)).astype(
            np.float32
        )

    return act

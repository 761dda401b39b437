"""Multi-Agent Particle environments (PettingZoo `mpe2`) with continuous actions."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from training.envs.base import MultiAgentEnv
from training.envs.opponents import OpponentPolicy
from training.envs.spec import EnvSpec

MPE_EPISODE_LENGTH = 25
FORCE_DIM = 2


def force_to_mpe2(force: np.ndarray) -> np.ndarray:
    """2-D forces `[..., 2]` in [-1, 1] -> mpe2's 5-D continuous actions in [0, 1].

    mpe2 moves an agent by (a[2] - a[1], a[4] - a[3]) and ignores a[0] (no-op); the original particle
    environments (and the MADDPG and OMAR code) take the 2-D force itself. Each signed component goes to
    the one entry of its pair that pushes that way, so the mapping is exact and its inverse is
    `mpe2_to_force`."""
    force = np.asarray(force, dtype=np.float32)
    positive, negative = np.maximum(force, 0.0), np.maximum(-force, 0.0)
    zero = np.zeros_like(force[..., :1])
    return np.concatenate(
        [zero, negative[..., :1], positive[..., :1], negative[..., 1:], positive[..., 1:]], axis=-1
    )


def mpe2_to_force(actions: np.ndarray) -> np.ndarray:
    """mpe2's 5-D continuous actions `[..., 5]` in [0, 1] -> the 2-D force they apply, in [-1, 1]."""
    actions = np.asarray(actions, dtype=np.float32)
    return np.stack([actions[..., 2] - actions[..., 1], actions[..., 4] - actions[..., 3]], axis=-1)


class MPEEnv(MultiAgentEnv):
    """An mpe2 parallel environment in which `learners` act through this interface and the others are
    driven by a fixed `opponent` policy. The team reward is the mean of the learners' rewards.

    `force_actions`: the learners act with 2-D forces (`force_to_mpe2`) instead of mpe2's 5-D actions, of
    which three directions move nothing (the no-op entry and each pair's common part)."""

    def __init__(
        self,
        name: str,
        make_parallel_env: Callable,
        learners: tuple[str, ...],
        opponent: OpponentPolicy | None = None,
        force_actions: bool = False,
    ) -> None:
        super().__init__()
        self._env = make_parallel_env(continuous_actions=True, max_cycles=MPE_EPISODE_LENGTH)
        self._env.reset(seed=0)
        self._learners = learners
        self._opponents = tuple(agent for agent in self._env.possible_agents if agent not in learners)
        if self._opponents and opponent is None:
            raise ValueError(f"{name}: agents {self._opponents} need an opponent policy")
        self._opponent = opponent
        self._force_actions = force_actions
        self._last_observations: dict[str, np.ndarray] = {}
        spaces = [self._env.action_space(agent) for agent in learners]
        lows = [tuple(float(x) for x in space.low) for space in spaces]
        highs = [tuple(float(x) for x in space.high) for space in spaces]
        if force_actions:
            lows, highs = [(-1.0,) * FORCE_DIM] * len(learners), [(1.0,) * FORCE_DIM] * len(learners)
        self.spec = EnvSpec(
            name=name,
            agents=learners,
            obs_dims=tuple(int(self._env.observation_space(agent).shape[0]) for agent in learners),
            act_dims=tuple(len(low) for low in lows),
            native_low=tuple(lows),
            native_high=tuple(highs),
            episode_length=MPE_EPISODE_LENGTH,
            backend="mpe2",
            opponents=self._opponents,
        )

    @property
    def world(self):
        """The particle world, for scripted policies and rendering."""
        return self._env.unwrapped.world

    def _reset(self, seed: int | None) -> list[np.ndarray]:
        observations, _ = self._env.reset(seed=seed)
        if self._opponent is not None:
            self._opponent.reset(seed)
        self._last_observations = observations
        return [np.asarray(observations[agent], dtype=np.float32) for agent in self._learners]

    def _step(self, native_actions: list[np.ndarray]) -> tuple[list[np.ndarray], float, bool, dict]:
        if self._force_actions:
            native_actions = [force_to_mpe2(force) for force in native_actions]
        joint = dict(zip(self._learners, native_actions, strict=True))
        if self._opponents:
            opponent_obs = {agent: self._last_observations[agent] for agent in self._opponents}
            joint.update(self._opponent.act(opponent_obs, self.world))
        observations, rewards, terminations, _, _ = self._env.step(joint)
        self._last_observations = observations
        reward = float(np.mean([rewards[agent] for agent in self._learners]))
        terminated = any(terminations.get(agent, False) for agent in self._learners)
        return (
            [np.asarray(observations[agent], dtype=np.float32) for agent in self._learners],
            reward,
            terminated,
            {"agent_rewards": [float(rewards[agent]) for agent in self._learners]},
        )

    def close(self) -> None:
        self._env.close()

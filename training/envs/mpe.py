"""Multi-Agent Particle environments (PettingZoo `mpe2`) with continuous actions."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from training.envs.base import MultiAgentEnv
from training.envs.opponents import OpponentPolicy
from training.envs.spec import EnvSpec

MPE_EPISODE_LENGTH = 25


class MPEEnv(MultiAgentEnv):
    """An mpe2 parallel environment in which `learners` act through this interface and the others are
    driven by a fixed `opponent` policy. The team reward is the mean of the learners' rewards."""

    def __init__(
        self,
        name: str,
        make_parallel_env: Callable,
        learners: tuple[str, ...],
        opponent: OpponentPolicy | None = None,
    ) -> None:
        super().__init__()
        self._env = make_parallel_env(continuous_actions=True, max_cycles=MPE_EPISODE_LENGTH)
        self._env.reset(seed=0)
        self._learners = learners
        self._opponents = tuple(agent for agent in self._env.possible_agents if agent not in learners)
        if self._opponents and opponent is None:
            raise ValueError(f"{name}: agents {self._opponents} need an opponent policy")
        self._opponent = opponent
        self._last_observations: dict[str, np.ndarray] = {}
        spaces = [self._env.action_space(agent) for agent in learners]
        self.spec = EnvSpec(
            name=name,
            agents=learners,
            obs_dims=tuple(int(self._env.observation_space(agent).shape[0]) for agent in learners),
            act_dims=tuple(int(space.shape[0]) for space in spaces),
            native_low=tuple(tuple(float(x) for x in space.low) for space in spaces),
            native_high=tuple(tuple(float(x) for x in space.high) for space in spaces),
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

"""Multi-Agent MuJoCo (gymnasium-robotics `mamujoco_v1`)."""

from __future__ import annotations

import contextlib
import functools
import io
import warnings

import numpy as np

from training.envs.base import MultiAgentEnv
from training.envs.spec import EnvSpec

MAMUJOCO_EPISODE_LENGTH = 1000


class MuJoCoWarning(UserWarning):
    """A warning of the MuJoCo engine (e.g. a deprecated attribute in a bundled robot model)."""


@functools.cache
def _route_mujoco_warnings() -> None:
    """MuJoCo prints each engine warning on every model compile and appends it to MUJOCO_LOG.TXT in the
    working directory; as a Python warning it is shown once and leaves no file behind."""
    import mujoco

    mujoco.set_mju_user_warning(lambda message: warnings.warn(message, MuJoCoWarning, stacklevel=2))


class MaMuJoCoEnv(MultiAgentEnv):
    """A factorised MuJoCo robot; all agents learn and share the robot's reward."""

    def __init__(self, name: str, scenario: str, agent_conf: str, agent_obsk: int = 1) -> None:
        super().__init__()
        _route_mujoco_warnings()
        # gymnasium-robotics prints a notice about Adroit environments on import; it does not concern us.
        with contextlib.redirect_stderr(io.StringIO()):
            from gymnasium_robotics import mamujoco_v1

        self._env = mamujoco_v1.parallel_env(scenario, agent_conf, agent_obsk=agent_obsk)
        self._agents = tuple(self._env.possible_agents)
        spaces = [self._env.action_space(agent) for agent in self._agents]
        self.spec = EnvSpec(
            name=name,
            agents=self._agents,
            obs_dims=tuple(int(self._env.observation_space(agent).shape[0]) for agent in self._agents),
            act_dims=tuple(int(space.shape[0]) for space in spaces),
            native_low=tuple(tuple(float(x) for x in space.low) for space in spaces),
            native_high=tuple(tuple(float(x) for x in space.high) for space in spaces),
            episode_length=MAMUJOCO_EPISODE_LENGTH,
            backend="gymnasium-robotics",
        )

    def _reset(self, seed: int | None) -> list[np.ndarray]:
        observations, _ = self._env.reset(seed=seed)
        return [np.asarray(observations[agent], dtype=np.float32) for agent in self._agents]

    def _step(self, native_actions: list[np.ndarray]) -> tuple[list[np.ndarray], float, bool, dict]:
        joint = dict(zip(self._agents, native_actions, strict=True))
        observations, rewards, terminations, _, _ = self._env.step(joint)
        terminated = any(terminations.values())
        if not observations:  # the wrapper empties its agents at the end of an episode
            observations = {
                agent: np.zeros(self._env.observation_space(agent).shape) for agent in self._agents
            }
        return (
            [np.asarray(observations[agent], dtype=np.float32) for agent in self._agents],
            float(rewards[self._agents[0]]),
            terminated,
            {},
        )

    def close(self) -> None:
        self._env.close()

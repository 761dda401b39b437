"""One interface for every benchmark: `[n_agents, obs_dim]` observations in, `[n_agents, act_dim]` actions in [-1, 1]."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from training.envs.actions import to_native, validate_actions
from training.envs.spec import EnvSpec


@dataclass
class StepResult:
    """One environment step. `reward` is the team reward shared by the learning agents."""

    observations: np.ndarray
    reward: float
    done: bool
    info: dict = field(default_factory=dict)

    def __iter__(self):
        # Unpacks as `obs, reward, done, info = env.step(actions)`.
        return iter((self.observations, self.reward, self.done, self.info))


class MultiAgentEnv(ABC):
    """A cooperative multi-agent environment with padded, float32 array observations.

    Subclasses implement `_reset` and `_step` on native per-agent lists; validation, padding and the
    action mapping live here so every benchmark behaves the same way.
    """

    spec: EnvSpec

    def __init__(self) -> None:
        self._steps = 0
        self._needs_reset = True

    def reset(self, seed: int | None = None) -> np.ndarray:
        observations = self._reset(seed)
        self._steps = 0
        self._needs_reset = False
        return self._pad_observations(observations)

    def step(self, actions: np.ndarray) -> StepResult:
        if self._needs_reset:
            raise RuntimeError(f"{self.spec.name}: call reset() before step()")
        valid = validate_actions(self.spec, actions)
        observations, reward, terminated, info = self._step(to_native(self.spec, valid))
        self._steps += 1
        truncated = self._steps >= self.spec.episode_length
        done = bool(terminated or truncated)
        self._needs_reset = done
        info = {**info, "terminated": bool(terminated), "truncated": bool(truncated and not terminated)}
        return StepResult(self._pad_observations(observations), float(reward), done, info)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release native resources."""

    def __enter__(self) -> MultiAgentEnv:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _pad_observations(self, observations: list[np.ndarray]) -> np.ndarray:
        padded = np.zeros((self.spec.n_agents, self.spec.obs_dim), dtype=np.float32)
        for index, observation in enumerate(observations):
            padded[index, : observation.shape[0]] = observation
        return padded

    @abstractmethod
    def _reset(self, seed: int | None) -> list[np.ndarray]:
        """Reset the native environment; return one unpadded observation per learning agent."""

    @abstractmethod
    def _step(self, native_actions: list[np.ndarray]) -> tuple[list[np.ndarray], float, bool, dict]:
        """Step with native per-agent actions; return observations, team reward, terminated, info."""

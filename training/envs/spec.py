"""The static description of a multi-agent environment: one source of truth for names and dims."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass(frozen=True)
class EnvSpec:
    """What a learner, a dataset, a checkpoint and an exported model agree on about an environment.

    Actions are exposed in [-1, 1]^act_dim for every agent; `native_low`/`native_high` are the bounds of the
    underlying environment's action space, per agent and padded entry (padding is 0 and masked out).
    """

    name: str
    agents: tuple[str, ...]
    obs_dims: tuple[int, ...]
    act_dims: tuple[int, ...]
    native_low: tuple[tuple[float, ...], ...]
    native_high: tuple[tuple[float, ...], ...]
    episode_length: int
    backend: str
    opponents: tuple[str, ...] = field(default_factory=tuple)

    @property
    def n_agents(self) -> int:
        return len(self.agents)

    @property
    def obs_dim(self) -> int:
        return max(self.obs_dims)

    @property
    def act_dim(self) -> int:
        return max(self.act_dims)

    @property
    def padded(self) -> bool:
        return len(set(self.obs_dims)) > 1 or len(set(self.act_dims)) > 1

    @property
    def obs_mask(self) -> np.ndarray:
        """`[n_agents, obs_dim]` bool: True where an observation entry is real, False where it is padding."""
        return np.arange(self.obs_dim)[None, :] < np.asarray(self.obs_dims)[:, None]

    @property
    def action_mask(self) -> np.ndarray:
        """`[n_agents, act_dim]` bool: True where an action entry reaches the environment."""
        return np.arange(self.act_dim)[None, :] < np.asarray(self.act_dims)[:, None]

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(
            n_agents=self.n_agents,
            obs_dim=self.obs_dim,
            act_dim=self.act_dim,
            padded=self.padded,
            action_mask=self.action_mask.tolist(),
            obs_mask=self.obs_mask.tolist(),
        )
        return data

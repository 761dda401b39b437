"""The algorithm interface shared by OM2P and the baselines (see `training/algos/__init__.py`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import nn

from training.acceleration import maybe_compile
from training.config import TrainConfig
from training.envs.spec import EnvSpec
from training.networks import agent_major
from training.policy import PolicyModule


@dataclass
class Batch:
    """Joint transitions, batch-major as in the dataset: `observations [B, N, obs_dim]` (raw, not
    normalised), `actions [B, N, act_dim]` in [-1, 1], `rewards`/`dones` `[B, N]`."""

    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_observations: torch.Tensor
    dones: torch.Tensor


class AgentBatch(NamedTuple):
    """A `Batch` as every update consumes it: agent-major `[N, B, *]`, observations normalised with the
    policy's statistics, and the action mask `[N, 1, A]` that zeroes padded action entries."""

    obs: torch.Tensor
    next_obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    dones: torch.Tensor
    mask: torch.Tensor


class Algorithm(nn.Module, ABC):
    """One offline multi-agent learner. Everything it learns is a submodule (saved in `weights.safetensors`);
    the deployable part is `self.policy`, a `PolicyModule` whose state-dict keys start with `policy.`."""

    name: ClassVar[str]
    """The value of `--algo` and of `algo` in checkpoint.json."""

    supports_cuda_graphs: ClassVar[bool] = False
    """Whether `update` can be captured once and replayed as a CUDA graph (`training/cuda_graphs.py`): no
    host synchronisation and no Python-side state that changes between steps."""

    policy: PolicyModule

    def __init__(self, spec: EnvSpec, config: TrainConfig, obs_mean: torch.Tensor, obs_std: torch.Tensor):
        super().__init__()
        self.spec, self.config = spec, config
        self._optimizers: dict[str, torch.optim.Optimizer] | None = None
        self._losses: tuple[Callable, Callable] | None = None

    def losses(self, device: torch.device) -> tuple[Callable, Callable]:
        """`(critic_loss, actor_loss)` of an algorithm that defines both, compiled on the CPU when
        `compile_update` is set (on CUDA the trainer replays the whole step as a CUDA graph instead)."""
        if self._losses is None:
            enabled = self.config.compile_update and device.type == "cpu"
            self._losses = (
                maybe_compile(self.critic_loss, enabled, "critic_loss"),  # type: ignore[attr-defined]
                maybe_compile(self.actor_loss, enabled, "actor_loss"),  # type: ignore[attr-defined]
            )
        return self._losses

    @classmethod
    @abstractmethod
    def build_policy(
        cls, spec: EnvSpec, config: TrainConfig, obs_mean: torch.Tensor, obs_std: torch.Tensor
    ) -> PolicyModule:
        """The policy with freshly initialised weights; `load_policy` rebuilds it from checkpoint.json alone
        and then loads the `policy.*` weights into it."""

    @abstractmethod
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Named optimizers, saved in `optimizer.safetensors` for `--resume`."""

    @abstractmethod
    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One gradient step on every network; returns detached scalar tensors to log (no host sync)."""

    def evaluations_per_action(self) -> int:
        """Network evaluations per served action (1 for one-step OM2P, K for K-step samplers)."""
        return 1

    def agent_major_batch(self, batch: Batch) -> AgentBatch:
        return AgentBatch(
            agent_major(self.policy.normalise(batch.observations)),
            agent_major(self.policy.normalise(batch.next_observations)),
            agent_major(batch.actions),
            batch.rewards.transpose(0, 1),
            batch.dones.transpose(0, 1),
            self.policy.action_mask.unsqueeze(1),
        )

    def lazy_adam(self, **groups: tuple[nn.Module, float]) -> dict[str, torch.optim.Optimizer]:
        """One fused Adam per named `(module, learning rate)`, built on first use: after the trainer has moved
        the module to its device, which fused Adam needs."""
        if self._optimizers is None:
            self._optimizers = {
                name: torch.optim.Adam(module.parameters(), lr=lr, fused=True)
                for name, (module, lr) in groups.items()
            }
        return self._optimizers

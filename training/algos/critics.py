"""Agent-batched critics: per agent an ensemble of Q MLPs with LayerNorm, all `N x E` of them evaluated in
one batched matmul per layer; TD targets and Polyak averaging of the target networks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from training.networks import GroupedMLP

if TYPE_CHECKING:
    from training.config import TrainConfig
    from training.envs.spec import EnvSpec


class AgentCritics(nn.Module):
    """`Q_i^k(o_i, a_i)` for agents i and ensemble members k: `[N, B, *] -> [N, E, B]`.

    `centralised`: every agent's critics see the joint observation and joint action `(o, a)`.
    `share_parameters`: one ensemble for all agents, with a one-hot agent id appended to the input.
    """

    def __init__(
        self,
        n_agents: int,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int],
        activation: str = "gelu",
        ensemble: int = 2,
        share_parameters: bool = False,
        centralised: bool = False,
    ) -> None:
        super().__init__()
        self.n_agents, self.ensemble = n_agents, ensemble
        self.share_parameters, self.centralised = share_parameters, centralised
        per_agent = obs_dim + act_dim
        in_features = (n_agents * per_agent if centralised else per_agent) + (
            n_agents if share_parameters else 0
        )
        groups = ensemble if share_parameters else n_agents * ensemble
        self.net = GroupedMLP(groups, in_features, tuple(hidden), 1, activation, layer_norm=True)
        if share_parameters:
            self.register_buffer("agent_ids", torch.eye(n_agents).unsqueeze(1), persistent=False)

    @classmethod
    def for_config(cls, spec: EnvSpec, config: TrainConfig) -> AgentCritics:
        """The twin critics every Q-supervised algorithm trains, sized and shaped by the run's config."""
        return cls(
            spec.n_agents,
            spec.obs_dim,
            spec.act_dim,
            config.critic_hidden,
            config.activation,
            share_parameters=config.share_parameters,
            centralised=config.centralised_critic,
        )

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """`obs [N, B, obs_dim]`, `actions [N, B, act_dim]` (agent-major) -> `Q [N, E, B]`."""
        x, n, b, e = self._inputs(obs, actions)
        if self.share_parameters:
            q = self.net(x.expand(e, -1, -1).contiguous())  # [E, N*B, 1]
            return q.reshape(e, n, b).transpose(0, 1)
        x = x.unsqueeze(1).expand(n, e, b, x.shape[-1]).reshape(n * e, b, -1)
        return self.net(x).reshape(n, e, b)

    def member(
        self, k: int, obs: torch.Tensor, actions: torch.Tensor, detach_weights: bool = False
    ) -> torch.Tensor:
        """`Q_i^k [N, B]` of ensemble member `k` alone, at 1/E of `forward`'s cost (TD3's actor terms and
        OMAR's search read Q^1 only). `detach_weights`: the weights enter as constants, so gradients reach
        the inputs only (an actor term; unlike toggling `requires_grad`, this compiles)."""
        x, n, b, e = self._inputs(obs, actions)
        groups = slice(k, k + 1) if self.share_parameters else slice(k, None, e)  # agent-major groups
        if not detach_weights:
            return self.net(x, groups).reshape(n, b)
        weights = {name: p.detach() for name, p in self.net.named_parameters()}
        return torch.func.functional_call(self.net, weights, (x, groups)).reshape(n, b)

    def _inputs(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, int, int, int]:
        """The network's rows: `[N, B, in]`, or `[1, N*B, in]` with shared parameters."""
        x = torch.cat([obs, actions], dim=-1)
        n, b = x.shape[0], x.shape[1]
        if self.centralised:
            x = x.transpose(0, 1).reshape(1, b, -1).expand(n, b, -1)
        if self.share_parameters:
            x = torch.cat([x, self.agent_ids.expand(n, b, n)], dim=-1).reshape(1, n * b, -1)
        return x, n, b, self.ensemble


def td_target(
    rewards: torch.Tensor, dones: torch.Tensor, next_q: torch.Tensor, gamma: float, aggregate: str = "mean"
) -> torch.Tensor:
    """`r + gamma (1 - done) agg_k Q_target^k(o', a')`; rewards/dones `[N, B]`, next_q `[N, E, B]`."""
    combined = next_q.min(dim=1).values if aggregate == "min" else next_q.mean(dim=1)
    return rewards + gamma * (1.0 - dones) * combined


def critic_loss(q: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared TD error of every ensemble member: `q [N, E, B]`, `target [N, B]`."""
    return (q - target.unsqueeze(1)).square().mean()


def normalised_q_loss(q: torch.Tensor) -> torch.Tensor:
    """`-mean Q / stopgrad(mean |Q|)` per agent, averaged over agents: the scale-free reward term of the
    actor loss (FQL/OM2P). `q [N, B]` (ensemble already combined)."""
    scale = q.detach().abs().mean(dim=1).clamp_min(1e-6)
    return (-q.mean(dim=1) / scale).mean()


@torch.no_grad()
def polyak_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """target <- (1 - tau) target + tau online, for all parameters in one fused call."""
    target_params = list(target.parameters())
    online_params = list(online.parameters())
    torch._foreach_lerp_(target_params, online_params, tau)

"""MA-TD3+BC: TD3+BC (Fujimoto & Gu, "A Minimalist Approach to Offline Reinforcement Learning", NeurIPS
2021) applied per agent, the multi-agent baseline of OMAR (Pan et al., ICML 2022), agent-batched.

Per agent i a deterministic actor pi_i(o_i) = tanh(MLP(o_i)) (one network evaluation per action; the
policy's noise input is ignored) and twin LayerNorm critics Q_i^{1,2}(o_i, a_i), with target copies of both.

Critic loss (TD3): TD error against r + gamma (1 - done) min_k Q_target^k(o', a'), where
a' = clip(pi_target(o') + clip(N(0, target_noise^2), -target_noise_clip, target_noise_clip), -1, 1) is the
target-policy smoothing of TD3; the clipped double-Q minimum is TD3's, so `q_aggregate` is not read.
Actor loss (TD3+BC), every `policy_delay` critic updates, together with the Polyak target updates:
  L = -lambda Q^1(o_i, pi(o_i)) + (pi(o_i) - a_i)^2,  lambda = alpha / stopgrad(mean |Q^1|).
The TD3 settings and alpha are the config's `matd3bc` section (`--set matd3bc.alpha=2.5`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from training.algos.base import AgentBatch, Algorithm, Batch
from training.algos.critics import AgentCritics, critic_loss, normalised_q_loss, polyak_update, td_target
from training.config import TD3Config, TrainConfig
from training.envs.spec import EnvSpec
from training.networks import GroupedMLP
from training.policy import PolicyModule

__all__ = ["MATD3BC", "DeterministicActor", "DeterministicSampler", "masked_mse"]


class DeterministicActor(nn.Module):
    """`pi_i(o_i) = tanh(MLP_i(o_i))` of every agent in one batched pass: `[N, B, obs_dim] -> [N, B, act_dim]`.

    Decentralised: agent i's row sees only o_i. With `share_parameters` one MLP serves all agents and a
    one-hot agent id is appended to its input (as in `MeanFlowActor`).
    """

    def __init__(
        self,
        n_agents: int,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int],
        activation: str = "gelu",
        share_parameters: bool = False,
    ) -> None:
        super().__init__()
        self.n_agents, self.act_dim, self.share_parameters = n_agents, act_dim, share_parameters
        in_features = obs_dim + (n_agents if share_parameters else 0)
        groups = 1 if share_parameters else n_agents
        self.net = GroupedMLP(groups, in_features, tuple(hidden), act_dim, activation)
        if share_parameters:
            self.register_buffer("agent_ids", torch.eye(n_agents).unsqueeze(1), persistent=False)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if not self.share_parameters:
            return torch.tanh(self.net(obs))
        n, b = obs.shape[0], obs.shape[1]
        rows = torch.cat([obs, self.agent_ids.expand(n, b, n)], dim=-1).reshape(1, n * b, -1)
        return torch.tanh(self.net(rows)).reshape(n, b, self.act_dim)


class DeterministicSampler(nn.Module):
    """The `PolicyModule` sampler of a deterministic actor: `(obs, noise) -> pi(obs)`.

    The noise is part of the shared policy signature and does not change the action; it enters with weight
    zero because exporters drop unused graph inputs, and the artifact contract has both `obs` and `noise`."""

    def __init__(self, actor: DeterministicActor) -> None:
        super().__init__()
        self.actor = actor

    def forward(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.actor(obs) + 0.0 * noise


def masked_mse(actions: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the real action entries (padding excluded from the count): TD3+BC's
    `F.mse_loss(pi(s), a)` per agent, averaged over agents. `mask [N, 1, A]`."""
    squared = ((actions - targets) * mask).square().sum(dim=(1, 2))
    return (squared / (mask.sum(dim=(1, 2)) * actions.shape[1])).mean()


class MATD3BC(Algorithm):
    """Agent-batched MA-TD3+BC: deterministic actors, twin critics, target actor and critics."""

    name = "matd3bc"

    def __init__(self, spec: EnvSpec, config: TrainConfig, obs_mean: torch.Tensor, obs_std: torch.Tensor):
        super().__init__(spec, config, obs_mean, obs_std)
        self.policy = self.build_policy(spec, config, obs_mean, obs_std)
        self.target_actor = copy.deepcopy(self.actor).requires_grad_(False)
        self.critics = AgentCritics.for_config(spec, config)
        self.target_critics = copy.deepcopy(self.critics).requires_grad_(False)
        # Critic updates so far: decides the delayed actor steps. A Python int (no device sync per step),
        # saved through the module's extra state so that --resume keeps the same schedule.
        self._updates = 0
        self._actor_info: dict[str, torch.Tensor] = {}

    @classmethod
    def build_policy(
        cls, spec: EnvSpec, config: TrainConfig, obs_mean: torch.Tensor, obs_std: torch.Tensor
    ) -> PolicyModule:
        actor = DeterministicActor(
            spec.n_agents,
            spec.obs_dim,
            spec.act_dim,
            config.actor_hidden,
            config.activation,
            share_parameters=config.share_parameters,
        )
        return PolicyModule.for_spec(DeterministicSampler(actor), spec, obs_mean, obs_std)

    @property
    def td3(self) -> TD3Config:
        """This algorithm's config section (OMAR, a subclass, has its own)."""
        return self.config.matd3bc

    @property
    def actor(self) -> DeterministicActor:
        return self.policy.sampler.actor

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self.lazy_adam(
            actor=(self.actor, self.config.actor_lr), critic=(self.critics, self.config.critic_lr)
        )

    def get_extra_state(self) -> torch.Tensor:
        return torch.tensor(self._updates, dtype=torch.int64)

    def set_extra_state(self, state: torch.Tensor) -> None:
        self._updates = int(state)

    # Loss hooks: OMAR (a subclass) adds its regulariser to the critics and replaces the actor loss.

    def critic_regulariser(
        self, obs: torch.Tensor, q_data: torch.Tensor, mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Extra critic loss terms by name (added to the TD loss); none for TD3+BC."""
        return {}

    def actor_loss(
        self, obs: torch.Tensor, x: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """TD3+BC: alpha * (-Q^1 / stopgrad(mean |Q^1|)) + MSE(pi(o), a)."""
        actions = self.actor(obs) * mask
        # Q loss.
        # TD3 differentiates through Q^1 only, and only into the actions.
        q_policy = self.critics.member(0, obs, actions, detach_weights=True)
        loss_q = normalised_q_loss(q_policy)
        # BC loss.
        loss_bc = masked_mse(actions, x, mask)
        return self.config.matd3bc.alpha * loss_q + loss_bc, {"loss/q": loss_q, "loss/bc": loss_bc}

    def clip_gradients(self, name: str) -> None:
        """Hook between backward and the optimizer step of `name` ("critic" or "actor"); none for TD3+BC."""

    def critic_loss(self, batch: AgentBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Clipped double-Q TD loss at the smoothed target-policy action (TD3), plus the regularisers."""
        td3 = self.td3
        obs, next_obs, x, rewards, dones, mask = batch
        with torch.no_grad():
            smoothing = (torch.randn_like(x) * td3.target_noise).clamp(
                -td3.target_noise_clip, td3.target_noise_clip
            )
            next_actions = (self.target_actor(next_obs) + smoothing).clamp(-1.0, 1.0) * mask
            target = td_target(
                rewards, dones, self.target_critics(next_obs, next_actions), self.config.gamma, "min"
            )
        q = self.critics(obs, x)
        loss_td = critic_loss(q, target)
        regularisers = self.critic_regulariser(obs, q, mask)
        # No `sum(..., torch.zeros(()))`: compiled, a loss that adds a fresh constant and is also returned
        # detached comes back without its graph (torch 2.13).
        loss = loss_td
        for term in regularisers.values():
            loss = loss + term
        info = {
            "loss/critic": loss.detach(),
            "loss/td": loss_td.detach(),
            "q/mean": q.detach().mean(),
            **{k: v.detach() for k, v in regularisers.items()},
        }
        return loss, info

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        optimizers = self.optimizers()
        agent_batch = self.agent_major_batch(batch)
        critic_loss_fn, actor_loss_fn = self.losses(agent_batch.obs.device)

        loss_critic, info = critic_loss_fn(agent_batch)
        optimizers["critic"].zero_grad(set_to_none=True)
        loss_critic.backward()
        self.clip_gradients("critic")
        optimizers["critic"].step()

        # Actor and target networks: every `policy_delay` critic updates (TD3's delayed policy updates).
        # Between them the last actor losses are reported again, so every logged row has the same keys.
        if self._updates % self.td3.policy_delay == 0:
            loss_actor, terms = actor_loss_fn(agent_batch.obs, agent_batch.actions, agent_batch.mask)
            optimizers["actor"].zero_grad(set_to_none=True)
            loss_actor.backward()
            self.clip_gradients("actor")
            optimizers["actor"].step()
            polyak_update(self.target_actor, self.actor, self.config.tau)
            polyak_update(self.target_critics, self.critics, self.config.tau)
            self._actor_info = {
                "loss/actor": loss_actor.detach(),
                **{k: v.detach() for k, v in terms.items()},
            }
        self._updates += 1
        return {**info, **self._actor_info}


ALGORITHM = MATD3BC

"""Flow: a K-step flow-matching policy with Q supervision through its sampling chain, agent-batched.

Multi-agent flow Q-learning in the style of MA-FQL (Flow Q-Learning, Park et al., arXiv 2502.02538, whose
"FBRAC" variant backpropagates the Q loss through the flow's Euler steps, as Diffusion-QL does through the
denoising chain; Wang et al., ICLR 2023). Per agent a velocity field v(z, t | o_i) and twin critics.

Conventions as in OM2P: t = 0 is data, t = 1 is noise, z_t = (1 - t) x + t e, v = e - x. The velocity
network is OM2P's `MeanFlowActor` evaluated on the diagonal r = t, where the average velocity over an
interval of length 0 is the instantaneous one. Sampling: K = `flow.steps` Euler steps from z_1 = e,
z_{t - 1/K} = z_t - v(z_t, t) / K, deterministic given the noise (K network evaluations per action).

Actor loss  L = L_BC + alpha * L_Q:
- L_BC = || v(z_t, t | o_i) - (e - x) ||^2, t ~ U[0, 1] (flow matching on the straight path);
- L_Q = -mean Q(o_i, a_i) / stopgrad(mean |Q|), a_i the K-step action, the gradient flowing through all K
  network evaluations of the chain.
Critic loss: TD error against r + gamma (1 - done) agg_k Q_target^k(o', a'), a' the K-step next action.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from training.algos.base import Algorithm, Batch
from training.algos.critics import AgentCritics, critic_loss, normalised_q_loss, polyak_update, td_target
from training.algos.om2p import frozen, masked_mse, path_point
from training.config import TrainConfig
from training.envs.spec import EnvSpec
from training.policy import MeanFlowActor, PolicyModule, constant_like

__all__ = ["FlowQL", "FlowSampler", "KStepQPolicy", "conditional_network"]


def conditional_network(spec: EnvSpec, config: TrainConfig) -> MeanFlowActor:
    """The agent-batched MLP f(o_i, z, time) of the K-step policies: OM2P's actor network, so all
    generative policies share one architecture (`actor_hidden`, `activation`, `share_parameters`)."""
    return MeanFlowActor(
        spec.n_agents,
        spec.obs_dim,
        spec.act_dim,
        config.actor_hidden,
        config.activation,
        share_parameters=config.share_parameters,
    )


class FlowSampler(nn.Module):
    """K Euler steps of the velocity field from noise (t = 1) to an action (t = 0), unrolled (K is a Python
    constant, so the graph traces): `(obs [N, B, obs_dim], noise [N, B, A]) -> [N, B, A]`, unclipped."""

    def __init__(self, net: MeanFlowActor, steps: int) -> None:
        super().__init__()
        self.net, self.steps = net, steps

    def velocity(self, obs: torch.Tensor, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v(z, t | o): the mean-flow network on the diagonal r = t."""
        return self.net(obs, z, t, t)

    def forward(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        z = noise
        for k in range(self.steps, 0, -1):
            z = z - self.velocity(obs, z, constant_like(z, k / self.steps)) / self.steps
        return z

    def evaluations_per_action(self) -> int:
        return self.steps


class KStepQPolicy(Algorithm):
    """Shared machinery of the K-step generative policies with Q supervision through the chain (`flow`,
    `diffusion`): the deployable sampler, twin LayerNorm critics with Polyak targets, and the actor loss
    L_BC + alpha * L_Q. A subclass provides `build_policy` and `bc_loss`."""

    def __init__(self, spec: EnvSpec, config: TrainConfig, obs_mean: torch.Tensor, obs_std: torch.Tensor):
        super().__init__(spec, config, obs_mean, obs_std)
        self.policy = self.build_policy(spec, config, obs_mean, obs_std)
        self.critics = AgentCritics.for_config(spec, config)
        self.target_critics = copy.deepcopy(self.critics).requires_grad_(False)

    @property
    def sampler(self) -> nn.Module:
        return self.policy.sampler

    def evaluations_per_action(self) -> int:
        return self.sampler.evaluations_per_action()

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self.lazy_adam(
            actor=(self.sampler, self.config.actor_lr), critic=(self.critics, self.config.critic_lr)
        )

    def bc_loss(self, obs: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The generative model's behaviour-cloning loss on dataset actions `x [N, B, A]`."""
        raise NotImplementedError

    def act(self, obs: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The K-step action exactly as `PolicyModule` serves it (agent-major): clipped, padding zeroed."""
        return self.sampler(obs, noise * mask).clamp(-1.0, 1.0) * mask

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        config = self.config
        optimizers = self.optimizers()
        obs, next_obs, x, rewards, dones, mask = self.agent_major_batch(batch)

        # Critics: TD regression toward the target critics at the K-step next action.
        with torch.no_grad():
            next_actions = self.act(next_obs, torch.randn_like(x), mask)
            target = td_target(
                rewards, dones, self.target_critics(next_obs, next_actions), config.gamma, config.q_aggregate
            )
        q = self.critics(obs, x)
        loss_critic = critic_loss(q, target)
        optimizers["critic"].zero_grad(set_to_none=True)
        loss_critic.backward()
        optimizers["critic"].step()

        # BC loss.
        loss_bc = self.bc_loss(obs, x, mask)
        info = {"loss/critic": loss_critic.detach(), "loss/bc": loss_bc.detach(), "q/mean": q.detach().mean()}
        loss_actor = loss_bc
        # Q loss, through all K network evaluations of the sampling chain.
        if config.alpha > 0.0:
            with frozen(self.critics):
                q_policy = self.critics(obs, self.act(obs, torch.randn_like(x), mask)).mean(dim=1)
            loss_q = normalised_q_loss(q_policy)
            loss_actor = loss_bc + config.alpha * loss_q
            info["loss/q"] = loss_q.detach()
        optimizers["actor"].zero_grad(set_to_none=True)
        loss_actor.backward()
        optimizers["actor"].step()

        polyak_update(self.target_critics, self.critics, config.tau)
        info["loss/actor"] = loss_actor.detach()
        return info


class FlowQL(KStepQPolicy):
    """Agent-batched K-step flow policy: flow matching plus the normalised Q loss through the Euler chain."""

    name = "flow"

    @classmethod
    def build_policy(
        cls, spec: EnvSpec, config: TrainConfig, obs_mean: torch.Tensor, obs_std: torch.Tensor
    ) -> PolicyModule:
        sampler = FlowSampler(conditional_network(spec, config), config.flow.steps)
        return PolicyModule.for_spec(sampler, spec, obs_mean, obs_std)

    def bc_loss(self, obs: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # Flow matching: regress v(z_t, t) onto the straight path's velocity e - x (the mean-flow loss at
        # r = t, where d/dt u drops out).
        e = torch.randn_like(x) * mask
        t = torch.rand(x.shape[0], x.shape[1], 1, device=x.device)
        z, v = path_point(x, e, t)
        return masked_mse(self.sampler.velocity(obs, z, t), v, mask)


ALGORITHM = FlowQL

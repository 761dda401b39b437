"""BC-MSE: plain deterministic behaviour cloning, the simplest baseline of the grid.

Per agent a deterministic actor pi_i(o_i) = tanh(MLP_i(o_i)) (MA-TD3+BC's actor, one network evaluation per
action; the policy's noise input is ignored), trained by mean squared error to the dataset's action over the
real action entries: TD3+BC's BC term alone (Fujimoto & Gu, NeurIPS 2021), with no critics and no reward.

It answers a question the mean-flow `bc` cannot: how close does a network of the same size, fed by the same
data path and evaluated the same way, get to the data when it only has to regress the mean action? The gap
between the two is the price of the generative actor (docs/training.md, "The gap to the data").
"""

from __future__ import annotations

import torch

from training.algos.base import Algorithm, Batch
from training.algos.matd3bc import DeterministicActor, DeterministicSampler, masked_mse
from training.config import TrainConfig
from training.envs.spec import EnvSpec
from training.policy import PolicyModule


class BCMSE(Algorithm):
    """Agent-batched deterministic behaviour cloning: one MSE step of every agent's actor per batch."""

    name = "bc_mse"
    # One forward, one backward and one fused Adam step, no host sync and no Python-side state.
    supports_cuda_graphs = True

    def __init__(self, spec: EnvSpec, config: TrainConfig, obs_mean: torch.Tensor, obs_std: torch.Tensor):
        super().__init__(spec, config, obs_mean, obs_std)
        self.policy = self.build_policy(spec, config, obs_mean, obs_std)

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
    def actor(self) -> DeterministicActor:
        return self.policy.sampler.actor

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self.lazy_adam(actor=(self.actor, self.config.actor_lr))

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        obs, _, x, _, _, mask = self.agent_major_batch(batch)
        # BC loss: MSE to the dataset action on the real entries (padding neither trained nor counted).
        loss_bc = masked_mse(self.actor(obs) * mask, x, mask)
        optimizer = self.optimizers()["actor"]
        optimizer.zero_grad(set_to_none=True)
        loss_bc.backward()
        optimizer.step()
        return {"loss/actor": loss_bc.detach(), "loss/bc": loss_bc.detach()}


ALGORITHM = BCMSE

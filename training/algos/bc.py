"""BC: behaviour cloning with OM2P's mean-flow actor, the reward-free ablation of OM2P (Li et al., arXiv
2508.06269; the mean-flow objective of MeanFlow, Geng et al., arXiv 2505.13447).

The actor and its deployable policy are OM2P's (`sampling_steps` evaluations per action, one by default);
the actor loss is L_MF alone, with the same `du_dt` estimator and (r, t) distribution. There are no critics:
nothing here reads a reward. `bf16_autocast` is not used (a finite difference over `fd_delta` does not
survive bf16 rounding, and at this size the fp32 passes are cheap).
"""

from __future__ import annotations

import torch

from training.algos.base import Algorithm, Batch
from training.algos.om2p import OM2P, mean_flow_loss
from training.algos.timesteps import sample_timesteps
from training.config import TrainConfig
from training.envs.spec import EnvSpec
from training.policy import MeanFlowActor, PolicyModule


class BC(Algorithm):
    """Agent-batched mean-flow behaviour cloning: OM2P with the Q term and the critics removed."""

    name = "bc"
    supports_cuda_graphs = True

    def __init__(self, spec: EnvSpec, config: TrainConfig, obs_mean: torch.Tensor, obs_std: torch.Tensor):
        super().__init__(spec, config, obs_mean, obs_std)
        self.policy = self.build_policy(spec, config, obs_mean, obs_std)

    @classmethod
    def build_policy(
        cls, spec: EnvSpec, config: TrainConfig, obs_mean: torch.Tensor, obs_std: torch.Tensor
    ) -> PolicyModule:
        # The same deployable policy as OM2P, so the two compare on equal footing.
        return OM2P.build_policy(spec, config, obs_mean, obs_std)

    @property
    def actor(self) -> MeanFlowActor:
        return self.policy.sampler.actor

    def evaluations_per_action(self) -> int:
        return self.config.sampling_steps

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self.lazy_adam(actor=(self.actor, self.config.actor_lr))

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        config = self.config
        obs, _, x, _, _, mask = self.agent_major_batch(batch)
        n, b = x.shape[0], x.shape[1]

        # Mean-flow loss (the whole actor loss): OM2P's L_MF, the same function, at (r, t) from OM2P's
        # timestep distribution.
        e = torch.randn_like(x) * mask
        r, t = sample_timesteps(config, (n, b, 1), x.device)
        loss_mf = mean_flow_loss(
            self.actor,
            obs,
            x,
            e,
            r,
            t,
            config.du_dt,
            config.fd_delta,
            mask,
            config.adaptive_loss_power,
        ).loss
        optimizer = self.optimizers()["actor"]
        optimizer.zero_grad(set_to_none=True)
        loss_mf.backward()
        optimizer.step()
        return {"loss/actor": loss_mf.detach(), "loss/mean_flow": loss_mf.detach()}


ALGORITHM = BC

"""Diffusion: a K-step DDPM policy with Q guidance through its reverse chain, agent-batched.

Diffusion-QL (Wang, Hunt, Zhou; "Diffusion Policies as an Expressive Policy Class for Offline Reinforcement
Learning", ICLR 2023) per agent, as in the multi-agent diffusion baselines (DoF, Li et al., ICLR 2025). Per
agent a noise-prediction network eps(x_k, k | o_i) and twin critics (the critic side is `flow`'s).

Forward process (DDPM, Ho et al. 2020): x_k = sqrt(abar_k) x_0 + sqrt(1 - abar_k) eps, k = 1..K with
K = `diffusion.steps`, on Diffusion-QL's variance-preserving schedule: the discretised VP SDE with linear
beta(s) from 0.1 to 10, 1 - beta_k = exp(-beta_min / K - (beta_max - beta_min) (2k - 1) / (2 K^2)), which
stays sensible for the small K of policies; abar_K ~ 0.006 at any K.

Reverse process: deterministic DDIM (eta = 0, Song et al. 2021) from x_K = the policy's noise input,
  x0_hat = clip((x_k - sqrt(1 - abar_k) eps_hat) / sqrt(abar_k), -1, 1),
  x_{k-1} = sqrt(abar_{k-1}) x0_hat + sqrt(1 - abar_{k-1}) eps_hat,  abar_0 = 1,
so the served policy is a pure function of (obs, noise) with one noise tensor, K network evaluations.

Actor loss  L = L_BC + alpha * L_Q:
- L_BC = || eps(x_k, k | o_i) - eps ||^2, k ~ U{1..K} (the DDPM denoising loss);
- L_Q = -mean Q(o_i, a_i) / stopgrad(mean |Q|), a_i the K-step DDIM action with the gradient through the
  whole reverse chain (Diffusion-QL's Q loss, with DDIM in place of its stochastic DDPM sampler).
"""

from __future__ import annotations

import torch
from torch import nn

from training.algos.flow import KStepQPolicy, conditional_network
from training.algos.om2p import masked_mse
from training.config import TrainConfig
from training.envs.spec import EnvSpec
from training.policy import MeanFlowActor, PolicyModule, constant_like

__all__ = ["BETA_MAX", "BETA_MIN", "DDIMSampler", "Diffusion", "vp_alpha_bars"]

BETA_MIN, BETA_MAX = 0.1, 10.0
"""Endpoints of the VP SDE's linear beta(s) (Song et al. 2021; Diffusion-QL's `vp` schedule)."""


def vp_alpha_bars(steps: int) -> torch.Tensor:
    """`abar_k` for k = 0..K (abar_0 = 1, the data), float64: the cumulative products of 1 - beta_k."""
    k = torch.arange(1, steps + 1, dtype=torch.float64)
    log_alphas = -BETA_MIN / steps - 0.5 * (BETA_MAX - BETA_MIN) * (2 * k - 1) / steps**2
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumsum(log_alphas, 0).exp()])


class DDIMSampler(nn.Module):
    """eps(x_k, k | o) and its deterministic K-step DDIM reverse chain, unrolled (K is a Python constant):
    `(obs [N, B, obs_dim], noise [N, B, A]) -> [N, B, A]`.

    The schedule is held in non-persistent buffers: it follows from K, so checkpoints need not store it."""

    def __init__(self, net: MeanFlowActor, steps: int) -> None:
        super().__init__()
        self.net, self.steps = net, steps
        alpha_bars = vp_alpha_bars(steps)
        self.register_buffer("sqrt_alpha_bars", alpha_bars.sqrt().float(), persistent=False)
        self.register_buffer("sqrt_one_minus_alpha_bars", (1.0 - alpha_bars).sqrt().float(), persistent=False)

    def noise_prediction(self, obs: torch.Tensor, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """eps(x_k, k | o) with the diffusion time s = k / K in (0, 1] as the network's time input (OM2P's
        network on the diagonal r = t)."""
        return self.net(obs, x, s, s)

    def noised(self, x0: torch.Tensor, eps: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """The forward process x_k = sqrt(abar_k) x_0 + sqrt(1 - abar_k) eps for integer steps `k`."""
        return self.sqrt_alpha_bars[k] * x0 + self.sqrt_one_minus_alpha_bars[k] * eps

    def forward(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        x = noise
        for k in range(self.steps, 0, -1):
            eps = self.noise_prediction(obs, x, constant_like(x, k / self.steps))
            # Clipping the predicted clean action to the action box is Diffusion-QL's `clip_denoised`.
            x0 = ((x - self.sqrt_one_minus_alpha_bars[k] * eps) / self.sqrt_alpha_bars[k]).clamp(-1.0, 1.0)
            x = self.sqrt_alpha_bars[k - 1] * x0 + self.sqrt_one_minus_alpha_bars[k - 1] * eps
        return x

    def evaluations_per_action(self) -> int:
        return self.steps


class Diffusion(KStepQPolicy):
    """Agent-batched Diffusion-QL: DDPM denoising loss plus the normalised Q loss through the DDIM chain."""

    name = "diffusion"

    @classmethod
    def build_policy(
        cls, spec: EnvSpec, config: TrainConfig, obs_mean: torch.Tensor, obs_std: torch.Tensor
    ) -> PolicyModule:
        sampler = DDIMSampler(conditional_network(spec, config), config.diffusion.steps)
        return PolicyModule.for_spec(sampler, spec, obs_mean, obs_std)

    def bc_loss(self, obs: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # DDPM denoising loss at a uniformly drawn step k.
        steps = self.sampler.steps
        k = torch.randint(1, steps + 1, (x.shape[0], x.shape[1], 1), device=x.device)
        eps = torch.randn_like(x) * mask
        x_k = self.sampler.noised(x, eps, k)
        return masked_mse(self.sampler.noise_prediction(obs, x_k, k / steps), eps, mask)


ALGORITHM = Diffusion

"""The generalised timestep distribution of OM2P: pairs (r, t) with 0 <= r <= t <= 1.

Convention (MeanFlow): t = 0 is data, t = 1 is noise. Serving always evaluates the interval (0, 1), which
is why the endpoint-biased sampler exists; `equal_time_ratio` puts a share of the pairs on the diagonal
r = t, where the mean-flow loss is plain flow matching.
"""

from __future__ import annotations

import torch

from training.config import TrainConfig


def _two_draws(config: TrainConfig, shape: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
    if config.time_sampler == "uniform":
        return torch.rand(shape, device=device), torch.rand(shape, device=device)
    if config.time_sampler == "logit_normal":
        draws = torch.randn((2, *shape), device=device) * config.logit_normal_std + config.logit_normal_mean
        return tuple(torch.sigmoid(draws))
    if config.time_sampler == "beta":
        beta = torch.distributions.Beta(
            torch.tensor(config.beta_a, device=device), torch.tensor(config.beta_b, device=device)
        )
        return beta.sample(shape), beta.sample(shape)
    if config.time_sampler == "endpoint":
        # r pulled toward 0, t toward 1: Exp(1) = -log U.
        r = (config.endpoint_scale * -torch.log1p(-torch.rand(shape, device=device))).clamp(0.0, 1.0)
        t = (1.0 - config.endpoint_scale * -torch.log1p(-torch.rand(shape, device=device))).clamp(0.0, 1.0)
        return r, t
    raise ValueError(f"unknown time_sampler {config.time_sampler!r}")


def sample_timesteps(
    config: TrainConfig, shape: tuple[int, ...], device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(r, t)`, each of `shape`, with r <= t; a share `equal_time_ratio` of them has r = t."""
    device = torch.device(device)
    first, second = _two_draws(config, shape, device)
    r, t = torch.minimum(first, second), torch.maximum(first, second)
    on_diagonal = torch.rand(shape, device=device) < config.equal_time_ratio
    return torch.where(on_diagonal, t, r), t

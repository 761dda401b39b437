"""The generalised timestep distribution of OM2P: pairs (r, t) with 0 <= r <= t <= 1.

Convention (MeanFlow): t = 0 is data, t = 1 is noise. Serving always evaluates the interval (0, 1), which
is why the endpoint-biased sampler exists; `equal_time_ratio` puts a share of the pairs on the diagonal
r = t, where the mean-flow loss is plain flow matching.

Each `TimeSampler` maps to one function below that draws two independent times; `sample_timesteps` orders
them and puts the diagonal share on r = t.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from training.config import TimeSampler, TrainConfig

Draws = tuple[torch.Tensor, torch.Tensor]


def uniform_times(config: TrainConfig, shape: tuple[int, ...], device: torch.device) -> Draws:
    return torch.rand(shape, device=device), torch.rand(shape, device=device)


def logit_normal_times(config: TrainConfig, shape: tuple[int, ...], device: torch.device) -> Draws:
    """MeanFlow's default: sigmoid of a normal draw."""
    draws = torch.randn((2, *shape), device=device) * config.logit_normal_std + config.logit_normal_mean
    first, second = torch.sigmoid(draws)
    return first, second


def beta_times(config: TrainConfig, shape: tuple[int, ...], device: torch.device) -> Draws:
    beta = torch.distributions.Beta(
        torch.tensor(config.beta_a, device=device), torch.tensor(config.beta_b, device=device)
    )
    return beta.sample(shape), beta.sample(shape)


def endpoint_times(config: TrainConfig, shape: tuple[int, ...], device: torch.device) -> Draws:
    """r pulled toward 0, t toward 1 (the interval one-step serving evaluates): r = clip(s Exp(1)),
    t = clip(1 - s Exp(1)), with Exp(1) = -log U."""
    scale = config.endpoint_scale
    r = (scale * -torch.log1p(-torch.rand(shape, device=device))).clamp(0.0, 1.0)
    t = (1.0 - scale * -torch.log1p(-torch.rand(shape, device=device))).clamp(0.0, 1.0)
    return r, t


TIME_SAMPLERS: dict[TimeSampler, Callable[[TrainConfig, tuple[int, ...], torch.device], Draws]] = {
    TimeSampler.UNIFORM: uniform_times,
    TimeSampler.LOGIT_NORMAL: logit_normal_times,
    TimeSampler.BETA: beta_times,
    TimeSampler.ENDPOINT: endpoint_times,
}


def sample_timesteps(
    config: TrainConfig, shape: tuple[int, ...], device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(r, t)`, each of `shape`, with r <= t; a share `equal_time_ratio` of them has r = t."""
    device = torch.device(device)
    first, second = TIME_SAMPLERS[TimeSampler(config.time_sampler)](config, shape, device)
    r, t = torch.minimum(first, second), torch.maximum(first, second)
    on_diagonal = torch.rand(shape, device=device) < config.equal_time_ratio
    return torch.where(on_diagonal, t, r), t

"""The mean-flow objective: d/dt u estimators against each other and against an analytic flow, the
timestep distribution, and the reference code's pitfalls 2 and 3."""

from __future__ import annotations

import math

import pytest
import torch

from training.algos.om2p import du_dt_fd, du_dt_jvp, mean_flow_loss, mean_flow_target, path_point
from training.algos.timesteps import sample_timesteps
from training.config import TrainConfig
from training.policy import MeanFlowActor

N, B, OBS, ACT = 3, 64, 6, 4


def smooth_actor(seed: int = 0) -> MeanFlowActor:
    torch.manual_seed(seed)
    return MeanFlowActor(N, OBS, ACT, [64, 64], activation="tanh")


def path_inputs(seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    obs = torch.randn(N, B, OBS, generator=generator)
    x = torch.rand(N, B, ACT, generator=generator) * 2 - 1
    e = torch.randn(N, B, ACT, generator=generator)
    t = 0.05 + 0.9 * torch.rand(N, B, 1, generator=generator)
    r = t * torch.rand(N, B, 1, generator=generator)
    z, v = path_point(x, e, t)
    return obs, z, v, r, t


def test_fd_agrees_with_jvp_and_is_nonzero_in_float32():
    actor, (obs, z, v, r, t) = smooth_actor(), path_inputs()
    _, exact = du_dt_jvp(actor, obs, z, v, r, t)
    estimate = du_dt_fd(actor, obs, z, v, r, t, delta=1e-3)
    assert estimate.dtype == torch.float32
    assert exact.abs().mean() > 1e-2  # the test means something only if the derivative is not ~0
    relative = (estimate - exact).norm() / exact.norm()
    assert relative < 0.02, relative
    assert estimate.abs().mean() > 0.5 * exact.abs().mean()


def test_reference_fd_step_vanishes_in_float32_and_is_refused():
    # Pitfall 2: with delta = 1e-12, t - delta == t in float32, so the "derivative" is exactly zero.
    actor, (obs, z, v, r, t) = smooth_actor(), path_inputs()
    assert torch.equal(t - 1e-12, t)
    assert du_dt_fd(actor, obs, z, v, r, t, delta=1e-12).abs().max() < 1e-3
    with pytest.raises(ValueError, match="fd_delta"):
        TrainConfig(fd_delta=1e-12)


def test_batched_jvp_is_per_sample():
    # Pitfall 3: the derivative of one sample must depend on that sample only (no cross-sample mixing).
    actor, (obs, z, v, r, t) = smooth_actor(), path_inputs()
    _, batched = du_dt_jvp(actor, obs, z, v, r, t)
    for index in (0, 17, B - 1):
        one = slice(index, index + 1)
        _, single = du_dt_jvp(actor, obs[:, one], z[:, one], v[:, one], r[:, one], t[:, one])
        torch.testing.assert_close(batched[:, one], single, rtol=1e-4, atol=1e-5)
    moved = z.clone()
    moved[:, 5] += 1.0
    _, after = du_dt_jvp(actor, obs, moved, v, r, t)
    unchanged = torch.ones(B, dtype=torch.bool)
    unchanged[5] = False
    torch.testing.assert_close(after[:, unchanged], batched[:, unchanged])
    assert not torch.allclose(after[:, 5], batched[:, 5])


class GaussianFlow:
    """Marginal flow from data x ~ N(mu, s^2) (t = 0) to noise N(0, 1) (t = 1), per dimension, with its
    analytic average velocity u(z, r, t) = (z - Phi_{t->r}(z)) / (t - r), Phi(z) = m_r + s_r/s_t (z - m_t)."""

    def __init__(self, mu: float = 0.7, s: float = 0.3) -> None:
        self.mu, self.s = mu, s

    def mean_std(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (1 - t) * self.mu, torch.sqrt((1 - t) ** 2 * self.s**2 + t**2)

    def velocity(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        m, sd = self.mean_std(t)
        return -self.mu + (t - (1 - t) * self.s**2) / sd**2 * (z - m)

    def average_velocity(self, obs, z, r, t) -> torch.Tensor:
        m_t, s_t = self.mean_std(t)
        m_r, s_r = self.mean_std(r)
        return (z - (m_r + s_r / s_t * (z - m_t))) / (t - r)


@pytest.mark.parametrize("estimator", ["fd", "jvp"])
def test_mean_flow_loss_vanishes_for_analytic_average_velocity(estimator):
    flow = GaussianFlow()
    generator = torch.Generator().manual_seed(0)
    t = 0.1 + 0.85 * torch.rand(N, B, 1, generator=generator)
    r = (t - 0.05) * torch.rand(N, B, 1, generator=generator)
    m, sd = flow.mean_std(t)
    z = m + sd * torch.randn(N, B, ACT, generator=generator)
    v = flow.velocity(z, t)  # the marginal velocity: the identity holds exactly for it
    u = flow.average_velocity
    if estimator == "jvp":
        u_pred, derivative = du_dt_jvp(u, None, z, v, r, t)
    else:
        u_pred = u(None, z, r, t)
        derivative = du_dt_fd(u, None, z, v, r, t, delta=1e-3)
    loss = mean_flow_loss(u_pred, mean_flow_target(v, r, t, derivative))
    # Without the d/dt u term (the `zero` ablation) the same network is far from its target.
    loss_without_derivative = mean_flow_loss(u_pred, mean_flow_target(v, r, t, torch.zeros_like(v)))
    assert loss < 1e-4, loss
    assert loss_without_derivative > 100 * loss
    assert loss_without_derivative > 1e-3
    # And a network that is not the average velocity is not at zero loss.
    assert mean_flow_loss(u_pred + 0.1, mean_flow_target(v, r, t, derivative)) > 0.03


def test_analytic_average_velocity_tends_to_the_velocity():
    flow = GaussianFlow()
    z, t = torch.linspace(-2, 2, 9).reshape(1, 9, 1), torch.full((1, 9, 1), 0.6)
    near = flow.average_velocity(None, z, t - 1e-4, t)
    torch.testing.assert_close(near, flow.velocity(z, t), rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("sampler", ["uniform", "logit_normal", "beta", "endpoint"])
def test_timesteps_are_ordered_in_unit_interval(sampler):
    torch.manual_seed(0)
    config = TrainConfig(time_sampler=sampler, equal_time_ratio=0.25, beta_a=2.0, beta_b=0.5)
    r, t = sample_timesteps(config, (20000, 1))
    assert r.shape == t.shape == (20000, 1)
    assert torch.all((r >= 0) & (r <= t) & (t <= 1))
    diagonal = (r == t).float().mean().item()
    assert 0.22 < diagonal < 0.30
    assert (t - r).max() > 0.5  # the long intervals that one-step serving evaluates do occur


def test_endpoint_sampler_is_biased_toward_the_serving_interval():
    torch.manual_seed(0)
    uniform = sample_timesteps(TrainConfig(time_sampler="uniform", equal_time_ratio=0.0), (20000, 1))
    endpoint = sample_timesteps(TrainConfig(time_sampler="endpoint", equal_time_ratio=0.0), (20000, 1))
    assert (endpoint[1] - endpoint[0]).mean() > (uniform[1] - uniform[0]).mean() + 0.2


def test_masked_action_entries_do_not_count():
    u_pred, target = torch.zeros(2, 3, 4), torch.zeros(2, 3, 4)
    target[..., 3] = 5.0
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0])
    assert mean_flow_loss(u_pred, target, mask) == 0
    assert math.isclose(mean_flow_loss(u_pred, target).item(), 25.0)

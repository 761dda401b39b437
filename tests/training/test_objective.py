"""The mean-flow objective: the fused loss against a direct transcription of the paper's formula, the d/dt u
estimators against each other (at the defaults too) and against an analytic flow, the timestep
distribution, and the reference code's pitfalls 2 and 3."""

from __future__ import annotations

import math

import pytest
import torch

from training.algos.base import Batch
from training.algos.om2p import (
    OM2P,
    du_dt_fd,
    du_dt_jvp,
    masked_mse,
    mean_flow_loss,
    mean_flow_target,
    path_point,
)
from training.algos.timesteps import sample_timesteps
from training.config import TrainConfig
from training.policy import MeanFlowActor

N, B, OBS, ACT = 3, 64, 6, 4
RELATIVE_FD_ERROR = 0.02  # measured 0.002 at the defaults (GELU, 2 x 256, delta 5e-3)


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
    loss = masked_mse(u_pred, mean_flow_target(v, r, t, derivative))
    # Without the d/dt u term (the `zero` ablation) the same network is far from its target.
    loss_without_derivative = masked_mse(u_pred, mean_flow_target(v, r, t, torch.zeros_like(v)))
    assert loss < 1e-4, loss
    assert loss_without_derivative > 100 * loss
    assert loss_without_derivative > 1e-3
    # And a network that is not the average velocity is not at zero loss.
    assert masked_mse(u_pred + 0.1, mean_flow_target(v, r, t, derivative)) > 0.03


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
    assert masked_mse(u_pred, target, mask) == 0
    assert math.isclose(masked_mse(u_pred, target).item(), 25.0)


# The fused loss against the paper.


def paper_mean_flow_loss(u, obs, x, e, r, t, estimator, delta, mask):
    """L_MF transcribed from the paper (OM2P eq. for the mean-flow loss, MeanFlow's identity), term by term,
    with d/dt u computed independently of the implementation: fd from two points of the path written as
    (1 - s) x + s e, jvp by reverse-mode autograd per output entry (rows are independent, so the gradient
    of a sum over rows is each row's own), zero as 0."""
    z_t = (1 - t) * x + t * e
    v = e - x
    if estimator == "jvp":
        z_t, t = z_t.detach().requires_grad_(True), t.detach().requires_grad_(True)
    u_t = u(obs, z_t, r, t)
    if estimator == "fd":
        s = t - delta
        with torch.no_grad():
            du_dt = (u(obs, z_t, r, t) - u(obs, (1 - s) * x + s * e, r, s)) / delta
    elif estimator == "jvp":
        columns = []
        for k in range(u_t.shape[-1]):
            grad_z, grad_t = torch.autograd.grad(u_t[..., k].sum(), (z_t, t), retain_graph=True)
            columns.append((grad_z * v).sum(-1) + grad_t[..., 0])  # v . grad_z u_k + du_k/dt
        du_dt = torch.stack(columns, dim=-1)
    else:
        du_dt = torch.zeros_like(u_t)
    u_tgt = (v - (t - r) * du_dt).detach()
    return (((u_t - u_tgt) * mask) ** 2).sum(-1).mean()


@pytest.mark.parametrize("estimator", ["fd", "jvp", "zero"])
def test_fused_mean_flow_loss_matches_the_papers_formula(estimator):
    torch.manual_seed(0)
    actor = MeanFlowActor(N, OBS, ACT, [64, 64])  # GELU, the default activation
    generator = torch.Generator().manual_seed(3)
    obs = torch.randn(N, B, OBS, generator=generator)
    x = torch.rand(N, B, ACT, generator=generator) * 2 - 1
    e = torch.randn(N, B, ACT, generator=generator)
    r, t = sample_timesteps(TrainConfig(), (N, B, 1))
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0])
    # Extra rows in the same pass (OM2P's one-step rows) must not change L_MF.
    extra = (obs, e, torch.zeros(N, B, 1), torch.ones(N, B, 1))
    fused = mean_flow_loss(actor, obs, x, e, r, t, estimator, 5e-3, mask, extra_rows=extra)
    paper = paper_mean_flow_loss(actor, obs, x, e, r, t, estimator, 5e-3, mask)
    torch.testing.assert_close(fused.loss, paper, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(fused.extra, actor(*extra))
    # The same gradient reaches the actor's weights.
    fused_grads = torch.autograd.grad(fused.loss, list(actor.parameters()))
    paper_grads = torch.autograd.grad(paper, list(actor.parameters()))
    for mine, theirs in zip(fused_grads, paper_grads, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("estimator", ["fd", "jvp", "zero"])
def test_om2p_actor_loss_is_the_papers_mean_flow_loss(estimator):
    from training.envs import env_spec

    spec = env_spec("cooperative_navigation")
    config = TrainConfig(du_dt=estimator, actor_hidden=[32, 32], critic_hidden=[32, 32], bf16_autocast=False)
    torch.manual_seed(0)
    algorithm = OM2P(
        spec, config, torch.zeros(spec.n_agents, spec.obs_dim), torch.ones(spec.n_agents, spec.obs_dim)
    )
    n, o, a = spec.n_agents, spec.obs_dim, spec.act_dim
    batch = Batch(
        torch.randn(16, n, o),
        torch.rand(16, n, a) * 2 - 1,
        torch.randn(16, n),
        torch.randn(16, n, o),
        torch.zeros(16, n),
    )
    inputs = algorithm.step_inputs(batch)
    _, info = algorithm.actor_loss(inputs)
    agents = inputs.batch
    paper = paper_mean_flow_loss(
        algorithm.actor,
        agents.obs,
        agents.actions,
        inputs.noise,
        inputs.r,
        inputs.t,
        estimator,
        config.fd_delta,
        agents.mask,
    )
    torch.testing.assert_close(info["loss/mean_flow"], paper.detach(), rtol=1e-4, atol=1e-6)


def test_fd_agrees_with_jvp_at_the_defaults():
    """The derivative-free estimate at the shipped settings (GELU actor of the default widths, the default
    fd_delta and (r, t) distribution), not only on a smooth tanh network."""
    config = TrainConfig()
    torch.manual_seed(0)
    actor = MeanFlowActor(N, OBS, ACT, config.actor_hidden, config.activation)
    generator = torch.Generator().manual_seed(4)
    obs = torch.randn(N, B, OBS, generator=generator)
    x = torch.rand(N, B, ACT, generator=generator) * 2 - 1
    e = torch.randn(N, B, ACT, generator=generator)
    r, t = sample_timesteps(config, (N, B, 1))
    z, v = path_point(x, e, t)
    _, exact = du_dt_jvp(actor, obs, z, v, r, t)
    estimate = du_dt_fd(actor, obs, z, v, r, t, delta=config.fd_delta)
    assert exact.abs().mean() > 1e-2
    relative = (estimate - exact).norm() / exact.norm()
    assert relative < RELATIVE_FD_ERROR, relative
    fd = mean_flow_loss(actor, obs, x, e, r, t, "fd", config.fd_delta).loss
    jvp = mean_flow_loss(actor, obs, x, e, r, t, "jvp").loss
    torch.testing.assert_close(fd, jvp, rtol=1e-2, atol=1e-4)

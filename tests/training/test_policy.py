"""Agent-batched actor and critics against separate per-agent networks, the one-step action (pitfall 1),
and the deployable PolicyModule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from training.algos.critics import AgentCritics
from training.networks import GroupedLayerNorm, GroupedLinear
from training.policy import MeanFlowActor, MeanFlowSampler, PolicyModule, one_step_action

N, B, OBS, ACT = 3, 10, 7, 4


def separate_mlp(grouped: nn.Module, group: int) -> nn.Sequential:
    """The plain torch MLP of one group, with that group's slice of the stacked weights."""
    layers: list[nn.Module] = []
    for layer in grouped:
        if isinstance(layer, GroupedLinear):
            linear = nn.Linear(layer.in_features, layer.out_features)
            g = 0 if layer.shared else group
            linear.weight.data = layer.weight.data[g].T.clone()
            linear.bias.data = layer.bias.data[g, 0].clone()
            layers.append(linear)
        elif isinstance(layer, GroupedLayerNorm):
            norm = nn.LayerNorm(layer.weight.shape[-1], eps=layer.eps)
            norm.weight.data, norm.bias.data = (
                layer.weight.data[group, 0].clone(),
                layer.bias.data[group, 0].clone(),
            )
            layers.append(norm)
        else:
            layers.append(layer)
    return nn.Sequential(*layers)


def inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    obs = torch.randn(N, B, OBS, generator=generator)
    z = torch.randn(N, B, ACT, generator=generator)
    t = torch.rand(N, B, 1, generator=generator)
    return obs, z, t * torch.rand(N, B, 1, generator=generator), t


def test_agent_batched_actor_equals_separate_forwards():
    torch.manual_seed(0)
    actor = MeanFlowActor(N, OBS, ACT, [32, 32])
    obs, z, r, t = inputs()
    batched = actor(obs, z, r, t)
    for agent in range(N):
        separate = separate_mlp(actor.net.layers, agent)
        expected = separate(torch.cat([obs[agent], z[agent], t[agent], t[agent] - r[agent]], dim=-1))
        torch.testing.assert_close(batched[agent], expected, rtol=1e-5, atol=1e-5)


def test_shared_actor_distinguishes_agents_by_id():
    torch.manual_seed(0)
    actor = MeanFlowActor(N, OBS, ACT, [32, 32], share_parameters=True)
    assert actor.net.layers[0].weight.shape[0] == 1
    obs, z, r, t = inputs()
    same = [x[:1].expand_as(x) for x in (obs, z, r, t)]  # every agent sees the same inputs
    out = actor(*same)
    assert not torch.allclose(out[0], out[1])
    ids = torch.eye(N)
    separate = separate_mlp(actor.net.layers, 0)
    expected = separate(torch.cat([obs[0], z[0], t[0], t[0] - r[0], ids[1].expand(B, N)], dim=-1))
    torch.testing.assert_close(out[1], expected, rtol=1e-5, atol=1e-5)


def test_agent_batched_critics_equal_separate_forwards():
    torch.manual_seed(0)
    critics = AgentCritics(N, OBS, ACT, [32, 32], ensemble=2)
    obs, actions, _, _ = inputs()
    q = critics(obs, actions)
    assert q.shape == (N, 2, B)
    for agent in range(N):
        for member in range(2):
            separate = separate_mlp(critics.net.layers, agent * 2 + member)
            expected = separate(torch.cat([obs[agent], actions[agent]], dim=-1)).squeeze(-1)
            torch.testing.assert_close(q[agent, member], expected, rtol=1e-5, atol=1e-5)


def test_centralised_critic_sees_the_other_agents():
    torch.manual_seed(0)
    critics = AgentCritics(N, OBS, ACT, [32], centralised=True)
    obs, actions, _, _ = inputs()
    changed = actions.clone()
    changed[2] += 0.5  # only agent 2's action changes
    before, after = critics(obs, actions), critics(obs, changed)
    assert not torch.allclose(before[0], after[0])  # ... and agent 0's Q sees it


def test_one_step_action_is_noise_minus_average_velocity():
    torch.manual_seed(0)
    actor = MeanFlowActor(N, OBS, ACT, [32, 32])
    obs, e, _, _ = inputs()
    u = actor(obs, e, torch.zeros(N, B, 1), torch.ones(N, B, 1))
    action = one_step_action(actor, obs, e)
    torch.testing.assert_close(action, e - u)
    # Pitfall 1: the reference code returned u(e, 0, 1) itself, which is a different action.
    assert (action - u).abs().mean() > 0.1
    torch.testing.assert_close(MeanFlowSampler(actor, 1)(obs, e), e - u)


def test_k_step_sampler_composes_k_evaluations():
    torch.manual_seed(0)
    actor = MeanFlowActor(N, OBS, ACT, [16])
    obs, e, _, _ = inputs()
    half = torch.full((N, B, 1), 0.5)
    z_half = e - 0.5 * actor(obs, e, half, torch.ones(N, B, 1))
    expected = z_half - 0.5 * actor(obs, z_half, torch.zeros(N, B, 1), half)
    torch.testing.assert_close(MeanFlowSampler(actor, 2)(obs, e), expected)


def test_policy_module_normalises_clips_and_masks():
    torch.manual_seed(0)
    actor = MeanFlowActor(N, OBS, ACT, [16])
    mean, std = torch.randn(N, OBS), torch.rand(N, OBS) + 0.5
    mask = torch.ones(N, ACT)
    mask[1, 3] = 0.0  # a padded action entry of agent 1
    policy = PolicyModule(MeanFlowSampler(actor, 1), mean, std, mask)
    obs = torch.randn(B, N, OBS)
    noise = 3 * torch.randn(B, N, ACT)  # large noise: some actions need clipping
    actions = policy(obs, noise)
    assert actions.shape == (B, N, ACT)
    normalised = ((obs - mean) / std).transpose(0, 1)
    masked_noise = (noise * mask).transpose(0, 1)
    expected = one_step_action(actor, normalised, masked_noise).transpose(0, 1).clamp(-1, 1) * mask
    torch.testing.assert_close(actions, expected)
    assert actions.abs().max() <= 1.0
    assert (actions[:, 1, 3] == 0).all()
    assert (actions.abs() == 1.0).any()


@pytest.mark.parametrize("share_parameters", [False, True])
def test_residual_output_makes_the_one_step_action_the_network_output(share_parameters):
    # u = z - f, so a = e - u(e, 0, 1) = f(e, 0, 1): the same velocity field, the action read off directly.
    torch.manual_seed(0)
    velocity = MeanFlowActor(N, OBS, ACT, [32, 32], share_parameters=share_parameters)
    residual = MeanFlowActor(N, OBS, ACT, [32, 32], share_parameters=share_parameters, output="residual")
    residual.load_state_dict(velocity.state_dict())
    obs, z, r, t = inputs()
    torch.testing.assert_close(residual(obs, z, r, t), z - velocity(obs, z, r, t))
    torch.testing.assert_close(one_step_action(residual, obs, z), velocity(obs, z, 0.0 * r, 0.0 * t + 1.0))
    with pytest.raises(ValueError, match="unknown mean-flow output"):
        MeanFlowActor(N, OBS, ACT, [8], output="action")

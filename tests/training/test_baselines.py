"""The six baselines beside OM2P (bc, bc_mse, matd3bc, omar, flow, diffusion): updates, the deployable policy's
contract (shape, range, padding), determinism, checkpoints through the real trainer, K-step sampler maths,
behaviour cloning, OMAR's search, and ONNX export of the K-step policies."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from training.algos import Batch, available_algorithms, get_algorithm
from training.algos.diffusion import BETA_MAX, BETA_MIN, DDIMSampler, vp_alpha_bars
from training.algos.flow import FlowSampler
from training.algos.matd3bc import masked_mse
from training.algos.omar import clip_grad_norm_per_agent, search_actions
from training.checkpoint import load_policy, load_training_state, read_info
from training.config import OMARConfig
from training.envs import env_spec
from training.trainer import train

BASELINES = ("bc", "bc_mse", "matd3bc", "omar", "flow", "diffusion")
CRITIC_FREE = ("bc", "bc_mse")  # behaviour cloners: nothing reads a reward
K_STEP = {"flow": "flow.steps", "diffusion": "diffusion.steps"}


def build(name: str, spec, config):
    n, o = spec.n_agents, spec.obs_dim
    return get_algorithm(name)(spec, config, torch.zeros(n, o), torch.ones(n, o))


def test_all_seven_algorithms_are_available():
    assert available_algorithms() == sorted(["om2p", *BASELINES])
    for name in BASELINES:
        assert get_algorithm(name).name == name


@pytest.mark.parametrize("name", BASELINES)
def test_updates_give_finite_losses_and_move_the_actor(name, make_config, make_batch):
    spec = env_spec("world")  # padded actions: the masks are exercised
    torch.manual_seed(0)
    algorithm = build(name, spec, make_config(env="world", algo=name))
    before = [p.detach().clone() for p in algorithm.policy.parameters()]
    for step in range(3):
        info = {k: float(v) for k, v in algorithm.update(make_batch(spec, 16, step)).items()}
        assert all(np.isfinite(list(info.values()))), info
    assert "loss/actor" in info
    assert ("loss/critic" in info) == (name not in CRITIC_FREE)  # the cloners train no critics at all
    if name in CRITIC_FREE:
        assert set(algorithm.optimizers()) == {"actor"}
        assert not any(k.startswith("critic") for k in algorithm.state_dict())
    after = list(algorithm.policy.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


@pytest.mark.parametrize("name", BASELINES)
def test_policy_shape_range_and_padding(name, make_config):
    spec = env_spec("world")
    n, o, a = spec.n_agents, spec.obs_dim, spec.act_dim
    torch.manual_seed(0)
    policy = build(name, spec, make_config(env="world", algo=name)).policy.eval()
    generator = torch.Generator().manual_seed(1)
    obs = 50.0 * torch.randn(7, n, o, generator=generator)  # large inputs saturate some entries
    noise = 3.0 * torch.randn(7, n, a, generator=generator)
    with torch.no_grad():
        actions = policy(obs, noise)
    mask = torch.as_tensor(spec.action_mask)
    assert actions.shape == (7, n, a)
    assert actions.abs().max() <= 1.0
    assert torch.all(actions[:, ~mask] == 0.0)
    assert torch.any(actions[:, mask] != 0.0)


def _losses(name: str, spec, make_config, make_batch, seed: int) -> list[float]:
    torch.manual_seed(seed)
    algorithm = build(name, spec, make_config(algo=name, seed=seed))
    return [float(algorithm.update(make_batch(spec, 16, step))["loss/actor"]) for step in range(3)]


@pytest.mark.parametrize("name", BASELINES)
def test_same_seed_gives_the_same_losses(name, spec, make_config, make_batch):
    first = _losses(name, spec, make_config, make_batch, seed=3)
    assert first == _losses(name, spec, make_config, make_batch, seed=3)
    assert first != _losses(name, spec, make_config, make_batch, seed=4)


@pytest.mark.parametrize("name", BASELINES)
def test_evaluations_per_action(name, spec, make_config):
    expected = 10 if name in K_STEP else 1  # the issue: K is a config field, default 10
    assert build(name, spec, make_config(algo=name)).evaluations_per_action() == expected
    if name in K_STEP:
        assert build(name, spec, make_config(algo=name, **{K_STEP[name]: 3})).evaluations_per_action() == 3


@pytest.mark.parametrize("name", BASELINES)
def test_trainer_checkpoint_reloads_with_the_same_actions(name, spec, tmp_path, make_config, make_dataset):
    config = make_config(algo=name, steps=3, eval_every=3, eval_episodes=1, eval_envs=1, **{"flow.steps": 3})
    result = train(config, tmp_path / "run", dataset=make_dataset(transitions=64), progress=False)
    info = read_info(tmp_path / "run")
    assert (info.algo, info.step) == (name, 3)
    assert info.network_evaluations_per_action == (3 if name == "flow" else 10 if name == "diffusion" else 1)
    assert np.isfinite(info.evaluation["mean_return"])

    # The whole algorithm restored from the checkpoint acts exactly as the policy rebuilt from JSON alone.
    policy, _ = load_policy(result.checkpoint)
    algorithm = build(name, spec, config)
    load_training_state(result.checkpoint, algorithm, algorithm.optimizers())
    generator = torch.Generator().manual_seed(0)
    obs, noise = torch.randn(5, 3, spec.obs_dim, generator=generator), torch.randn(5, 3, spec.act_dim)
    with torch.no_grad():
        torch.testing.assert_close(policy(obs, noise), algorithm.policy.eval()(obs, noise), rtol=0, atol=0)


def test_matd3bc_resume_keeps_the_delayed_actor_schedule(tmp_path, make_config, make_dataset):
    # policy_delay = 2 over an odd split (3 + 2 steps): the update counter travels in the checkpoint.
    dataset = make_dataset(transitions=64)
    config = make_config(algo="matd3bc", steps=5, eval_every=3, eval_episodes=1, eval_envs=1)
    train(config, tmp_path / "full", dataset=dataset, progress=False)
    train(config.replace(steps=3), tmp_path / "split", dataset=dataset, progress=False)
    train(config, tmp_path / "split", dataset=dataset, resume=True, progress=False)
    from safetensors.torch import load_file

    full = load_file(read_info(tmp_path / "full").path / "weights.safetensors")
    split = load_file(read_info(tmp_path / "split").path / "weights.safetensors")
    assert int(full["_extra_state"]) == 5
    for name, value in full.items():
        torch.testing.assert_close(split[name], value, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("name", "changes"),
    [
        ("bc", {"time_sampler": "endpoint", "equal_time_ratio": 0.0}),
        ("bc_mse", {}),
        ("diffusion", {"alpha": 0.0, "diffusion.steps": 5}),
    ],
)
def test_behaviour_cloning_fits_a_tiny_deterministic_dataset(name, changes, spec, make_config):
    torch.manual_seed(0)
    config = make_config(
        algo=name, actor_hidden=[64, 64], critic_hidden=[8], actor_lr=3e-3, batch_size=32, **changes
    )
    generator = torch.Generator().manual_seed(0)
    n, o, a = spec.n_agents, spec.obs_dim, spec.act_dim
    observations = torch.randn(8, n, o, generator=generator)
    actions = torch.rand(8, n, a, generator=generator) * 1.6 - 0.8  # one action per observation
    algorithm = build(name, spec, config)
    index = torch.arange(32) % 8
    batch = Batch(
        observations[index], actions[index], torch.zeros(32, n), observations[index], torch.zeros(32, n)
    )

    def error() -> float:
        with torch.no_grad():
            return float((algorithm.policy(observations, torch.zeros(8, n, a)) - actions).abs().mean())

    before = error()
    for _ in range(150):
        algorithm.update(batch)
    after = error()
    assert before > 0.3
    assert after < min(0.25, 0.5 * before), (before, after)


class OracleNoise(nn.Module):
    """The exact noise prediction for clean action `x0`: eps = (x_k - sqrt(abar_k) x0) / sqrt(1 - abar_k)."""

    def __init__(self, x0: torch.Tensor, steps: int) -> None:
        super().__init__()
        self.x0, self.steps, self.alpha_bars = x0, steps, vp_alpha_bars(steps).float()

    def forward(self, obs, x, r, t):
        alpha_bar = self.alpha_bars[(t * self.steps).round().long()]
        return (x - alpha_bar.sqrt() * self.x0) / (1.0 - alpha_bar).sqrt()


class OracleVelocity(nn.Module):
    """The straight path's velocity toward `x0`: v = e - x0 = (z_t - x0) / t."""

    def __init__(self, x0: torch.Tensor) -> None:
        super().__init__()
        self.x0 = x0

    def forward(self, obs, z, r, t):
        return (z - self.x0) / t


def test_vp_schedule_and_ddim_chain_recover_the_clean_action():
    alpha_bars = vp_alpha_bars(10)
    assert alpha_bars[0] == 1.0 and torch.all(alpha_bars[1:] < alpha_bars[:-1])
    assert math.isclose(float(alpha_bars[-1]), math.exp(-BETA_MIN - 0.5 * (BETA_MAX - BETA_MIN)))
    x0 = torch.rand(3, 6, 4) * 1.8 - 0.9
    for steps in (1, 4, 10):
        sampler = DDIMSampler(OracleNoise(x0, steps), steps)
        k = torch.randint(1, steps + 1, (3, 6, 1))
        eps = torch.randn(3, 6, 4)
        alpha_bar = vp_alpha_bars(steps).float()[k]
        expected = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
        torch.testing.assert_close(sampler.noised(x0, eps, k), expected)
        # With the exact noise prediction, deterministic DDIM lands on x0 from any starting noise.
        actions = sampler(torch.zeros(3, 6, 2), torch.randn(3, 6, 4))
        torch.testing.assert_close(actions, x0, rtol=0, atol=1e-5)


def test_flow_euler_chain_follows_the_straight_path():
    x0 = torch.rand(3, 6, 4) * 1.8 - 0.9
    for steps in (1, 3, 10):
        sampler = FlowSampler(OracleVelocity(x0), steps)
        torch.testing.assert_close(sampler(torch.zeros(3, 6, 2), torch.randn(3, 6, 4)), x0, rtol=0, atol=1e-5)


def _quadratic_q(goal: torch.Tensor, mask: torch.Tensor):
    """Q(o, a) = -||a - goal||^2 over the real entries: its maximiser is `goal` (inside [-1, 1])."""

    def q(obs, actions):
        return -((actions - goal[:, :1].expand_as(actions)) * mask).square().sum(dim=-1)

    return q


@pytest.mark.parametrize(
    "settings",
    [
        OMARConfig(),  # the particle environments' search: N(0, 2^2), softmax-weighted, 3 x 10
        OMARConfig(search="elite", iterations=2, samples=20, elites=5),  # MaMuJoCo's
    ],
    ids=["softmax", "elite"],
)
def test_omar_search_moves_toward_the_maximiser_of_a_quadratic_q(settings):
    torch.manual_seed(0)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]).unsqueeze(1)  # agent 1 has a padded entry
    goal = torch.tensor([0.6, -0.3, 0.2]).expand(2, 256, 3) * mask
    q = _quadratic_q(goal, mask)
    policy = torch.full((2, 256, 3), -0.9) * mask  # a poor policy action, far from the maximiser
    found = search_actions(q, torch.zeros(2, 256, 5), policy, mask, settings)
    assert torch.all(q(None, found) >= q(None, policy))  # pi(o) is a candidate: never worse
    distance = ((found - goal) * mask).norm(dim=-1).mean()
    assert distance < 0.5 * ((policy - goal) * mask).norm(dim=-1).mean()
    assert torch.all(found[1, :, 2] == 0.0) and found.abs().max() <= 1.0
    # A policy already at the maximiser is kept: no sample beats it.
    assert torch.equal(search_actions(q, torch.zeros(2, 256, 5), goal, mask, settings), goal)


def test_omar_softmax_search_iterations_concentrate_on_the_maximiser():
    # More rounds of the softmax update move the mean closer: 3 rounds beat 1 on the same quadratic.
    mask = torch.ones(1, 1, 2)
    goal = torch.tensor([0.5, -0.5]).expand(1, 2048, 2)
    q = _quadratic_q(goal, mask)
    errors = []
    for iterations in (1, 3):
        torch.manual_seed(0)
        found = search_actions(
            q,
            torch.zeros(1, 2048, 1),
            torch.full((1, 2048, 2), -1.0),
            mask,
            OMARConfig(iterations=iterations),
        )
        errors.append(float((found - goal).norm(dim=-1).mean()))
    assert errors[1] < errors[0]


def test_per_agent_gradient_clipping_scales_each_agent_alone():
    from training.algos.critics import AgentCritics

    critics = AgentCritics(3, 4, 2, [8])
    for p in critics.parameters():
        p.grad = torch.zeros_like(p)
        p.grad[2:4] = 10.0  # agent 1 (groups 2, 3 of 2 ensemble members each): a large gradient
        p.grad[4:6] = 1e-3  # agent 2: a small one
    clip_grad_norm_per_agent(critics, 0.5, groups_per_agent=2)
    grads = [p.grad for p in critics.parameters()]
    norm = lambda groups: math.sqrt(sum(float(g[groups].square().sum()) for g in grads))  # noqa: E731
    assert norm(slice(2, 4)) == pytest.approx(0.5, rel=1e-4)
    assert norm(slice(4, 6)) < 0.5 and float(grads[0][4].flatten()[0]) == pytest.approx(1e-3)
    assert norm(slice(0, 2)) == 0.0


def test_masked_mse_ignores_padding_and_averages_real_entries():
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]]).unsqueeze(1)
    actions, targets = torch.zeros(2, 4, 2), torch.ones(2, 4, 2)
    targets[1, :, 1] = 100.0  # padding: must not count
    assert float(masked_mse(actions, targets, mask)) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("flow.steps", 0),
        ("diffusion.steps", 0),
        ("matd3bc.policy_delay", 0),
        ("omar.elites", 0),
        ("omar.coef", 1.5),
        ("omar.search", "cem"),
    ],
)
def test_invalid_baseline_fields_are_refused_by_name(field, value, make_config):
    with pytest.raises(ValueError, match=f"'{field}'"):
        make_config(**{field: value})


def test_elite_search_needs_two_elites_and_no_more_than_its_samples(make_config):
    with pytest.raises(ValueError, match=r"'omar\.elites': the elite search needs at least 2"):
        make_config(**{"omar.search": "elite", "omar.elites": 1})
    with pytest.raises(ValueError, match=r"'omar\.elites': 30 exceeds omar\.samples"):
        make_config(**{"omar.search": "elite", "omar.elites": 30})
    make_config(**{"omar.elites": 30})  # the softmax search has no elites


def test_bc_mse_ignores_noise_and_regresses_the_masked_mean_action(make_config):
    # Two different actions for one observation: the MSE optimum is their mean, whatever the noise input.
    spec = env_spec("world")  # padded action entries: neither trained nor counted
    torch.manual_seed(0)
    algorithm = build("bc_mse", spec, make_config(env="world", algo="bc_mse", actor_lr=1e-2))
    n, o, a = spec.n_agents, spec.obs_dim, spec.act_dim
    mask = torch.as_tensor(spec.action_mask, dtype=torch.float32)
    observations = torch.randn(1, n, o).expand(32, n, o)
    actions = torch.where(torch.arange(32).view(32, 1, 1) % 2 == 0, 0.6, -0.2).expand(32, n, a) * mask
    batch = Batch(observations, actions, torch.zeros(32, n), observations, torch.zeros(32, n))
    for _ in range(300):
        info = algorithm.update(batch)
    assert float(info["loss/bc"]) == pytest.approx(0.16, abs=0.01)  # the variance of {0.6, -0.2}
    with torch.no_grad():
        first = algorithm.policy(observations[:2], torch.zeros(2, n, a))
        second = algorithm.policy(observations[:2], 5.0 * torch.randn(2, n, a))
    torch.testing.assert_close(first, second)
    torch.testing.assert_close(first, 0.2 * mask.expand(2, n, a), rtol=0, atol=0.02)


@pytest.mark.parametrize("name", ["flow", "diffusion"])
def test_k_step_policies_export_to_onnx_with_parity(name, tmp_path):
    pytest.importorskip("onnxruntime")
    from export.exporter import export_checkpoint
    from export.testing import fast_options, write_checkpoint

    step_dir = write_checkpoint(tmp_path / "run", env="world", algo=name, **{K_STEP[name]: 4})
    result = export_checkpoint(step_dir, tmp_path / "models", fast_options(eval_episodes=0))
    assert result.version_dir.parent.name == f"world-{name}"
    assert result.manifest.network_evaluations_per_action == 4
    assert result.parity and all(r.passed for r in result.parity)


def test_bc_mse_policy_exports_to_onnx_with_parity(tmp_path):
    pytest.importorskip("onnxruntime")
    from export.exporter import export_checkpoint
    from export.testing import fast_options, write_checkpoint

    step_dir = write_checkpoint(tmp_path / "run", env="world", algo="bc_mse")
    result = export_checkpoint(step_dir, tmp_path / "models", fast_options(eval_episodes=0))
    assert result.manifest.network_evaluations_per_action == 1
    assert result.parity and all(r.passed for r in result.parity)

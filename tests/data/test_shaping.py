"""Pursuit shaping: a per-step distance cost that rewards closing in, seen by the behaviour learner only."""

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from training.behaviour.matd3 import MATD3Config, train
from training.behaviour.shaping import PursuitShaping, pursuit_distance
from training.envs import make_env


def test_closing_in_costs_less():
    with make_env("predator_prey") as env:
        env.reset(seed=3)
        world = env.world
        shaping = PursuitShaping("predator_prey", weight=2.0)
        far = shaping.bonus([env])[0]
        assert far == pytest.approx(-2.0 * pursuit_distance(world)) and far < 0
        prey = next(agent for agent in world.agents if not agent.adversary)
        for agent in world.agents:
            if agent.adversary:
                agent.state.p_pos = prey.state.p_pos + 0.01
        assert pursuit_distance(world) == pytest.approx(np.sqrt(2) * 0.01, rel=1e-6)
        assert shaping.bonus([env])[0] > far


def test_shaping_is_refused_where_nobody_pursues():
    with pytest.raises(ValueError, match="cooperative_navigation"):
        PursuitShaping("cooperative_navigation", weight=1.0)
    assert not PursuitShaping("cooperative_navigation", weight=0.0).enabled


def test_only_the_training_rewards_are_shaped(tmp_path):
    # Same seed, warm-up only (uniform actions, no updates): the same transitions, so the replay rewards
    # differ by the bonus while the evaluations, which report the environment's reward, are identical.
    def run(weight: float) -> tuple[list[dict], np.ndarray]:
        config = MATD3Config(
            env="predator_prey",
            steps=48,
            seed=2,
            warmup=48,
            eval_interval=48,
            eval_episodes=2,
            pursuit_shaping=weight,
        )
        history = train(config, tmp_path / f"w{weight}")
        replay = load_file(str(tmp_path / f"w{weight}" / "state" / "replay.safetensors"))
        return history, replay

    plain_history, plain = run(0.0)
    shaped_history, shaped = run(10.0)
    np.testing.assert_array_equal(plain["actions"], shaped["actions"])
    assert not np.allclose(plain["rewards"], shaped["rewards"])
    assert [h["mean_return"] for h in plain_history] == [h["mean_return"] for h in shaped_history]


def test_action_penalty_pulls_the_actor_out_of_saturation():
    # With a flat critic, Q gives the actor no gradient: only the penalty moves it, toward tanh's linear range.
    from training.behaviour.matd3 import MATD3
    from training.envs import env_spec

    spec = env_spec("predator_prey")
    torch.manual_seed(0)
    batch = {
        "observations": torch.randn(64, spec.n_agents, spec.obs_dim),
        "actions": torch.rand(64, spec.n_agents, spec.act_dim) * 2 - 1,
        "rewards": torch.zeros(64),
        "next_observations": torch.randn(64, spec.n_agents, spec.obs_dim),
        "terminals": torch.zeros(64),
    }

    def saturation_after_updates(penalty: float) -> tuple[float, float]:
        agent = MATD3(spec, MATD3Config(env="predator_prey", policy_delay=1, action_penalty=penalty))
        with torch.no_grad():
            for module in (agent.critic, agent.target_critic):
                for p in module.parameters():
                    p.zero_()
            agent.actor.net.layers[-1].weight.mul_(50.0)
        before = agent.actor.preactivations(batch["observations"]).abs().mean().item()
        for _ in range(20):
            agent.update(batch)
        return before, agent.actor.preactivations(batch["observations"]).abs().mean().item()

    before, after = saturation_after_updates(1e-3)
    assert after < 0.9 * before
    before, after = saturation_after_updates(0.0)
    assert after == pytest.approx(before)

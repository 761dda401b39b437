"""The environment layer: reproducibility, dims against the underlying spaces, the action mapping, bad actions."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from training.envs import (
    ENV_NAMES,
    env_spec,
    evaluate_policy,
    from_native,
    make_env,
    random_policy,
    to_native,
    validate_actions,
)

EXPECTED = {
    # name: (agents, obs_dims, act_dims, episode length) — from the paper's benchmark definitions
    "cooperative_navigation": (3, (18, 18, 18), (5, 5, 5), 25),
    "predator_prey": (3, (16, 16, 16), (5, 5, 5), 25),
    "world": (4, (34, 34, 34, 34), (9, 5, 5, 5), 25),
    "halfcheetah_2x3": (2, (12, 12), (3, 3), 1000),
}


def rollout(name: str, seed: int, steps: int) -> tuple[np.ndarray, list[float]]:
    """Observations and rewards of `steps` steps with seeded random actions."""
    rng = np.random.default_rng(seed)
    with make_env(name) as env:
        observations = [env.reset(seed=seed)]
        rewards = []
        for _ in range(steps):
            result = env.step(rng.uniform(-1, 1, (env.spec.n_agents, env.spec.act_dim)))
            observations.append(result.observations)
            rewards.append(result.reward)
    return np.stack(observations), rewards


@pytest.mark.parametrize("name", ENV_NAMES)
def test_same_seed_same_trajectory(name: str) -> None:
    first_obs, first_rewards = rollout(name, seed=3, steps=10)
    second_obs, second_rewards = rollout(name, seed=3, steps=10)
    other_obs, _ = rollout(name, seed=4, steps=10)
    np.testing.assert_array_equal(first_obs, second_obs)
    assert first_rewards == second_rewards
    assert not np.array_equal(first_obs, other_obs), "a different seed should give a different episode"


@pytest.mark.parametrize("name", ENV_NAMES)
def test_spec_matches_underlying_spaces(name: str) -> None:
    n_agents, obs_dims, act_dims, length = EXPECTED[name]
    spec = env_spec(name)
    assert spec.n_agents == n_agents
    assert spec.obs_dims == obs_dims
    assert spec.act_dims == act_dims
    assert spec.episode_length == length
    with make_env(name) as env:
        raw = env._env  # the wrapped PettingZoo parallel env: check against its own spaces
        for index, agent in enumerate(spec.agents):
            assert raw.observation_space(agent).shape == (obs_dims[index],)
            assert raw.action_space(agent).shape == (act_dims[index],)
            np.testing.assert_allclose(spec.native_low[index], raw.action_space(agent).low)
            np.testing.assert_allclose(spec.native_high[index], raw.action_space(agent).high)
        observations = env.reset(seed=0)
    assert observations.dtype == np.float32
    assert observations.shape == (spec.n_agents, spec.obs_dim)
    assert np.all(observations[~spec.obs_mask] == 0.0), "padding must be zero"


def test_world_pads_the_lead_adversary_action_and_masks_it() -> None:
    spec = env_spec("world")
    assert spec.act_dim == 9 and spec.padded
    assert spec.action_mask[0].all() and spec.action_mask[1].sum() == 5
    actions = np.zeros((4, 9), dtype=np.float32)
    actions[1:, 5:] = 123.0  # padded entries are ignored, whatever they hold
    valid = validate_actions(spec, actions)
    assert np.all(valid[1:, 5:] == 0.0)
    native = to_native(spec, valid)
    assert [a.shape[0] for a in native] == [9, 5, 5, 5]


@pytest.mark.parametrize("name", ENV_NAMES)
def test_action_mapping_round_trips(name: str) -> None:
    spec = env_spec(name)
    rng = np.random.default_rng(0)
    actions = np.where(spec.action_mask, rng.uniform(-1, 1, (spec.n_agents, spec.act_dim)), 0.0).astype(
        np.float32
    )
    native = to_native(spec, validate_actions(spec, actions))
    for index, values in enumerate(native):
        assert np.all(values >= np.asarray(spec.native_low[index]) - 1e-6)
        assert np.all(values <= np.asarray(spec.native_high[index]) + 1e-6)
    np.testing.assert_allclose(from_native(spec, native), actions, atol=1e-6)


def test_mpe_action_bounds_map_to_unit_interval() -> None:
    spec = env_spec("cooperative_navigation")
    native = to_native(spec, np.full((3, 5), -1.0, dtype=np.float32))
    assert all(np.all(a == 0.0) for a in native)
    native = to_native(spec, np.ones((3, 5), dtype=np.float32))
    assert all(np.all(a == 1.0) for a in native)


@pytest.mark.parametrize(
    "actions, message",
    [
        (np.zeros((2, 5)), r"shape \(3, 5\)"),
        (np.zeros((3, 4)), r"shape \(3, 5\)"),
        (np.zeros(15), r"shape \(3, 5\)"),
        (np.full((3, 5), np.nan), "NaN or Inf"),
        (np.full((3, 5), np.inf), "NaN or Inf"),
        (np.full((3, 5), 1.5), r"\[-1, 1\]"),
        ([["a"] * 5] * 3, r"shape \(3, 5\)"),
    ],
)
def test_bad_actions_raise_value_error_naming_the_shape(actions, message: str) -> None:
    with make_env("cooperative_navigation") as env:
        env.reset(seed=0)
        with pytest.raises(ValueError, match=message):
            env.step(actions)


def test_step_before_reset_and_after_done_is_refused() -> None:
    with make_env("cooperative_navigation") as env:
        with pytest.raises(RuntimeError, match="reset"):
            env.step(np.zeros((3, 5)))
        env.reset(seed=0)
        for _ in range(env.spec.episode_length - 1):
            assert not env.step(np.zeros((3, 5))).done
        last = env.step(np.zeros((3, 5)))
        assert last.done and last.info["truncated"] and not last.info["terminated"]
        with pytest.raises(RuntimeError, match="reset"):
            env.step(np.zeros((3, 5)))


def test_predator_prey_prey_flees() -> None:
    """The scripted prey must move away from the predators (a still prey would make the task trivial)."""
    with make_env("predator_prey") as env:
        env.reset(seed=1)
        world = env.world
        prey = next(a for a in world.agents if not a.adversary)

        def distance() -> float:
            return min(np.linalg.norm(prey.state.p_pos - a.state.p_pos) for a in world.agents if a.adversary)

        before = distance()
        for _ in range(5):
            env.step(np.full((3, 5), -1.0))  # predators stand still (no push)
        assert distance() > before


def test_vectorised_evaluation_matches_single_episodes() -> None:
    spec = env_spec("cooperative_navigation")
    policy = lambda obs: np.tanh(obs[..., :5])  # noqa: E731 - deterministic, observation-dependent
    batched = evaluate_policy("cooperative_navigation", policy, seeds=[0, 1, 2, 3, 4], n_envs=3)
    single = [
        evaluate_policy("cooperative_navigation", policy, seeds=[s], n_envs=1).returns[0] for s in range(5)
    ]
    np.testing.assert_allclose(batched.returns, single)
    assert np.all(batched.lengths == spec.episode_length)
    random_result = evaluate_policy("cooperative_navigation", random_policy(spec), seeds=range(4))
    assert random_result.returns.shape == (4,)


def test_cli_envs_json_lists_the_four_environments() -> None:
    output = subprocess.run(
        [sys.executable, "-m", "om2p", "envs", "--json"], capture_output=True, text=True, check=True
    ).stdout
    specs = {spec["name"]: spec for spec in json.loads(output)}
    assert set(specs) == set(ENV_NAMES)
    for name, (n_agents, obs_dims, act_dims, length) in EXPECTED.items():
        assert specs[name]["n_agents"] == n_agents
        assert tuple(specs[name]["obs_dims"]) == obs_dims
        assert tuple(specs[name]["act_dims"]) == act_dims
        assert specs[name]["episode_length"] == length


def test_predator_prey_prey_is_catchable() -> None:
    """Predators chasing head-on close in on the prey: the fixed opponent is fallible, as OMAR's pretrained
    prey is, so a learner can earn reward at all (a full-effort prey keeps ~0.8 away; measured 0.79)."""
    from training.envs.opponents import direction_to_mpe_action

    gaps = []
    for seed in range(10):
        with make_env("predator_prey") as env:
            env.reset(seed=seed)
            prey = next(a for a in env.world.agents if not a.adversary)
            predators = [a for a in env.world.agents if a.adversary]
            for _ in range(25):
                # Native [0, 1] pushes toward the prey, mapped to the env's [-1, 1] action range.
                native = np.stack(
                    [direction_to_mpe_action(prey.state.p_pos - p.state.p_pos) for p in predators]
                )
                env.step(native * 2.0 - 1.0)
            gaps.append(min(np.linalg.norm(prey.state.p_pos - p.state.p_pos) for p in predators))
    assert np.mean(gaps) < 0.5

"""Learning, determinism, checkpoints, resume and refusal of foreign checkpoints, through the real trainer
and the real cooperative-navigation environment."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from training.algos import Batch, get_algorithm
from training.checkpoint import CheckpointError, load_policy, read_info, resolve_checkpoint
from training.config import load_config
from training.trainer import train

ENV = "cooperative_navigation"


def test_behaviour_cloning_overfits_a_tiny_deterministic_dataset(spec, make_config):
    # alpha = 0: the actor loss is the mean-flow loss alone, i.e. behaviour cloning of the dataset.
    torch.manual_seed(0)
    config = make_config(
        alpha=0.0,
        actor_hidden=[64, 64],
        critic_hidden=[8],
        actor_lr=3e-3,
        batch_size=32,
        time_sampler="endpoint",
        equal_time_ratio=0.0,
    )
    generator = torch.Generator().manual_seed(0)
    n, o, a = spec.n_agents, spec.obs_dim, spec.act_dim
    observations = torch.randn(8, n, o, generator=generator)
    actions = torch.rand(8, n, a, generator=generator) * 1.6 - 0.8
    algorithm = get_algorithm("om2p")(spec, config, torch.zeros(n, o), torch.ones(n, o))
    index = torch.arange(32) % 8
    batch = Batch(
        observations[index], actions[index], torch.zeros(32, n), observations[index], torch.zeros(32, n)
    )
    with torch.no_grad():
        before = (algorithm.policy(observations, torch.zeros(8, n, a)) - actions).abs().mean()
    for _ in range(300):
        algorithm.update(batch)
    with torch.no_grad():
        after = (algorithm.policy(observations, torch.zeros(8, n, a)) - actions).abs().mean()
    assert before > 0.3
    assert after < 0.1, after


def _losses(spec, make_config, make_batch, seed: int) -> list[float]:
    config = make_config(seed=seed)
    torch.manual_seed(seed)
    n, o = spec.n_agents, spec.obs_dim
    algorithm = get_algorithm("om2p")(spec, config, torch.zeros(n, o), torch.ones(n, o))
    return [float(algorithm.update(make_batch(spec, 32, step))["loss/actor"]) for step in range(3)]


def test_same_seed_gives_the_same_losses(spec, make_config, make_batch):
    first = _losses(spec, make_config, make_batch, seed=3)
    assert first == _losses(spec, make_config, make_batch, seed=3)
    assert first != _losses(spec, make_config, make_batch, seed=4)


@pytest.mark.parametrize("estimator", ["jvp", "zero"])
def test_other_estimators_and_options_train(spec, make_config, make_batch, estimator):
    config = make_config(du_dt=estimator, share_parameters=True, centralised_critic=True, q_aggregate="min")
    n, o = spec.n_agents, spec.obs_dim
    algorithm = get_algorithm("om2p")(spec, config, torch.zeros(n, o), torch.ones(n, o))
    info = {k: float(v) for k, v in algorithm.update(make_batch(spec, 32)).items()}
    assert all(np.isfinite(list(info.values())))
    assert (info["du_dt/abs_mean"] == 0.0) == (estimator == "zero")
    # The raw Q of the actor's actions is logged beside the normalised loss, which is +-1 when signs agree.
    assert abs(info["loss/q"]) <= 1.0 + 1e-6 and info["q/policy"] != 0.0


def test_checkpoint_round_trip_and_resume(tmp_path, make_config, make_dataset):
    dataset = make_dataset()
    config = make_config(steps=4, eval_every=2)
    full = train(config, tmp_path / "full", dataset=dataset, progress=False)
    info = read_info(tmp_path / "full")
    assert info.step == 4 and info.path == full.checkpoint
    assert info.env == ENV and info.n_agents == 3  # the 3-agent benchmark, not the reference's 4 (pitfall 4)
    assert len(info.evaluation["returns"]) == 2 and info.evaluation["normalised_score"] is not None
    assert (tmp_path / "full" / "learning_curve.png").stat().st_size > 0
    assert (tmp_path / "full" / "metrics.csv").read_text().count("\n") == 5

    # load_policy rebuilds the policy from JSON alone; its actions equal those of the saved weights.
    policy, _ = load_policy(tmp_path / "full")
    weights = load_file(info.path / "weights.safetensors")
    for name, value in policy.state_dict().items():
        torch.testing.assert_close(value, weights[f"policy.{name}"])
    obs, noise = torch.randn(5, 3, 18), torch.randn(5, 3, 5)
    again, _ = load_policy(info.path)
    torch.testing.assert_close(policy(obs, noise), again(obs, noise))

    # Stopping at step 2 and resuming gives exactly the uninterrupted run's weights.
    train(config.replace(steps=2), tmp_path / "split", dataset=dataset, progress=False)
    train(config, tmp_path / "split", dataset=dataset, resume=True, progress=False)
    resumed = load_file(read_info(tmp_path / "split").path / "weights.safetensors")
    for name, value in weights.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=0)

    with pytest.raises(ValueError, match="already holds checkpoints"):
        train(config, tmp_path / "full", dataset=dataset, progress=False)
    with pytest.raises(CheckpointError, match="alpha"):
        train(
            config.replace(alpha=0.5, steps=6),
            tmp_path / "full",
            dataset=dataset,
            resume=True,
            progress=False,
        )


def test_checkpoint_of_another_environment_is_refused(tmp_path, make_config, make_dataset):
    train(make_config(steps=2), tmp_path / "run", dataset=make_dataset(), progress=False)
    with pytest.raises(CheckpointError, match="'cooperative_navigation', not 'predator_prey'"):
        load_policy(tmp_path / "run", env="predator_prey")
    from om2p.cli import main

    assert main(["eval", str(tmp_path / "run"), "--env", "predator_prey", "--episodes", "1"]) == 2


def test_om2p_eval_json(tmp_path, make_config, make_dataset, capsys):
    from om2p.cli import main

    train(make_config(steps=2), tmp_path / "run", dataset=make_dataset(), progress=False)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--episodes", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["episodes"] == 3 and report["env"] == ENV and report["step"] == 2
    expected = 100 * (report["mean_return"] + 150.0) / (-40.0 + 150.0)
    assert report["normalised_score"] == pytest.approx(expected)
    checkpoint = read_info(resolve_checkpoint(tmp_path / "run"))
    returns = checkpoint.evaluation["returns"]
    expected_se = 100 * np.std(returns, ddof=1) / np.sqrt(len(returns)) / (-40.0 + 150.0)
    assert checkpoint.evaluation["normalised_score_se"] == pytest.approx(expected_se)
    assert report["normalised_score_se"] is not None and report["normalised_score_se"] >= 0.0
    assert main(["eval", str(tmp_path / "missing")]) == 2


def test_config_file_flags_and_overrides(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("alpha: 0.5\nactor_hidden: [64, 64]\nsteps: 10\n")
    config = load_config(path, ["alpha=0.25", "du_dt=jvp"], steps=20, seed=None)
    assert (config.alpha, config.actor_hidden, config.steps, config.du_dt) == (0.25, [64, 64], 20, "jvp")
    with pytest.raises(ValueError, match="unknown config field"):
        load_config(None, ["alhpa=1"])
    with pytest.raises(ValueError, match="'du_dt'"):
        load_config(None, ["du_dt=exact"])
    with pytest.raises(ValueError, match="'steps' must be int"):
        load_config(None, ["steps=many"])


def _save_npz(path, make_dataset, spec) -> None:
    from training.data import OfflineDataset, save_dataset

    arrays = make_dataset(transitions=100)
    ends = np.zeros(100, dtype=bool)
    ends[24::25] = True
    metadata = {
        "env": ENV,
        "agents": list(spec.agents),
        "obs_dim": spec.obs_dim,
        "act_dim": spec.act_dim,
        "obs_dims": list(spec.obs_dims),
        "act_dims": list(spec.act_dims),
        "action_mask": spec.action_mask.tolist(),
        "quality": "expert",
        "seed": 0,
        "transitions": 100,
        "episodes": 4,
        "episode_returns": [0.0] * 4,
        "reference_returns": {"expert": -40.0, "random": -150.0},
        "references": {"expert": {"mean": -40.0, "se": 0.5}, "random": {"mean": -150.0, "se": 1.0}},
        "behaviour_checkpoint_sha256": "0" * 64,
    }
    save_dataset(
        path,
        OfflineDataset(
            arrays.observations,
            arrays.actions,
            arrays.rewards,
            arrays.next_observations,
            arrays.dones,
            ends,
            metadata,
        ),
    )


def test_om2p_train_command_on_a_dataset_file(tmp_path, spec, make_dataset, capsys):
    from om2p.cli import main
    from training.checkpoint import sha256_of

    path = tmp_path / "expert.npz"
    _save_npz(path, make_dataset, spec)
    common = ["--dataset", str(path), "--steps", "2", "--eval-every", "2", "--eval-episodes", "2"]
    small = [
        "--set",
        "actor_hidden=[16]",
        "--set",
        "critic_hidden=[16]",
        "--set",
        "eval_envs=2",
        "--no-progress",
    ]
    argv = ["train", "--env", ENV, *common, *small, "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    info = read_info(summary["checkpoint"])
    assert info.step == 2 and info.dataset["sha256"] == sha256_of(path)
    assert info.dataset["quality"] == "expert" and info.config["actor_hidden"] == [16]
    # A dataset of another environment is refused, one line, exit code 2.
    other = ["train", "--env", "predator_prey", *common, *small, "--out", str(tmp_path / "other")]
    assert main(other) == 2
    assert "cooperative_navigation" in capsys.readouterr().err


def test_resume_accepts_a_checkpoint_written_before_a_config_field_existed(
    tmp_path, make_config, make_dataset
):
    import json

    dataset, config = make_dataset(), make_config(steps=4, eval_every=2)
    train(config.replace(steps=2), tmp_path / "run", dataset=dataset, progress=False)
    meta_path = read_info(tmp_path / "run").path / "checkpoint.json"
    meta = json.loads(meta_path.read_text())
    del meta["config"]["omar"]["elites"]  # as if written by a version without this field (it ran the default)
    meta_path.write_text(json.dumps(meta))
    train(config, tmp_path / "run", dataset=dataset, resume=True, progress=False)
    assert read_info(tmp_path / "run").step == 4


def test_resume_accepts_a_checkpoint_with_the_flat_baseline_fields_of_older_versions(
    tmp_path, make_config, make_dataset
):
    import json

    dataset, config = make_dataset(), make_config(algo="flow", steps=4, eval_every=2, **{"flow.steps": 2})
    train(config.replace(steps=2), tmp_path / "run", dataset=dataset, progress=False)
    meta_path = read_info(tmp_path / "run").path / "checkpoint.json"
    meta = json.loads(meta_path.read_text())
    # Written before the per-algorithm sections: flow_steps, td3bc_alpha, ... at the top level.
    sections = {name: meta["config"].pop(name) for name in ("flow", "matd3bc")}
    meta["config"].update(flow_steps=sections["flow"]["steps"], td3bc_alpha=sections["matd3bc"]["alpha"])
    meta["config"]["policy_delay"] = sections["matd3bc"]["policy_delay"]
    meta_path.write_text(json.dumps(meta))
    train(config, tmp_path / "run", dataset=dataset, resume=True, progress=False)
    assert read_info(tmp_path / "run").step == 4
    # A recorded flat field that differs from the run's section is still a different configuration.
    meta = json.loads((read_info(tmp_path / "run").path / "checkpoint.json").read_text())
    meta["config"].pop("flow")
    meta["config"]["flow_steps"] = 7
    (read_info(tmp_path / "run").path / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"flow\.steps: 7 -> 2"):
        train(config.replace(steps=6), tmp_path / "run", dataset=dataset, resume=True, progress=False)


def test_reward_scale_multiplies_the_rewards_the_critics_learn_from(make_dataset):
    from training.config import TrainConfig
    from training.trainer import ReplayTensors

    dataset = make_dataset()
    plain = ReplayTensors(dataset, torch.device("cpu"))
    scaled = ReplayTensors(dataset, torch.device("cpu"), reward_scale=10.0)
    torch.testing.assert_close(scaled.rewards, plain.rewards * 10.0)
    torch.testing.assert_close(scaled.observations, plain.observations)
    with pytest.raises(ValueError, match="reward_scale"):
        TrainConfig(reward_scale=0.0)

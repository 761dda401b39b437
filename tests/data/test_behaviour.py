import json

import numpy as np

from training.behaviour.actor import load_actor
from training.behaviour.matd3 import MATD3Config, train
from training.behaviour.registry import load_manifest
from training.envs import env_spec

ENV = "cooperative_navigation"


def test_run_writes_checkpoints_and_evaluations(tiny_run):
    history = json.loads((tiny_run / "evaluations.json").read_text())
    assert [h["step"] for h in history] == [0, 100, 200, 300, 400]
    assert all(np.isfinite(h["mean_return"]) for h in history)
    assert "critic_loss" in history[-1]
    actor, info = load_actor(tiny_run / "checkpoints" / "step_00000400", env_spec(ENV))
    assert info["step"] == 400
    # Learning happened: the last actor differs from the initial one.
    initial, _ = load_actor(tiny_run / "checkpoints" / "step_00000000", env_spec(ENV))
    assert not np.allclose(actor.net.layers[0].weight.detach(), initial.net.layers[0].weight.detach())


def test_resume_continues_the_run(tmp_path):
    config = MATD3Config(
        env=ENV, steps=200, seed=5, warmup=50, eval_interval=100, eval_episodes=2, batch_size=16
    )
    train(config, tmp_path / "run")
    config.steps = 300
    history = train(config, tmp_path / "run", resume=True)
    assert [h["step"] for h in history] == [0, 100, 200, 300]
    progress = json.loads((tmp_path / "run" / "state" / "progress.json").read_text())
    assert progress["step"] == 300 and progress["updates"] > 0
    # The extended run's config says so (shipping and the dataset report read it).
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["steps"] == 300 and saved["extra"]["resumed_at"] == [200]


def test_shipped_manifest_orders_the_qualities(checkpoint_root):
    manifest = load_manifest(ENV, checkpoint_root)
    qualities = manifest["qualities"]
    assert qualities["random"]["step"] == 0
    assert qualities["medium"]["step"] <= qualities["expert"]["step"]
    assert manifest["reference_returns"]["expert"] == qualities["expert"]["mean_return"]
    assert manifest["medium_replay"]["actors"][0]["step"] == 0


def test_ship_can_pick_on_fresh_evaluations(tiny_run, tmp_path):
    from training.behaviour.registry import ship_behaviour

    manifest = ship_behaviour(tiny_run, ENV, tmp_path, replay_every=1, eval_episodes=2, selection_episodes=3, reference_episodes=2)
    run_history = {h["step"]: h["mean_return"] for h in json.loads((tiny_run / "evaluations.json").read_text())}
    expert = manifest["qualities"]["expert"]
    assert manifest["selection_episodes"] == 3
    assert expert["training_eval_return"] == run_history[expert["step"]]
    assert np.isfinite(expert["selection_return"])

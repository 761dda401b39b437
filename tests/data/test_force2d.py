"""cooperative_navigation with 2-D force actions: the same dynamics as mpe2's 5-D actions, and datasets
converted to it replay to the same observations and rewards."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from om2p.cli import main
from training.data.force2d import FORCE_ENV, to_force_actions
from training.data.format import load_dataset, save_dataset
from training.envs import make_env
from training.envs.mpe import force_to_mpe2, mpe2_to_force

ENV = "cooperative_navigation"


def test_force_mapping_is_exact_both_ways():
    rng = np.random.default_rng(0)
    force = rng.uniform(-1, 1, size=(100, 2)).astype(np.float32)
    native = force_to_mpe2(force)
    assert native.shape == (100, 5) and native.min() >= 0.0 and native.max() <= 1.0
    assert np.all(native[:, 0] == 0.0)  # mpe2's no-op entry
    np.testing.assert_array_equal(mpe2_to_force(native), force)


def test_the_force_env_moves_as_mpe2_does():
    rng = np.random.default_rng(1)
    with make_env(ENV) as five, make_env(FORCE_ENV) as two:
        assert two.spec.act_dims == (2, 2, 2) and two.spec.obs_dims == five.spec.obs_dims
        obs5, obs2 = five.reset(seed=7), two.reset(seed=7)
        np.testing.assert_array_equal(obs5, obs2)
        for _ in range(25):
            actions = rng.uniform(-1, 1, size=(3, 5)).astype(np.float32)  # every entry moves freely
            native = (actions + 1.0) / 2.0
            obs5, reward5, done5, _ = five.step(actions)
            obs2, reward2, done2, _ = two.step(mpe2_to_force(native))
            np.testing.assert_allclose(obs2, obs5, atol=1e-5)
            assert reward2 == pytest.approx(reward5, abs=1e-5) and done2 == done5


def test_a_converted_dataset_replays_in_the_force_env(tiny_dataset, tmp_path, capsys):
    source = tmp_path / "expert.npz"
    save_dataset(source, tiny_dataset)
    out = tmp_path / "force2d.npz"
    assert main(["data", "force2d", "--dataset", str(source), "--out", str(out)]) == 0
    assert "cooperative_navigation_force2d / expert" in capsys.readouterr().out
    converted = load_dataset(out, env=FORCE_ENV)
    assert converted.actions.shape == (*tiny_dataset.actions.shape[:2], 2)
    for name in ("observations", "rewards", "next_observations", "dones", "episode_ends"):
        np.testing.assert_array_equal(getattr(converted, name), getattr(tiny_dataset, name))
    assert converted.metadata["references"] == tiny_dataset.metadata["references"]
    # The force each recorded 5-D action applied (test_the_force_env_moves_as_mpe2_does: the same motion).
    np.testing.assert_allclose(
        converted.actions, mpe2_to_force((tiny_dataset.actions + 1.0) / 2.0), atol=1e-6
    )


def test_force2d_refuses_other_environments(tiny_dataset, tmp_path):
    wrong = tmp_path / "wrong.npz"
    metadata = {**tiny_dataset.metadata, "env": FORCE_ENV}
    with pytest.raises(ValueError, match="expected 'cooperative_navigation'"):
        to_force_actions(replace(tiny_dataset, metadata=metadata), wrong)

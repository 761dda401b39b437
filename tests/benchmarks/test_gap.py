"""benchmarks/gap.py (issue 20): its measurement list and resumption, without running any of it."""

from __future__ import annotations

import json

from benchmarks import gap


def test_measurement_keys_are_unique_and_runs_use_the_grid_size():
    items = gap.measurements()
    keys = [gap.key_of(item) for item in items]
    assert len(keys) == len(set(keys))
    runs = [item for item in items if isinstance(item, gap.Run)]
    assert {run.algo for run in runs} >= {"bc_mse", "bc", "om2p"}
    assert gap.SMALL == {"actor_hidden": [128, 128], "critic_hidden": [128, 128], "batch_size": 128}


def test_done_keys_resume_from_the_jsonl(tmp_path):
    path = tmp_path / "gap.jsonl"
    assert gap.done_keys(path) == set()
    path.write_text(json.dumps({"key": "data", "normalised_score": 98.8}) + "\n\n")
    assert gap.done_keys(path) == {"data"}


def test_score_stats_carry_the_standard_error():
    stats = gap.score_stats([-20.0, -10.0], {"expert": -10.0, "random": -30.0})
    assert stats["normalised_score"] == 75.0 and stats["episodes"] == 2
    assert abs(stats["normalised_score_se"] - 100 * 5.0 / 20.0) < 1e-9  # std 7.07 / sqrt 2 = 5 of 20

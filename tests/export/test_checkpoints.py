"""Corrupt or mismatched checkpoints are refused with one line naming the file, and nothing is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from om2p.cli import main
from training.checkpoint import INFO_FILE, WEIGHTS_FILE


@pytest.fixture
def damaged(checkpoint: Path, tmp_path: Path) -> Path:
    """A private copy of the shared checkpoint's step directory."""
    target = tmp_path / "run" / "checkpoints" / checkpoint.name
    shutil.copytree(checkpoint, target)
    return target


def edit_info(step_dir: Path, change) -> None:
    path = step_dir / INFO_FILE
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def refuse(step_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> str:
    out = tmp_path / "models"
    code = main(["export", str(step_dir), "--out", str(out), "--exporter", "torchscript", "--no-tensorrt"])
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert len(error.splitlines()) == 1 and "Traceback" not in error
    assert not out.exists()
    return error


def test_truncated_weights(damaged: Path, tmp_path: Path, capsys) -> None:
    weights = damaged / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    error = refuse(damaged, tmp_path, capsys)
    assert str(weights) in error


def test_weights_whose_shapes_disagree_with_the_json(damaged: Path, tmp_path: Path, capsys) -> None:
    edit_info(damaged, lambda d: d["config"].update(actor_hidden=[32, 32]))
    error = refuse(damaged, tmp_path, capsys)
    assert f"{damaged / WEIGHTS_FILE}: weights do not fit the recorded config" in error


def test_json_of_another_environment(damaged: Path, tmp_path: Path, capsys) -> None:
    edit_info(damaged, lambda d: d.update(env="world"))
    error = refuse(damaged, tmp_path, capsys)
    assert str(damaged / INFO_FILE) in error and "'world'" in error


def test_observation_statistics_of_the_wrong_shape(damaged: Path, tmp_path: Path, capsys) -> None:
    edit_info(damaged, lambda d: d.update(obs_std=[row[:-1] for row in d["obs_std"]]))
    error = refuse(damaged, tmp_path, capsys)
    assert f"{damaged / INFO_FILE}: field 'obs_std'" in error


def test_checkpoint_json_that_is_not_json(damaged: Path, tmp_path: Path, capsys) -> None:
    (damaged / INFO_FILE).write_text('{"format_version": 1, "algo": ')
    error = refuse(damaged, tmp_path, capsys)
    assert f"{damaged / INFO_FILE}: not valid JSON" in error


def test_missing_checkpoint(tmp_path: Path, capsys) -> None:
    error = refuse(tmp_path / "no-such-run", tmp_path, capsys)
    assert "no-such-run: no such checkpoint" in error

"""`om2p export` as `make export` runs it, and the done-when check: `om2p eval` of a checkpoint and an
evaluation of its export through ONNX Runtime give the same returns for the same seeds."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from export.evaluation import evaluate_onnx, returns_agree
from export.manifest import load_manifest
from export.testing import write_checkpoint
from om2p.cli import main


def test_newest_run_is_exported_and_tensorrt_skip_is_explained(tmp_path: Path, capsys) -> None:
    runs = tmp_path / "runs"
    old = write_checkpoint(runs / "old-run", actor_hidden=[32])
    new = write_checkpoint(runs / "new-run", actor_hidden=[48])
    os.utime(old / "checkpoint.json", (1, 1))  # make the order independent of the file system's clock
    code = main(
        ["export", "--newest", str(runs), "--out", str(tmp_path / "models"), "--exporter", "torchscript"]
    )
    printed = capsys.readouterr().out
    assert code == 0
    manifest = load_manifest(tmp_path / "models" / "cooperative_navigation" / "1")
    assert manifest.config_summary["checkpoint"] == str(new)
    assert manifest.config_summary["actor_hidden"] == [48]
    assert "parity ok: model.onnx on onnxruntime-cpu (fp32)" in printed
    from export.tensorrt_engine import tensorrt_unavailable_reason

    reason = tensorrt_unavailable_reason()
    if reason is not None:
        assert f"TensorRT skipped: {reason}" in printed


def test_export_needs_exactly_one_source(tmp_path: Path, capsys) -> None:
    assert main(["export", "--out", str(tmp_path)]) == 2
    assert "give a CHECKPOINT or --newest RUNS" in capsys.readouterr().err


def test_om2p_eval_and_onnxruntime_agree_seed_by_seed(exported, checkpoint: Path, capsys) -> None:
    seeds = list(range(7, 12))
    assert main(["eval", str(checkpoint), "--episodes", "5", "--seed", "7", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    onnx_returns = evaluate_onnx(
        exported.version_dir / "model.onnx", exported.manifest.env, 5, seeds, n_envs=5
    )
    assert report["mean_return"] == pytest.approx(sum(onnx_returns) / len(onnx_returns), abs=1e-3)
    # and the per-seed returns export recorded from PyTorch are reproduced through ONNX Runtime
    evaluation = exported.manifest.evaluation
    again = evaluate_onnx(exported.version_dir / "model.onnx", exported.manifest.env, 5, evaluation.seeds)
    assert returns_agree(evaluation.returns, again)


def test_print_schema(capsys) -> None:
    assert main(["export", "--print-schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "source_checkpoint_sha256" in schema["required"]


def test_copied_repository_still_loads(exported, tmp_path: Path) -> None:
    """Nothing in a version directory depends on where it was written (the bundled default is copied)."""
    target = tmp_path / "elsewhere" / "1"
    shutil.copytree(exported.version_dir, target)
    assert load_manifest(target) == exported.manifest

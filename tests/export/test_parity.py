"""Exported graphs compute what the checkpoint computes: at export and afterwards, at batch sizes the
exporter never saw, for K-step samplers and for padded (masked) action spaces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export.exporter import export_checkpoint
from export.manifest import load_manifest
from export.parity import TOLERANCES, check_parity, onnxruntime_runner, torch_runner
from export.testing import fast_options, write_checkpoint
from training.checkpoint import load_policy


def test_export_records_parity_for_every_onnx_file(exported) -> None:
    records = {(r.file, r.precision): r for r in exported.manifest.parity}
    assert set(records) == {("model.onnx", "fp32"), ("model.fp16.onnx", "fp16")}
    for record in records.values():
        assert record.batch_sizes == [1, 7, 256]
        assert 0.0 <= record.max_abs_error <= TOLERANCES[record.precision]


@pytest.mark.parametrize("filename, precision", [("model.onnx", "fp32"), ("model.fp16.onnx", "fp16")])
def test_published_graph_matches_pytorch_at_unseen_batch_sizes(
    exported, checkpoint, filename, precision
) -> None:
    policy, info = load_policy(checkpoint)
    result = check_parity(
        torch_runner(policy),
        onnxruntime_runner(exported.version_dir / filename),
        file=filename,
        backend="onnxruntime-cpu",
        precision=precision,
        obs_mean=np.asarray(info.obs_mean, np.float32),
        obs_std=np.asarray(info.obs_std, np.float32),
        act_dim=info.act_dim,
        batch_sizes=(3, 1000, 4096),
        seed=1234,
    )
    assert result.passed, result.describe()


def test_graph_signature_is_the_contract(exported) -> None:
    import onnx

    from export.onnx_graph import tensor_shapes

    model = onnx.load(str(exported.version_dir / "model.onnx"))
    inputs, outputs = tensor_shapes(model)
    assert inputs == {"obs": [-1, 3, 18], "noise": [-1, 3, 5]}
    assert outputs == {"actions": [-1, 3, 5]}
    assert exported.manifest.opset >= 17


def test_actions_are_clipped_inside_the_graph(exported) -> None:
    run = onnxruntime_runner(exported.version_dir / "model.onnx")
    rng = np.random.default_rng(0)
    obs = (100.0 * rng.standard_normal((64, 3, 18))).astype(np.float32)
    noise = (10.0 * rng.standard_normal((64, 3, 5))).astype(np.float32)
    actions = run(obs, noise)
    assert np.all(np.abs(actions) <= 1.0)
    assert np.any(np.abs(actions) == 1.0)  # inputs this large saturate some entries: clipping did the work


def test_k_step_sampler_exports_with_its_evaluation_count(tmp_path: Path) -> None:
    step_dir = write_checkpoint(tmp_path / "run", sampling_steps=3)
    result = export_checkpoint(step_dir, tmp_path / "models", fast_options())
    assert result.version_dir == tmp_path / "models" / "cooperative_navigation-om2p-k3" / "1"
    assert result.manifest.network_evaluations_per_action == 3
    assert all(r.passed for r in result.parity)


def test_padded_agents_get_zero_actions_in_masked_entries(tmp_path: Path) -> None:
    step_dir = write_checkpoint(tmp_path / "run", env="world")
    result = export_checkpoint(step_dir, tmp_path / "models", fast_options(eval_episodes=0))
    manifest = load_manifest(result.version_dir)
    mask = np.asarray(manifest.action_mask)
    assert not mask.all()  # world pads act_dim: the test is meaningless otherwise
    rng = np.random.default_rng(1)
    obs = rng.standard_normal((16, manifest.n_agents, manifest.obs_dim)).astype(np.float32)
    noise = rng.standard_normal((16, manifest.n_agents, manifest.act_dim)).astype(np.float32)
    actions = onnxruntime_runner(result.version_dir / "model.onnx")(obs, noise)
    assert np.all(actions[:, ~mask] == 0.0)
    assert np.any(actions[:, mask] != 0.0)

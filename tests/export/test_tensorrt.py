"""The TensorRT and ONNX Runtime CUDA paths: run where TensorRT / onnxruntime-gpu and a GPU exist, skipped
with the reason elsewhere; without them, exports that require TensorRT are refused with that reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export.errors import ExportError
from export.exporter import export_checkpoint
from export.parity import check_parity, cuda_provider_unavailable_reason, onnxruntime_runner, torch_runner
from export.tensorrt_engine import PROFILE, tensorrt_unavailable_reason
from export.testing import fast_options

TENSORRT_REASON = tensorrt_unavailable_reason()
CUDA_EP_REASON = cuda_provider_unavailable_reason()


@pytest.mark.skipif(TENSORRT_REASON is not None, reason=f"needs TensorRT and a GPU: {TENSORRT_REASON}")
def test_tensorrt_engines_match_pytorch_across_the_profile(checkpoint: Path, tmp_path: Path) -> None:
    from export.tensorrt_engine import tensorrt_runner
    from training.checkpoint import load_policy

    result = export_checkpoint(checkpoint, tmp_path / "models", fast_options(fp16=True, tensorrt="require"))
    plans = {(f.path, f.precision) for f in result.manifest.files if f.format == "tensorrt"}
    assert plans == {("model.plan", "fp32"), ("model.fp16.plan", "fp16")}
    assert result.manifest.tensorrt is not None and result.manifest.tensorrt.profile == PROFILE
    assert (tmp_path / "models" / ".tensorrt-timing.cache").is_file()
    policy, info = load_policy(checkpoint)
    for filename, precision in sorted(plans):
        check = check_parity(
            torch_runner(policy),
            tensorrt_runner(result.version_dir / filename, info.n_agents, info.act_dim),
            file=filename,
            backend="tensorrt",
            precision=precision,
            obs_mean=np.asarray(info.obs_mean, np.float32),
            obs_std=np.asarray(info.obs_std, np.float32),
            act_dim=info.act_dim,
            batch_sizes=(PROFILE["min"], 33, PROFILE["max"]),
        )
        assert check.passed, check.describe()


@pytest.mark.skipif(
    TENSORRT_REASON is None, reason="TensorRT is available here, so a required build succeeds"
)
def test_requiring_tensorrt_without_it_is_refused_with_the_reason(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="--tensorrt: " + TENSORRT_REASON.split(" (")[0]):
        export_checkpoint(checkpoint, tmp_path / "models", fast_options(tensorrt="require"))
    assert not (tmp_path / "models").exists()


@pytest.mark.skipif(
    CUDA_EP_REASON is not None, reason=f"needs the ONNX Runtime CUDA provider: {CUDA_EP_REASON}"
)
def test_onnxruntime_cuda_provider_matches_pytorch(exported, checkpoint: Path) -> None:
    from training.checkpoint import load_policy

    assert {r.backend for r in exported.manifest.parity} >= {"onnxruntime-cpu", "onnxruntime-cuda"}
    policy, info = load_policy(checkpoint)
    check = check_parity(
        torch_runner(policy),
        onnxruntime_runner(exported.version_dir / "model.onnx", "CUDAExecutionProvider"),
        file="model.onnx",
        backend="onnxruntime-cuda",
        precision="fp32",
        obs_mean=np.asarray(info.obs_mean, np.float32),
        obs_std=np.asarray(info.obs_std, np.float32),
        act_dim=info.act_dim,
        batch_sizes=(5, 999),
    )
    assert check.passed, check.describe()

"""The bundled default policy (`server/bundled/cooperative_navigation/<version>/`): intact, trained, and
reproducing through ONNX Runtime, seed by seed, the returns that `om2p eval` (PyTorch) recorded at export.
Runs without torch-side inputs: no training run or checkpoint needs to be present."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.evaluation import evaluate_onnx, returns_agree
from export.manifest import load_manifest, resolve_version_dir

BUNDLED = Path(__file__).resolve().parents[2] / "server" / "bundled" / "cooperative_navigation"
MIN_NORMALISED_SCORE = 80.0

pytestmark = pytest.mark.skipif(
    not BUNDLED.is_dir(), reason=f"no bundled policy committed yet in {BUNDLED} (export a trained run there)"
)


@pytest.fixture(scope="module")
def bundled():
    version_dir = resolve_version_dir(BUNDLED)
    return version_dir, load_manifest(version_dir)  # checks every file's sha256


def test_bundled_policy_is_a_trained_om2p_cooperative_navigation_policy(bundled) -> None:
    _, manifest = bundled
    assert (manifest.env, manifest.algo, manifest.network_evaluations_per_action) == (
        "cooperative_navigation",
        "om2p",
        1,
    )
    assert manifest.evaluation is not None and manifest.evaluation.normalised_score is not None
    assert manifest.evaluation.normalised_score >= MIN_NORMALISED_SCORE
    assert all(record.max_abs_error <= record.tolerance for record in manifest.parity)


def test_onnxruntime_reproduces_the_recorded_pytorch_returns(bundled) -> None:
    version_dir, manifest = bundled
    evaluation = manifest.evaluation
    assert len(evaluation.returns) == len(evaluation.seeds) == evaluation.episodes > 0
    returns = evaluate_onnx(version_dir / "model.onnx", manifest.env, manifest.act_dim, evaluation.seeds)
    assert returns_agree(evaluation.returns, returns)

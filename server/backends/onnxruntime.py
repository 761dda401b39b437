"""ONNX Runtime: CPU everywhere; the TensorRT and CUDA execution providers first when installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from server.backends import ModelSpec
from server.backends.manifest_spec import load_exported

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, session, description: str) -> None:
        self.session = session
        self.description = description
        self._output = ["actions"]

    @classmethod
    def load(cls, model_path: Path, intra_op_threads: int = 1) -> tuple[OnnxRuntimeBackend, ModelSpec]:
        import onnxruntime as ort

        version_dir, manifest, spec = load_exported(model_path)
        artifact = manifest.file("onnx", "fp32")
        if artifact is None:
            raise ValueError(f"{version_dir}/manifest.json: field 'files': no fp32 ONNX model listed")
        options = ort.SessionOptions()
        # Small MLP batches: one thread avoids the thread-pool wake-up that costs more than the matmuls, and
        # leaves the other cores to the event loop.
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        available = set(ort.get_available_providers())
        providers = [p for p in PREFERRED_PROVIDERS if p in available]
        try:
            session = ort.InferenceSession(str(version_dir / artifact.path), options, providers=providers)
        except Exception as error:  # onnxruntime raises its own exception types
            raise ValueError(f"{version_dir / artifact.path}: ONNX Runtime cannot load it: {error}") from None
        return cls(session, ",".join(session.get_providers())), spec

    def run(self, obs: np.ndarray, noise: np.ndarray) -> np.ndarray:
        return self.session.run(self._output, {"obs": obs, "noise": noise})[0]

    def close(self) -> None:
        self.session = None

"""ONNX Runtime: CPU everywhere; the TensorRT and CUDA execution providers first when installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from export.session import available_preferred_providers, open_session
from server.backends import ModelSpec
from server.backends.manifest_spec import load_exported


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, session, description: str) -> None:
        self.session = session
        self.description = description
        self._output = ["actions"]

    @classmethod
    def load(cls, model_path: Path, intra_op_threads: int = 1) -> tuple[OnnxRuntimeBackend, ModelSpec]:
        version_dir, manifest, spec = load_exported(model_path)
        artifact = manifest.file("onnx", "fp32")
        if artifact is None:
            raise ValueError(f"{version_dir}/manifest.json: field 'files': no fp32 ONNX model listed")
        session = open_session(
            version_dir / artifact.path, threads=intra_op_threads, providers=available_preferred_providers()
        )
        return cls(session, ",".join(session.get_providers())), spec

    def run(self, obs: np.ndarray, noise: np.ndarray) -> np.ndarray:
        return self.session.run(self._output, {"obs": obs, "noise": noise})[0]

    def close(self) -> None:
        self.session = None

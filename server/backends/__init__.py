"""Inference backends behind one small interface: `run(obs [B, N, obs_dim], noise [B, N, act_dim]) ->
actions [B, N, act_dim]` (float32, thread-safe for one caller at a time), `close()`.

ONNX Runtime is the default and the only one on the serving path without GPU packages; TensorRT and
PyTorch are imported lazily, so `om2p serve` never imports torch unless asked to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from export.manifest import ModelManifest


@dataclass(frozen=True)
class ModelSpec:
    """What the web layer needs to validate requests and describe the model."""

    name: str
    version: int
    agents: tuple[str, ...]
    obs_dim: int
    act_dim: int
    action_mask: np.ndarray  # [n_agents, act_dim] bool
    action_low: float
    action_high: float
    source: Path  # version dir (or checkpoint dir for torch)
    env: str = ""
    algo: str = ""

    @property
    def n_agents(self) -> int:
        return len(self.agents)

    @classmethod
    def from_manifest(cls, manifest: ModelManifest, version_dir: Path) -> ModelSpec:
        """The spec of an exported model, from its (already validated) manifest."""
        return cls(
            name=manifest.name,
            version=manifest.version,
            agents=tuple(manifest.agents),
            obs_dim=manifest.obs_dim,
            act_dim=manifest.act_dim,
            action_mask=np.asarray(manifest.action_mask, dtype=bool),
            action_low=manifest.action_low,
            action_high=manifest.action_high,
            source=version_dir,
            env=manifest.env,
            algo=manifest.algo,
        )


class Backend(Protocol):
    name: str
    description: str  # e.g. the execution providers in use

    def run(self, obs: np.ndarray, noise: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


def batch_buckets(max_batch_rows: int) -> list[int]:
    """Batch sizes to warm up (and to pad to, for static-shape engines): powers of two up to the maximum."""
    buckets, size = [], 1
    while size < max_batch_rows:
        buckets.append(size)
        size *= 2
    return [*buckets, max_batch_rows]


def load_backend(
    kind: str, model_path: Path, *, intra_op_threads: int = 1, device: str = "auto", max_batch_rows: int = 256
) -> tuple[Backend, ModelSpec]:
    """Load the model at `model_path` on backend `kind`; raises `ValueError`/`FileNotFoundError` (incl.
    `ManifestError`) with a message naming the file and what is wrong."""
    if kind == "onnxruntime":
        from server.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend.load(model_path, intra_op_threads=intra_op_threads)
    if kind == "tensorrt":
        from server.backends.tensorrt import TensorRTBackend

        return TensorRTBackend.load(model_path, max_batch_rows=max_batch_rows)
    if kind == "torch":
        from server.backends.torch import TorchBackend

        return TorchBackend.load(
            model_path, device=device, max_batch_rows=max_batch_rows, intra_op_threads=intra_op_threads
        )
    raise ValueError(f"--backend {kind!r}: choose onnxruntime, tensorrt or torch")

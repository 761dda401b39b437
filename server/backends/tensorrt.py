"""TensorRT: run the exported engine (`model.plan`, listed in the manifest) with preallocated device buffers
sized for the largest batch, so a request never allocates GPU memory. Device memory and the stream come
from torch (export builds engines with torch present already; this avoids a pycuda dependency). Imported
only for `--backend tensorrt`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from server.backends import ModelSpec
from server.backends.manifest_spec import load_exported


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, engine, spec: ModelSpec, max_batch_rows: int, plan: Path) -> None:
        import tensorrt as trt
        import torch

        self.torch, self.engine, self.plan = torch, engine, plan
        self.context = engine.create_execution_context()
        self.max_rows = max_batch_rows
        n, obs_dim, act_dim = spec.n_agents, spec.obs_dim, spec.act_dim
        device = torch.device("cuda")
        # Pinned host buffers make the host<->device copies asynchronous and fast.
        self.obs = torch.empty((max_batch_rows, n, obs_dim), dtype=torch.float32, device=device)
        self.noise = torch.empty((max_batch_rows, n, act_dim), dtype=torch.float32, device=device)
        self.actions = torch.empty((max_batch_rows, n, act_dim), dtype=torch.float32, device=device)
        self.host_obs = torch.empty((max_batch_rows, n, obs_dim), dtype=torch.float32).pin_memory()
        self.host_noise = torch.empty((max_batch_rows, n, act_dim), dtype=torch.float32).pin_memory()
        self.host_actions = torch.empty((max_batch_rows, n, act_dim), dtype=torch.float32).pin_memory()
        self.stream = torch.cuda.Stream(device)
        for name, tensor in (("obs", self.obs), ("noise", self.noise), ("actions", self.actions)):
            self.context.set_tensor_address(name, tensor.data_ptr())
        self.description = f"TensorRT {trt.__version__} on {torch.cuda.get_device_name(device)}"

    @classmethod
    def load(cls, model_path: Path, max_batch_rows: int = 256) -> tuple[TensorRTBackend, ModelSpec]:
        try:
            import tensorrt as trt
            import torch
        except ImportError as error:
            raise ValueError(
                f"--backend tensorrt: {error.name} is not installed (pip install 'om2p[gpu]' on a host with an "
                "NVIDIA GPU), or use --backend onnxruntime"
            ) from None
        if not torch.cuda.is_available():
            raise ValueError("--backend tensorrt: no CUDA GPU is visible")
        version_dir, manifest, spec = load_exported(model_path)
        artifact = manifest.file("tensorrt", "fp16") or manifest.file("tensorrt", "fp32")
        if artifact is None:
            raise ValueError(
                f"{version_dir}/manifest.json: field 'files': no TensorRT engine listed (export with --tensorrt "
                "on this GPU, or use --backend onnxruntime)"
            )
        plan = version_dir / artifact.path
        engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan.read_bytes())
        if engine is None:
            raise ValueError(
                f"{plan}: TensorRT cannot deserialize it (built for another GPU or TensorRT version?)"
            )
        profile_max = engine.get_tensor_profile_shape("obs", 0)[2][0]
        if max_batch_rows > profile_max:
            raise ValueError(f"{plan}: the engine accepts at most {profile_max} rows; lower --max-batch-rows")
        return cls(engine, spec, max_batch_rows, plan), spec

    def run(self, obs: np.ndarray, noise: np.ndarray) -> np.ndarray:
        torch = self.torch
        rows = obs.shape[0]
        # Staged through preallocated pinned buffers: pinning per call would cost more than the engine.
        self.host_obs.numpy()[:rows] = obs
        self.host_noise.numpy()[:rows] = noise
        with torch.cuda.stream(self.stream):
            self.obs[:rows].copy_(self.host_obs[:rows], non_blocking=True)
            self.noise[:rows].copy_(self.host_noise[:rows], non_blocking=True)
            self.context.set_input_shape("obs", tuple(self.obs[:rows].shape))
            self.context.set_input_shape("noise", tuple(self.noise[:rows].shape))
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"{self.plan}: TensorRT execution failed at batch {rows}")
            self.host_actions[:rows].copy_(self.actions[:rows], non_blocking=True)
        self.stream.synchronize()
        return self.host_actions[:rows].numpy().copy()

    def close(self) -> None:
        self.context = None
        self.engine = None

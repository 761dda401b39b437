"""TensorRT engines from the exported ONNX graph, with the TensorRT Python API (TensorRT 10).

An engine is built for one GPU model and one TensorRT version, so it is an optional extra beside the ONNX
files, never a replacement. The optimisation profile covers batch 1 .. 4096 and is tuned for 64 (a served
batch under load). A timing cache kept beside the repository makes rebuilds seconds instead of minutes.
I/O buffers are torch CUDA tensors: export already depends on torch, and this avoids a pycuda dependency.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.errors import ExportError
from export.parity import Runner

PROFILE = {"min": 1, "opt": 64, "max": 4096}
WORKSPACE_BYTES = 1 << 30


def tensorrt_unavailable_reason() -> str | None:
    """Why no engine can be built here, or None when TensorRT and a CUDA GPU are both present."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the tensorrt Python package is not installed (pip install tensorrt, on a host with an NVIDIA GPU)"
    import torch

    if not torch.cuda.is_available():
        return "tensorrt is installed but torch sees no CUDA GPU"
    return None


@dataclass
class EngineInfo:
    tensorrt_version: str
    device: str
    profile: dict[str, int]


def _logger():
    import tensorrt as trt

    return trt.Logger(trt.Logger.WARNING)


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    n_agents: int,
    obs_dim: int,
    act_dim: int,
    fp16: bool = False,
    timing_cache: Path | None = None,
) -> EngineInfo:
    """Parse `onnx_path`, build a serialized engine with the batch profile, write it to `plan_path`."""
    import tensorrt as trt
    import torch

    logger = _logger()
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"{onnx_path.name}: the TensorRT ONNX parser refused the graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    # TF32 is on by default for fp32 layers on Ampere and later: 10-bit mantissas would fail the fp32
    # parity bound (1e-5), so an fp32 engine is fp32.
    config.clear_flag(trt.BuilderFlag.TF32)
    if fp16:
        # Weak typing: TensorRT may pick fp16 kernels per layer; the parity check bounds the result.
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for name, width in (("obs", obs_dim), ("noise", act_dim)):
        profile.set_shape(
            name,
            (PROFILE["min"], n_agents, width),
            (PROFILE["opt"], n_agents, width),
            (PROFILE["max"], n_agents, width),
        )
    config.add_optimization_profile(profile)
    cache_bytes = timing_cache.read_bytes() if timing_cache is not None and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=True)  # a cache from another GPU is ignored, not fatal
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(
            f"{plan_path.name}: TensorRT could not build an engine (see the TensorRT log above)"
        )
    plan_path.write_bytes(memoryview(serialized))
    if timing_cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        timing_cache.write_bytes(memoryview(config.get_timing_cache().serialize()))
    return EngineInfo(trt.__version__, torch.cuda.get_device_name(), dict(PROFILE))


def tensorrt_runner(plan_path: Path, n_agents: int, act_dim: int) -> Runner:
    """Run a serialized engine on the current CUDA device; the batch must lie inside the profile."""
    import tensorrt as trt
    import torch

    runtime = trt.Runtime(_logger())
    engine = runtime.deserialize_cuda_engine(plan_path.read_bytes())
    if engine is None:
        raise ExportError(f"{plan_path.name}: TensorRT could not deserialize the engine")
    context = engine.create_execution_context()

    def run(obs: np.ndarray, noise: np.ndarray) -> np.ndarray:
        batch = obs.shape[0]
        if not PROFILE["min"] <= batch <= PROFILE["max"]:
            raise ExportError(f"{plan_path.name}: batch {batch} is outside the engine's profile {PROFILE}")
        inputs = {"obs": torch.from_numpy(obs).cuda(), "noise": torch.from_numpy(noise).cuda()}
        actions = torch.empty((batch, n_agents, act_dim), dtype=torch.float32, device="cuda")
        for name, tensor in inputs.items():
            context.set_input_shape(name, tuple(tensor.shape))
            context.set_tensor_address(name, tensor.data_ptr())
        context.set_tensor_address("actions", actions.data_ptr())
        stream = torch.cuda.current_stream()
        if not context.execute_async_v3(stream.cuda_stream):
            raise ExportError(f"{plan_path.name}: TensorRT execution failed at batch {batch}")
        stream.synchronize()
        return actions.cpu().numpy()

    return run

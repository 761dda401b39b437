"""The one way om2p opens an ONNX Runtime session (the server's backend, `om2p control`'s in-process twin,
`export.evaluation`, the parity checks and the benchmarks), so that every comparison between them runs the
graph with the same session options."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

CPU = "CPUExecutionProvider"
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", CPU)


def available_preferred_providers() -> list[str]:
    """TensorRT and CUDA first where this onnxruntime build has them, CPU always."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    return [provider for provider in PREFERRED_PROVIDERS if provider in available]


def open_session(
    path: Path | str,
    *,
    threads: int = 1,
    providers: Sequence[str | tuple[str, dict]] = (CPU,),
    quiet: bool = False,
):
    """An `onnxruntime.InferenceSession` on `path`; a `ValueError` naming the file when it cannot load.

    `threads`: intra-op threads per run (0: one per core). One is the default because policy MLP batches
    are small: a thread pool's wake-up costs more than the matmuls, and the other cores serve requests.
    `quiet`: only errors in the log (fp16 graphs log cast-placement notes)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if quiet:
        options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=list(providers))
    except Exception as error:  # onnxruntime raises its own exception types
        raise ValueError(f"{path}: ONNX Runtime cannot load it: {error}") from None

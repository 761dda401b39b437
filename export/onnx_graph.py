"""The policy as one ONNX graph for all agents: `obs [B, N, obs_dim]`, `noise [B, N, act_dim]` ->
`actions [B, N, act_dim]`, float32, dynamic batch axis. Normalisation, the K-step sampler, clipping and
action masking are inside `PolicyModule`, so they are inside the graph.

Exporter: torch 2.13 offers the dynamo exporter (`torch.export` + onnxscript, the maintained path, about
half the nodes) and the deprecated TorchScript tracer (about 10x faster to run). Both pass parity at ~1e-7
here; dynamo is the default and `--exporter torchscript` the fallback.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import onnx

from export.errors import ExportError

OPSET = 20  # the issue asks >= 17; 20 has a native Gelu op, which onnxruntime runs about 2x faster than
# the erf expansion of older opsets (the dynamo exporter emits it natively from opset 20)
EXPORTERS = ("dynamo", "torchscript")
INPUT_NAMES = ("obs", "noise")
OUTPUT_NAME = "actions"
MAX_BATCH = 1 << 16  # upper bound of the symbolic batch axis; TensorRT profiles stop at 4096 anyway


def export_onnx(
    policy, path: Path, n_agents: int, obs_dim: int, act_dim: int, exporter: str = "dynamo"
) -> None:
    """Write `policy` (a `training.policy.PolicyModule` in eval mode) to `path` as a single-file ONNX model."""
    import torch

    if exporter not in EXPORTERS:
        raise ExportError(f"--exporter {exporter!r}: choose one of {', '.join(EXPORTERS)}")
    # Batch 2 as the example: a batch of 1 lets tracers specialise the batch axis to a constant.
    example = (torch.zeros(2, n_agents, obs_dim), torch.zeros(2, n_agents, act_dim))
    common = dict(input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME], opset_version=OPSET)
    # Both exporters narrate on stdout/stderr and warn about internals; the CLI prints its own summary.
    quiet = io.StringIO()
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(quiet),
        contextlib.redirect_stderr(quiet),
        _quiet_loggers(),
        torch.no_grad(),
    ):
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
            torch.onnx.export(
                policy,
                example,
                str(path),
                dynamo=True,
                dynamic_shapes={"obs": {0: batch}, "noise": {0: batch}},
                external_data=False,
                verbose=False,
                **common,
            )
        else:
            torch.onnx.export(
                policy,
                example,
                str(path),
                dynamo=False,
                dynamic_axes={name: {0: "batch"} for name in (*INPUT_NAMES, OUTPUT_NAME)},
                **common,
            )
    _name_batch_axis(path)


@contextlib.contextmanager
def _quiet_loggers():
    loggers = [
        logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")
    ]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _name_batch_axis(path: Path) -> None:
    """Both exporters name the batch axis themselves ("batch", "s0", ...); one name reads better in Netron
    and in TensorRT's profile errors."""
    model = onnx.load(str(path))
    for value in (*model.graph.input, *model.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        if not dim.dim_value:
            dim.dim_param = "batch"
    onnx.save(model, str(path))


def tensor_shapes(model: onnx.ModelProto) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Graph inputs and outputs as `{name: shape}` with -1 for symbolic axes."""

    def shapes(values) -> dict[str, list[int]]:
        return {
            v.name: [d.dim_value if d.dim_value else -1 for d in v.type.tensor_type.shape.dim] for v in values
        }

    return shapes(model.graph.input), shapes(model.graph.output)


def check_onnx(path: Path, n_agents: int, obs_dim: int, act_dim: int) -> int:
    """`onnx.checker` (full, with shape inference) and the graph signature of the contract; returns the opset."""
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
    except Exception as error:  # onnx raises several unrelated types; any of them means "do not publish"
        raise ExportError(
            f"{path.name}: onnx.checker refused the graph: {str(error).splitlines()[0]}"
        ) from None
    float_type = onnx.TensorProto.FLOAT
    for value in (*model.graph.input, *model.graph.output):
        if value.type.tensor_type.elem_type != float_type:
            raise ExportError(f"{path.name}: {value.name!r} is not float32")
    inputs, outputs = tensor_shapes(model)
    expected_inputs = {"obs": [-1, n_agents, obs_dim], "noise": [-1, n_agents, act_dim]}
    expected_outputs = {OUTPUT_NAME: [-1, n_agents, act_dim]}
    if inputs != expected_inputs or outputs != expected_outputs:
        raise ExportError(
            f"{path.name}: graph signature {inputs} -> {outputs} differs from the contract "
            f"{expected_inputs} -> {expected_outputs}"
        )
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 17:
        raise ExportError(f"{path.name}: opset {opset} is older than 17")
    return opset


def convert_fp16(source: Path, target: Path) -> None:
    """fp16 weights and arithmetic with fp32 graph inputs and outputs (the server feeds float32 either way).

    Uses onnxruntime's converter (shipped with onnxruntime, no extra package); `keep_io_types` inserts the
    casts at the edges so the contract's signature is unchanged.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns about values that saturate in fp16; parity decides
        model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    # The converter appends its input casts after the nodes that read them; the ONNX spec (and
    # onnx.checker) require topological order, which onnxruntime would otherwise restore silently.
    wrapper = OnnxModel(model)
    wrapper.topological_sort()
    onnx.save(wrapper.model, str(target))

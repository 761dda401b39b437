"""`export_checkpoint`: a training checkpoint -> a checked, atomically published model version.

Order matters: load and validate the checkpoint, write every artifact into a staging directory, check each
one against the PyTorch policy, evaluate through PyTorch and ONNX Runtime on the same seeds, write the
manifest, and only then rename the staging directory into place. Any failure removes the staging directory.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from export.errors import ExportError
from export.evaluation import evaluate_onnx, returns_agree
from export.manifest import (
    MANIFEST_FILENAME,
    ArtifactFile,
    EvaluationSummary,
    ModelManifest,
    ParityRecord,
    TensorRTInfo,
    TensorSpec,
    load_manifest,
    sha256_file,
)
from export.onnx_graph import check_onnx, convert_fp16, export_onnx
from export.parity import (
    ParityResult,
    check_parity,
    cuda_provider_unavailable_reason,
    onnxruntime_runner,
    require_parity,
    torch_runner,
)
from export.repository import stage_version
from export.tensorrt_engine import build_engine, tensorrt_runner, tensorrt_unavailable_reason

ONNX_FP32, ONNX_FP16 = "model.onnx", "model.fp16.onnx"
PLAN_FP32, PLAN_FP16 = "model.plan", "model.fp16.plan"
TIMING_CACHE = (
    ".tensorrt-timing.cache"  # in the repository root: hidden, never served, reused across versions
)


@dataclass
class ExportOptions:
    name: str | None = None  # default: the environment (OM2P), `<env>-<algo>` or `<env>-om2p-k<K>` otherwise
    version: int | None = None  # default: the next free version
    fp16: bool = False
    tensorrt: str = "auto"  # auto: build where available, say why not otherwise; require; off
    exporter: str = "dynamo"
    eval_episodes: int | None = None  # default: the checkpoint's config (eval_episodes); 0: no evaluation
    eval_seed: int | None = None  # default: the checkpoint's config (eval_seed)
    fp32_tolerance: float | None = None  # None: export.parity.TOLERANCES
    fp16_tolerance: float | None = None


@dataclass
class ExportResult:
    version_dir: Path
    manifest: ModelManifest
    parity: list[ParityResult]
    skipped: list[str] = field(default_factory=list)


def default_name(info) -> str:
    steps = int(info.network_evaluations_per_action)
    if info.algo == "om2p":
        return info.env if steps == 1 else f"{info.env}-om2p-k{steps}"
    return f"{info.env}-{info.algo}"


def load_checked_policy(checkpoint: Path | str):
    """`training.checkpoint.load_policy` plus the checks export needs; every failure is one line naming the file."""
    from training.checkpoint import INFO_FILE, WEIGHTS_FILE, check_env, load_policy, read_info

    # The JSON first: its errors name checkpoint.json rather than surfacing later as a weight-shape mismatch.
    info = read_info(checkpoint)
    check_env(info, info.env)  # the dims recorded must still be the environment's dims
    source = info.path / INFO_FILE
    expected = [info.n_agents, info.obs_dim]
    for field_name in ("obs_mean", "obs_std"):
        try:
            values = np.asarray(getattr(info, field_name), dtype=np.float64)
        except ValueError:
            raise ExportError(
                f"{source}: field {field_name!r} is not a [{expected[0]}][{expected[1]}] array"
            ) from None
        if list(values.shape) != expected:
            raise ExportError(
                f"{source}: field {field_name!r} has shape {list(values.shape)}, expected {expected}"
            )
        if not np.all(np.isfinite(values)):
            raise ExportError(f"{source}: field {field_name!r} holds non-finite values")
    if np.any(np.asarray(info.obs_std) <= 0):
        raise ExportError(f"{source}: field 'obs_std' must be positive (it divides the observations)")
    try:
        policy, info = load_policy(info.path)
    except ValueError:  # CheckpointError and the config's own errors already name the file
        raise
    except Exception as error:  # safetensors and torch raise their own types for truncated or foreign files
        raise ExportError(f"{info.path / WEIGHTS_FILE}: cannot be loaded: {error}") from None
    for name, tensor in policy.state_dict().items():
        if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            raise ExportError(f"{info.path / WEIGHTS_FILE}: weight {name!r} holds NaN or inf")
    return policy, info


def _artifact(staged_dir: Path, filename: str, format: str, precision: str) -> ArtifactFile:
    path = staged_dir / filename
    return ArtifactFile(
        path=filename, sha256=sha256_file(path), bytes=path.stat().st_size, format=format, precision=precision
    )


def _config_summary(policy, info) -> dict:
    config = info.config
    keys = (
        "actor_hidden",
        "activation",
        "share_parameters",
        "sampling_steps",
        "steps",
        "seed",
        "du_dt",
        "alpha",
    )
    return {
        **{key: config[key] for key in keys if key in config},
        "checkpoint": str(info.path),
        "checkpoint_step": info.step,
        "parameters": int(sum(p.numel() for p in policy.parameters())),
        "dataset": info.dataset.get("path"),
        "dataset_sha256": info.dataset.get("sha256"),
        "dataset_quality": info.dataset.get("quality"),
        "reference_returns": info.reference_returns,
    }


class ParityGate:
    """Checks each artifact against the PyTorch policy, raises on a mismatch, keeps the passing results."""

    def __init__(self, policy, info, options: ExportOptions, say: Callable[[str], None]) -> None:
        self.reference = torch_runner(policy)
        self.obs_mean = np.asarray(info.obs_mean, np.float32)
        self.obs_std = np.asarray(info.obs_std, np.float32)
        self.act_dim = info.act_dim
        self.tolerances = {"fp32": options.fp32_tolerance, "fp16": options.fp16_tolerance}
        self.say = say
        self.results: list[ParityResult] = []

    def __call__(self, runner, file: str, backend: str, precision: str) -> None:
        result = check_parity(
            self.reference,
            runner,
            file=file,
            backend=backend,
            precision=precision,
            obs_mean=self.obs_mean,
            obs_std=self.obs_std,
            act_dim=self.act_dim,
            tolerance=self.tolerances[precision],
        )
        self.results.append(require_parity(result))
        self.say(f"parity ok: {result.describe()}")


def _write_onnx_files(
    directory: Path, policy, info, options: ExportOptions, gate: ParityGate, skipped: list[str]
) -> tuple[list[ArtifactFile], int]:
    """model.onnx (and model.fp16.onnx), each checked on ONNX Runtime CPU and, where present, CUDA."""
    n, obs_dim, act_dim = info.n_agents, info.obs_dim, info.act_dim
    export_onnx(policy, directory / ONNX_FP32, n, obs_dim, act_dim, options.exporter)
    onnx_files = [(ONNX_FP32, "fp32")]
    if options.fp16:
        convert_fp16(directory / ONNX_FP32, directory / ONNX_FP16)
        onnx_files.append((ONNX_FP16, "fp16"))
    cuda_reason = cuda_provider_unavailable_reason()
    if cuda_reason is not None:
        skipped.append(f"ONNX Runtime CUDA check skipped: {cuda_reason}")
    files, opsets = [], {}
    for filename, precision in onnx_files:
        opsets[filename] = check_onnx(directory / filename, n, obs_dim, act_dim)
        gate(onnxruntime_runner(directory / filename), filename, "onnxruntime-cpu", precision)
        if cuda_reason is None:
            cuda = onnxruntime_runner(directory / filename, "CUDAExecutionProvider")
            gate(cuda, filename, "onnxruntime-cuda", precision)
        files.append(_artifact(directory, filename, "onnx", precision))
    return files, opsets[ONNX_FP32]


def _write_engines(
    directory: Path, timing_cache: Path, info, options: ExportOptions, gate: ParityGate
) -> tuple[list[ArtifactFile], TensorRTInfo]:
    """model.plan (and model.fp16.plan) from the fp32 graph, each checked on TensorRT."""
    n, obs_dim, act_dim = info.n_agents, info.obs_dim, info.act_dim
    plans = [(PLAN_FP32, "fp32")] + ([(PLAN_FP16, "fp16")] if options.fp16 else [])
    files, engine = [], None
    for filename, precision in plans:
        engine = build_engine(
            directory / ONNX_FP32,
            directory / filename,
            n,
            obs_dim,
            act_dim,
            precision == "fp16",
            timing_cache,
        )
        gate(tensorrt_runner(directory / filename, n, act_dim), filename, "tensorrt", precision)
        files.append(_artifact(directory, filename, "tensorrt", precision))
    return files, TensorRTInfo(**engine.__dict__)


def export_checkpoint(
    checkpoint: Path | str,
    out: Path | str,
    options: ExportOptions | None = None,
    say: Callable[[str], None] = lambda message: None,
) -> ExportResult:
    """Export `checkpoint` to `out/<name>/<version>/`; `say` receives one line per step done."""
    options = options or ExportOptions()
    if options.tensorrt not in ("auto", "require", "off"):
        raise ExportError(f"tensorrt option {options.tensorrt!r}: choose auto, require or off")
    policy, info = load_checked_policy(checkpoint)
    n, obs_dim, act_dim = info.n_agents, info.obs_dim, info.act_dim
    say(
        f"checkpoint {info.path} ({info.algo}, {info.env}, step {info.step}, "
        f"{info.network_evaluations_per_action} network evaluation(s) per action)"
    )
    trt_reason = tensorrt_unavailable_reason() if options.tensorrt != "off" else None
    if options.tensorrt == "require" and trt_reason:
        raise ExportError(f"--tensorrt: {trt_reason}")
    gate = ParityGate(policy, info, options, say)
    skipped: list[str] = []
    name = options.name or default_name(info)
    out = Path(out)
    with stage_version(out, name, options.version) as staged:
        files, opset = _write_onnx_files(staged.path, policy, info, options, gate, skipped)
        engine = None
        if options.tensorrt != "off" and trt_reason is not None:
            skipped.append(f"TensorRT skipped: {trt_reason}")
        elif options.tensorrt != "off":
            plans, engine = _write_engines(staged.path, out / TIMING_CACHE, info, options, gate)
            files += plans
        for message in skipped:
            say(message)
        evaluation = _evaluate_both(policy, info, staged.path / ONNX_FP32, options, say)
        manifest = ModelManifest(
            name=name,
            version=staged.version,
            algo=info.algo,
            env=info.env,
            agents=info.agents,
            obs_dim=obs_dim,
            act_dim=act_dim,
            action_mask=info.action_mask,
            network_evaluations_per_action=info.network_evaluations_per_action,
            inputs=[
                TensorSpec(name="obs", shape=[-1, n, obs_dim]),
                TensorSpec(name="noise", shape=[-1, n, act_dim]),
            ],
            outputs=[TensorSpec(name="actions", shape=[-1, n, act_dim])],
            files=files,
            opset=opset,
            source_checkpoint_sha256=info.weights_sha256,
            config_summary=_config_summary(policy, info),
            evaluation=evaluation,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            parity=[ParityRecord(**result.record()) for result in gate.results],
            tensorrt=engine,
        )
        (staged.path / MANIFEST_FILENAME).write_text(manifest.model_dump_json(indent=2) + "\n")
        load_manifest(staged.path)  # exactly what the server will check, before anyone can see it
        version_dir = staged.publish()
    say(f"published {version_dir}")
    return ExportResult(version_dir, manifest, gate.results, skipped)


def _evaluate_both(policy, info, onnx_path: Path, options: ExportOptions, say) -> EvaluationSummary | None:
    """Evaluate with PyTorch (exactly `om2p eval`) and ONNX Runtime on the same seeds; refuse to publish
    when the returns differ. Returns the recorded summary (or the checkpoint's own, with --eval-episodes 0)."""
    from training.trainer import evaluate

    episodes = (
        options.eval_episodes if options.eval_episodes is not None else int(info.config["eval_episodes"])
    )
    first_seed = options.eval_seed if options.eval_seed is not None else int(info.config["eval_seed"])
    if episodes < 0:
        raise ExportError(f"--eval-episodes {episodes}: must be 0 or more")
    if episodes == 0:
        recorded = info.evaluation
        if not recorded:
            return None
        return EvaluationSummary(
            episodes=len(recorded.get("seeds", [])),
            mean_return=recorded["mean_return"],
            normalised_score=recorded.get("normalised_score"),
            seeds=recorded.get("seeds", []),
            returns=recorded.get("returns", []),
        )
    seeds = list(range(first_seed, first_seed + episodes))
    n_envs = min(int(info.config.get("eval_envs", 25)), episodes)
    torch_result = evaluate(policy, info.env, seeds, n_envs, info.reference_returns)
    onnx_returns = evaluate_onnx(onnx_path, info.env, info.act_dim, seeds, n_envs)
    if not returns_agree(torch_result["returns"], onnx_returns):
        differences = np.abs(np.asarray(onnx_returns) - np.asarray(torch_result["returns"]))
        worst = int(np.argmax(differences))
        raise ExportError(
            f"evaluation differs: seed {seeds[worst]} returns {torch_result['returns'][worst]:.6g} with PyTorch "
            f"and {onnx_returns[worst]:.6g} with ONNX Runtime; nothing was written"
        )
    score = torch_result["normalised_score"]
    say(
        f"evaluation ok: {episodes} episodes from seed {first_seed}, mean return "
        f"{torch_result['mean_return']:.3f} with PyTorch and ONNX Runtime"
        + (f", normalised score {score:.1f}" if score is not None and math.isfinite(score) else "")
    )
    return EvaluationSummary(
        episodes=episodes,
        mean_return=torch_result["mean_return"],
        normalised_score=score,
        seeds=seeds,
        returns=torch_result["returns"],
    )

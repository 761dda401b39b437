"""Parity: an artifact must compute what the checkpoint computes, checked on fresh random inputs.

Tolerances are max abs error on actions in [-1, 1]: 1e-5 for fp32 (summation order differs between
kernels, nothing else may), 1e-2 for fp16 (11-bit mantissa through a few layers). Inputs are drawn around
the training distribution (the checkpoint's observation mean and std), and the batch sizes differ from the
batch of 2 the graph was exported with, so a batch axis frozen by the exporter fails here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from export.errors import ExportError

PARITY_BATCHES = (1, 7, 256)
TOLERANCES = {"fp32": 1e-5, "fp16": 1e-2}

# (obs [B, N, obs_dim], noise [B, N, act_dim]) -> actions [B, N, act_dim], all float32 numpy.
Runner = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class ParityResult:
    """One artifact on one backend against PyTorch; recorded in the manifest as evidence."""

    file: str
    backend: str
    precision: str
    batch_sizes: list[int]
    max_abs_error: float
    tolerance: float
    seed: int
    worst: dict = field(default_factory=dict)  # where the largest error occurred, for the error message

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.max_abs_error)) and self.max_abs_error <= self.tolerance

    def describe(self) -> str:
        return (
            f"{self.file} on {self.backend} ({self.precision}): max abs error {self.max_abs_error:.3g} "
            f"(tolerance {self.tolerance:g}) over batches {self.batch_sizes}"
        )

    def record(self) -> dict:
        return {key: value for key, value in asdict(self).items() if key != "worst"}


def random_inputs(
    rng: np.random.Generator, batch: int, obs_mean: np.ndarray, obs_std: np.ndarray, act_dim: int
) -> tuple[np.ndarray, np.ndarray]:
    """Observations around the training distribution (2x its spread, so clipping is exercised) and
    standard normal noise, the sampler's input distribution."""
    n_agents, obs_dim = obs_mean.shape
    obs = obs_mean + 2.0 * obs_std * rng.standard_normal((batch, n_agents, obs_dim))
    noise = rng.standard_normal((batch, n_agents, act_dim))
    return obs.astype(np.float32), noise.astype(np.float32)


def check_parity(
    reference: Runner,
    candidate: Runner,
    *,
    file: str,
    backend: str,
    precision: str,
    obs_mean: np.ndarray,
    obs_std: np.ndarray,
    act_dim: int,
    batch_sizes: Sequence[int] = PARITY_BATCHES,
    tolerance: float | None = None,
    seed: int | None = None,
) -> ParityResult:
    """Max abs error of `candidate` against `reference` over `batch_sizes`; never raises on a mismatch
    (`require_parity` does), so a report can list every artifact's result."""
    tolerance = TOLERANCES[precision] if tolerance is None else tolerance
    seed = int(np.random.SeedSequence().entropy % (1 << 63)) if seed is None else seed  # fresh, reproducible
    rng = np.random.default_rng(seed)
    worst_error, worst = 0.0, {}
    for batch in batch_sizes:
        obs, noise = random_inputs(rng, batch, obs_mean, obs_std, act_dim)
        expected = np.asarray(reference(obs, noise), dtype=np.float64)
        got = np.asarray(candidate(obs, noise), dtype=np.float64)
        if got.shape != expected.shape:
            raise ExportError(
                f"{file} on {backend} ({precision}): output shape {list(got.shape)} at batch {batch}, "
                f"PyTorch gives {list(expected.shape)}"
            )
        error = np.abs(got - expected)
        error[~np.isfinite(got)] = np.inf
        index = np.unravel_index(int(np.argmax(error)), error.shape)
        if error[index] > worst_error or not worst:
            worst_error = float(error[index])
            worst = {
                "batch": batch,
                "sample": int(index[0]),
                "agent": int(index[1]),
                "action": int(index[2]),
                "expected": float(expected[index]),
                "got": float(got[index]),
            }
    return ParityResult(file, backend, precision, list(batch_sizes), worst_error, tolerance, seed, worst)


def require_parity(result: ParityResult) -> ParityResult:
    """Raise `ExportError` saying what differed, where, and by how much."""
    if not result.passed:
        w = result.worst
        raise ExportError(
            f"parity check failed: {result.describe()}; worst at batch {w['batch']}, sample {w['sample']}, "
            f"agent {w['agent']}, action {w['action']}: PyTorch {w['expected']:.6g}, artifact {w['got']:.6g} "
            f"(seed {result.seed}); nothing was written"
        )
    return result


def torch_runner(policy) -> Runner:
    """The checkpoint's `PolicyModule` as a numpy runner (the reference every artifact is checked against)."""
    import torch

    device = policy.obs_mean.device

    @torch.no_grad()
    def run(obs: np.ndarray, noise: np.ndarray) -> np.ndarray:
        actions = policy(torch.from_numpy(obs).to(device), torch.from_numpy(noise).to(device))
        return actions.float().cpu().numpy()

    return run


def onnxruntime_runner(path: Path, provider: str = "CPUExecutionProvider", threads: int = 0) -> Runner:
    """An ONNX Runtime session on `provider` (CPU, or CUDA where onnxruntime-gpu and a GPU exist);
    `threads` intra-op threads (0: onnxruntime's default, one per core)."""
    from export.session import open_session

    # The CUDA provider may use TF32 for fp32 matmuls on Ampere and later; the fp32 bound needs true fp32.
    provider_options = {"use_tf32": "0"} if provider == "CUDAExecutionProvider" else {}
    session = open_session(path, threads=threads, providers=[(provider, provider_options)], quiet=True)
    if session.get_providers()[0] != provider:
        raise ExportError(f"{path.name}: onnxruntime did not place the graph on {provider}")

    def run(obs: np.ndarray, noise: np.ndarray) -> np.ndarray:
        return session.run(["actions"], {"obs": obs, "noise": noise})[0]

    return run


def cuda_provider_unavailable_reason() -> str | None:
    """Why the ONNX Runtime CUDA execution provider cannot be checked here, or None when it can."""
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return (
            "onnxruntime has no CUDAExecutionProvider in this environment "
            f"(providers: {', '.join(onnxruntime.get_available_providers())}; install onnxruntime-gpu on a GPU host)"
        )
    import torch

    if not torch.cuda.is_available():
        return "onnxruntime has a CUDAExecutionProvider but torch sees no CUDA GPU"
    return None

"""Episodes of an exported model through ONNX Runtime: what `om2p eval` does with PyTorch, without torch.

Deterministic (noise = 0), one episode per seed in seed order, with the same vectorised evaluation loop
(`training.envs.evaluate_policy`), so the returns are comparable seed by seed with `om2p eval`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

# Returns of the same seeds through PyTorch and ONNX Runtime differ only by float rounding in the actions
# (<= 1e-6), which the environments carry into the return; anything larger is a real difference.
RETURN_RTOL, RETURN_ATOL = 1e-4, 1e-3


def onnx_policy(onnx_path: Path | str, act_dim: int):
    """A deterministic numpy batch policy `[n_envs, N, obs_dim] -> [n_envs, N, act_dim]` on ONNX Runtime CPU."""
    from export.session import open_session

    session = open_session(onnx_path, threads=0)

    def act(observations: np.ndarray) -> np.ndarray:
        obs = np.ascontiguousarray(observations, dtype=np.float32)
        noise = np.zeros((*obs.shape[:-1], act_dim), dtype=np.float32)
        return session.run(["actions"], {"obs": obs, "noise": noise})[0]

    return act


def evaluate_onnx(
    onnx_path: Path | str, env: str, act_dim: int, seeds: Sequence[int], n_envs: int = 25
) -> list[float]:
    """Team return of one deterministic episode per seed, in seed order."""
    from training.envs import evaluate_policy

    result = evaluate_policy(env, onnx_policy(onnx_path, act_dim), list(seeds), n_envs)
    return [float(x) for x in result.returns]


def returns_agree(expected: Sequence[float], got: Sequence[float]) -> bool:
    return len(expected) == len(got) and bool(
        np.allclose(np.asarray(got), np.asarray(expected), rtol=RETURN_RTOL, atol=RETURN_ATOL)
    )

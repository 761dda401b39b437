"""Validation of policy actions and their mapping to native bounds: the only place either happens."""

from __future__ import annotations

import numpy as np

from training.envs.spec import EnvSpec

# Policies clip to [-1, 1]; float32 rounding in a network or a wire format may overshoot by an ulp or two.
ACTION_TOLERANCE = 1e-5


def validate_actions(spec: EnvSpec, actions: np.ndarray | list) -> np.ndarray:
    """Return `actions` as float32 `[n_agents, act_dim]`, or raise ValueError naming the expected shape.

    Padded (masked) entries are ignored: they may hold anything finite.
    """
    expected = (spec.n_agents, spec.act_dim)
    try:
        array = np.asarray(actions, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{spec.name}: actions must be numeric with shape {expected}: {error}") from None
    if array.shape != expected:
        raise ValueError(
            f"{spec.name}: actions must have shape {expected} (n_agents, act_dim), got {array.shape}"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{spec.name}: actions of shape {expected} contain NaN or Inf")
    real = array[spec.action_mask]
    if np.any(np.abs(real) > 1.0 + ACTION_TOLERANCE):
        worst = float(real[np.argmax(np.abs(real))])
        raise ValueError(f"{spec.name}: actions of shape {expected} must lie in [-1, 1], got {worst:.6g}")
    return np.where(spec.action_mask, np.clip(array, -1.0, 1.0), 0.0).astype(np.float32)


def to_native(spec: EnvSpec, actions: np.ndarray) -> list[np.ndarray]:
    """Map validated `[-1, 1]` actions to each agent's native bounds; one array per agent, unpadded."""
    native = []
    for index, dim in enumerate(spec.act_dims):
        low = np.asarray(spec.native_low[index], dtype=np.float32)
        high = np.asarray(spec.native_high[index], dtype=np.float32)
        native.append(low + (actions[index, :dim] + 1.0) * 0.5 * (high - low))
    return native


def from_native(spec: EnvSpec, native: list[np.ndarray]) -> np.ndarray:
    """Inverse of `to_native`: native per-agent actions to padded `[n_agents, act_dim]` in [-1, 1]."""
    actions = np.zeros((spec.n_agents, spec.act_dim), dtype=np.float32)
    for index, dim in enumerate(spec.act_dims):
        low = np.asarray(spec.native_low[index], dtype=np.float32)
        high = np.asarray(spec.native_high[index], dtype=np.float32)
        actions[index, :dim] = 2.0 * (np.asarray(native[index], dtype=np.float32) - low) / (high - low) - 1.0
    return actions

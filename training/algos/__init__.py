"""Offline multi-agent algorithms, one sibling module each, behind one small interface.

Adding a baseline (`bc`, `bc_mse`, `matd3bc`, `omar`, `flow`, `diffusion`) means adding `training/algos/<name>.py` that
defines a subclass of `training.algos.base.Algorithm` and exposes it as the module attribute `ALGORITHM`:

- `ALGORITHM.name` — the `--algo` value and checkpoint.json's `algo`;
- `ALGORITHM(spec, config, obs_mean, obs_std)` — builds all networks on the CPU (the trainer moves them);
- `ALGORITHM.build_policy(spec, config, obs_mean, obs_std) -> PolicyModule` — the deployable part; the
  instance keeps it as `self.policy`, so its weights are the `policy.*` entries of `weights.safetensors`
  and `training.checkpoint.load_policy` can rebuild it from the checkpoint's JSON alone;
- `update(batch: Batch) -> dict[str, Tensor]` — one gradient step of every network, logged values returned
  as detached scalars (the trainer syncs them only every `log_every` steps);
- `optimizers() -> dict[str, Optimizer]` — saved for `--resume`;
- `evaluations_per_action()` — network evaluations per served action (recorded in the checkpoint).

The trainer owns everything else: data sampling, seeding, evaluation, logging and checkpoints. Shared
pieces for baselines: `training.algos.critics` (agent-batched twin critics, TD targets, Polyak averaging)
and `training.policy` (`PolicyModule`, which takes any agent-major `sampler` module).
"""

from __future__ import annotations

import importlib
import pkgutil

from training.algos.base import Algorithm, Batch

__all__ = ["Algorithm", "Batch", "available_algorithms", "get_algorithm"]

# Modules in this package that are not algorithms.
_NOT_ALGORITHMS = {"base", "critics", "timesteps"}


def available_algorithms() -> list[str]:
    """Names of the algorithm modules present in this build."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in _NOT_ALGORITHMS)


def get_algorithm(name: str) -> type[Algorithm]:
    """The `Algorithm` subclass registered as `name`; ValueError naming the choices when there is none."""
    if name not in available_algorithms():
        raise ValueError(f"unknown algorithm {name!r}; choose one of {', '.join(available_algorithms())}")
    module = importlib.import_module(f"training.algos.{name}")
    algorithm = getattr(module, "ALGORITHM", None)
    if algorithm is None or not issubclass(algorithm, Algorithm):
        raise ValueError(f"training/algos/{name}.py defines no ALGORITHM (an Algorithm subclass)")
    return algorithm

"""cooperative_navigation datasets in the 2-D force actions of `cooperative_navigation_force2d`.

The same transitions, observations and rewards: only the actions change, from mpe2's 5-D entries to the
force they apply (`training.envs.mpe.mpe2_to_force`), which is all that moved the agents. The references
stay, since the dynamics and rewards are the same.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from training.data.format import DatasetError, OfflineDataset
from training.envs import env_spec, to_native
from training.envs.mpe import mpe2_to_force

SOURCE_ENV = "cooperative_navigation"
FORCE_ENV = "cooperative_navigation_force2d"


def to_force_actions(dataset: OfflineDataset, path: Path | str) -> OfflineDataset:
    """`dataset` (a `cooperative_navigation` dataset read from `path`) with 2-D force actions in [-1, 1]."""
    if dataset.metadata.get("env") != SOURCE_ENV:
        raise DatasetError(path, "metadata.env", f"is {dataset.metadata.get('env')!r}, expected {SOURCE_ENV!r}")
    source, target = env_spec(SOURCE_ENV), env_spec(FORCE_ENV)
    flat = dataset.actions.reshape(-1, source.n_agents, source.act_dim)
    native = [to_native(source, row) for row in flat]  # [-1, 1] -> mpe2's [0, 1], per agent
    forces = mpe2_to_force(native).reshape(*dataset.actions.shape[:-1], target.act_dim)
    metadata = {
        **dataset.metadata,
        "env": FORCE_ENV,
        "act_dim": target.act_dim,
        "act_dims": list(target.act_dims),
        "action_mask": target.action_mask.tolist(),
        "converted_from": {"env": SOURCE_ENV, "file": str(path)},
    }
    return replace(dataset, actions=forces.astype("float32"), metadata=metadata)

"""Import the public OMAR / OM2P dataset layout into our npz format.

    ROOT/{env}/{quality}/seed_{s}_data/{obs,acs,rews,next_obs,dones}_{agent index}.npy   each [T, dim_i]

(the per-agent numpy buffers of OMAR's replay buffer). OMAR names cooperative navigation `simple_spread`,
predator-prey `simple_tag`, world `simple_world`; HalfCheetah 2x3 `HalfCheetah-v2`; all are accepted.
Episode boundaries are not stored there: every `episode_length` transitions end an episode, which is how the
data was recorded (fixed-length episodes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from training.data.format import DatasetError, OfflineDataset, dataset_metadata, episode_returns
from training.envs import env_spec

OMAR_ENV_NAMES = {
    "cooperative_navigation": ("cooperative_navigation", "simple_spread"),
    "predator_prey": ("predator_prey", "simple_tag"),
    "world": ("world", "simple_world", "simple_world_comm"),
    "halfcheetah_2x3": ("halfcheetah_2x3", "HalfCheetah-v2", "halfcheetah"),
}
FILE_PREFIXES = {"obs": "obs", "act": "acs", "rew": "rews", "next": "next_obs", "done": "dones"}


def omar_data_dir(root: Path, env: str, quality: str, seed: int) -> Path:
    for name in OMAR_ENV_NAMES.get(env, (env,)):
        candidate = Path(root) / name / quality / f"seed_{seed}_data"
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"{Path(root) / env / quality / f'seed_{seed}_data'}: OMAR data directory not found"
    )


def import_omar(
    data_dir: Path,
    env: str,
    quality: str,
    seed: int = 0,
    *,
    references: dict[str, Any],
) -> OfflineDataset:
    """Read one `seed_{s}_data` directory; pads per-agent dims to the environment's padded dims.

    `references`: the `expert` and `random` reference returns, each a number or a `{"mean", "se", "std",
    "episodes"}` mapping. Both are required: the OMAR layout holds no references, and a guessed one (this
    dataset's own mean, or 0) makes every normalised score meaningless."""
    spec = env_spec(env)
    data_dir = Path(data_dir)
    per_field: dict[str, list[np.ndarray]] = {k: [] for k in FILE_PREFIXES}
    for index in range(spec.n_agents):
        for key, prefix in FILE_PREFIXES.items():
            path = data_dir / f"{prefix}_{index}.npy"
            if not path.is_file():
                raise DatasetError(path, f"{prefix}_{index}", "missing file")
            array = np.load(path, allow_pickle=False).astype(np.float32)
            per_field[key].append(array.reshape(len(array), -1))
    t = len(per_field["obs"][0])
    for key, arrays in per_field.items():
        for index, array in enumerate(arrays):
            if len(array) != t:
                raise DatasetError(
                    data_dir / f"{FILE_PREFIXES[key]}_{index}.npy",
                    FILE_PREFIXES[key],
                    f"has {len(array)} rows, agent 0's observations have {t}",
                )

    def stack(key: str, dim: int, dims: tuple[int, ...]) -> np.ndarray:
        out = np.zeros((t, spec.n_agents, dim), np.float32)
        for index, array in enumerate(per_field[key]):
            if array.shape[1] != dims[index]:
                raise DatasetError(
                    data_dir / f"{FILE_PREFIXES[key]}_{index}.npy",
                    FILE_PREFIXES[key],
                    f"has width {array.shape[1]}, {env} agent {index} has {dims[index]}",
                )
            out[:, index, : dims[index]] = array
        return out

    observations = stack("obs", spec.obs_dim, spec.obs_dims)
    next_observations = stack("next", spec.obs_dim, spec.obs_dims)
    actions = np.clip(stack("act", spec.act_dim, spec.act_dims), -1.0, 1.0)
    # Cooperative tasks share one team reward; OMAR stores it per agent, agent 0's copy is the team's.
    team = per_field["rew"][0][:, 0]
    rewards = np.repeat(team[:, None], spec.n_agents, axis=1)
    dones = np.repeat(per_field["done"][0][:, :1], spec.n_agents, axis=1)
    episode_ends = (np.arange(t) % spec.episode_length) == spec.episode_length - 1
    episode_ends |= dones[:, 0] > 0
    returns = episode_returns(rewards, episode_ends)
    metadata = dataset_metadata(
        spec,
        quality,
        seed,
        t,
        returns,
        _reference_entries(references),
        "",
        source={"layout": "omar", "dir": str(data_dir)},
    )
    return OfflineDataset(observations, actions, rewards, next_observations, dones, episode_ends, metadata)


def _reference_entries(references: dict[str, Any]) -> dict[str, dict[str, Any]]:
    entries = {}
    for name in ("expert", "random"):
        value = references.get(name) if isinstance(references, dict) else None
        if value is None:
            raise ValueError(
                f"the {name} reference return is required (--{name}-return): OMAR data holds none"
            )
        entry = dict(value) if isinstance(value, dict) else {"mean": float(value)}
        entries[name] = {
            "mean": float(entry["mean"]),
            "se": entry.get("se"),
            "std": entry.get("std"),
            "episodes": entry.get("episodes"),
        }
    if entries["expert"]["mean"] == entries["random"]["mean"]:
        raise ValueError(
            f"the expert and random reference returns must differ (both {entries['expert']['mean']})"
        )
    return entries


def export_omar(dataset: OfflineDataset, data_dir: Path) -> Path:
    """Write a dataset in the OMAR layout (used by the import round-trip test and for other tools)."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    obs_dims, act_dims = dataset.metadata["obs_dims"], dataset.metadata["act_dims"]
    for index in range(dataset.n_agents):
        o, a = obs_dims[index], act_dims[index]
        np.save(data_dir / f"obs_{index}.npy", dataset.observations[:, index, :o])
        np.save(data_dir / f"acs_{index}.npy", dataset.actions[:, index, :a])
        np.save(data_dir / f"rews_{index}.npy", dataset.rewards[:, index : index + 1])
        np.save(data_dir / f"next_obs_{index}.npy", dataset.next_observations[:, index, :o])
        np.save(data_dir / f"dones_{index}.npy", dataset.dones[:, index : index + 1])
    return data_dir

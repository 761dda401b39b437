"""The normalisation references of an environment: the mean returns of its expert and random behaviour
policies, with their standard errors, measured once and committed beside the behaviour checkpoints.

    training/behaviour/checkpoints/<env>/references.json

They depend only on the behaviour actors and the environment, so every dataset of the environment copies them
into its metadata instead of re-running 1,000 episodes per dataset (a halfcheetah_2x3 episode is 1,000
steps). Each policy runs as it collected the data: the actor plus the manifest's collection noise. The file
records each actor's sha256; a file whose actors have since changed is refused.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from training.behaviour.registry import checkpoint_dir, load_manifest

REFERENCES_FILE = "references.json"
DEFAULT_EPISODES = 1000
SEED_BASE = 2_000_000  # the reference seeds of ship_behaviour: apart from training, datasets and evaluation
REFERENCE_QUALITIES = ("expert", "random")
CHUNK = 100  # episodes per progress update


class ReferenceError(ValueError):
    """Missing or stale references: the message names the file and the command that remakes it."""


def remake_command(env: str, root: Path | None = None) -> str:
    tail = f" --root {root}" if root is not None else ""
    return f"om2p data references --env {env}{tail}"


def return_stats(returns: np.ndarray) -> dict[str, Any]:
    """Mean, standard deviation, standard error of the mean (ddof 1) and count of episode returns."""
    returns = np.asarray(returns, dtype=np.float64)
    n = len(returns)
    std = float(returns.std(ddof=1)) if n > 1 else float("nan")
    return {
        "mean": float(returns.mean()) if n else float("nan"),
        "std": std,
        "se": std / math.sqrt(n) if n > 1 else float("nan"),
        "episodes": n,
    }


def measure_references(
    env: str, episodes: int = DEFAULT_EPISODES, root: Path | None = None, progress: bool = True
) -> dict[str, Any]:
    """Run `episodes` episodes (seeds SEED_BASE ...) of the expert and of the random behaviour policy."""
    import torch
    from tqdm import tqdm

    from training.behaviour.actor import file_sha256, load_actor, numpy_policy
    from training.envs import env_spec, evaluate_policy

    if episodes < 2:
        raise ValueError(f"--episodes must be at least 2 (a standard error needs two), got {episodes}")
    torch.set_num_threads(1)
    spec, manifest = env_spec(env), load_manifest(env, root)
    noise = float(manifest["collection_noise_std"])
    out: dict[str, Any] = {
        "env": env,
        "collection_noise_std": noise,
        "seeds": f"{SEED_BASE}..{SEED_BASE + episodes - 1}",
    }
    seeds = list(range(SEED_BASE, SEED_BASE + episodes))
    for quality in REFERENCE_QUALITIES:
        directory = checkpoint_dir(env, root) / quality
        actor, _ = load_actor(directory, spec)
        policy = numpy_policy(actor, noise, seed=1)
        returns: list[float] = []
        bar = tqdm(total=episodes, desc=f"references {env}/{quality}", unit="episode", disable=not progress)
        for start in range(0, episodes, CHUNK):
            chunk = seeds[start : start + CHUNK]
            returns.extend(evaluate_policy(env, policy, chunk, n_envs=25).returns.tolist())
            bar.update(len(chunk))
        bar.close()
        out[quality] = {
            **return_stats(np.asarray(returns)),
            "sha256": file_sha256(directory / "actor.safetensors"),
        }
    return out


def write_references(env: str, references: dict[str, Any], root: Path | None = None) -> Path:
    path = checkpoint_dir(env, root) / REFERENCES_FILE
    path.write_text(json.dumps(references, indent=2) + "\n")
    return path


def load_references(env: str, root: Path | None = None) -> dict[str, Any]:
    """The committed references of `env`, checked against the shipped actors (ReferenceError otherwise)."""
    path = checkpoint_dir(env, root) / REFERENCES_FILE
    if not path.is_file():
        raise ReferenceError(
            f"{path}: no reference returns for {env!r}; measure them with `{remake_command(env, root)}`"
        )
    references = json.loads(path.read_text())
    manifest = load_manifest(env, root)
    for quality in REFERENCE_QUALITIES:
        if references.get(quality, {}).get("sha256") != manifest["qualities"][quality]["sha256"]:
            raise ReferenceError(
                f"{path}: the {quality} reference was measured on another actor than the shipped one; "
                f"remeasure with `{remake_command(env, root)}`"
            )
    return references


def dataset_references(references: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The `references` entry of a dataset's metadata: per policy its mean return, SE, std and episodes."""
    keys = ("mean", "se", "std", "episodes")
    return {quality: {k: references[quality][k] for k in keys} for quality in REFERENCE_QUALITIES}

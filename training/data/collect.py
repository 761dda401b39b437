"""Record an offline dataset from the shipped behaviour checkpoints (OMAR protocol).

expert / medium / random: the chosen actor with Gaussian exploration noise (`collection_noise_std` of the
checkpoint manifest), whole episodes. medium-replay: the MATD3 run's replay buffer up to the medium checkpoint,
either re-recorded from the shipped replay actors or read from the run's own buffer (`run_dir`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from training.behaviour.actor import Actor, load_actor, numpy_policy
from training.behaviour.registry import checkpoint_dir, load_manifest
from training.data.format import QUALITIES, OfflineDataset, dataset_metadata, episode_returns
from training.data.references import dataset_references, load_references
from training.envs import EnvSpec, VectorEnv, env_spec

EPISODE_SEED_STRIDE = 1_000_003  # keeps the episode seeds of different dataset seeds apart


def _record(
    spec: EnvSpec,
    policy,
    episodes: int,
    seed_offset: int,
    n_envs: int,
    bar: tqdm,
) -> dict[str, np.ndarray]:
    """Run `episodes` whole episodes with `policy` (a BatchPolicy), returning flat transition arrays."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "act", "rew", "next", "term", "end")}
    vector = VectorEnv(spec.name, min(n_envs, episodes))
    try:
        for start in range(0, episodes, len(vector.envs)):
            active = vector.envs[: min(len(vector.envs), episodes - start)]
            obs = np.stack([env.reset(seed=seed_offset + start + i) for i, env in enumerate(active)])
            traj: list[dict[str, list]] = [{k: [] for k in parts} for _ in active]
            running = np.ones(len(active), dtype=bool)
            while running.any():
                actions = policy(obs)
                for i in np.flatnonzero(running):
                    result = active[i].step(actions[i])
                    t = traj[i]
                    t["obs"].append(obs[i].copy())
                    t["act"].append(actions[i])
                    t["rew"].append(result.reward)
                    t["next"].append(result.observations)
                    t["term"].append(float(result.info["terminated"]))
                    t["end"].append(result.done)
                    obs[i] = result.observations
                    running[i] = not result.done
                    bar.update(1)
            for t in traj:
                for k in parts:
                    parts[k].append(np.asarray(t[k]))
    finally:
        vector.close()
    return {k: np.concatenate(v) for k, v in parts.items()}


def _uniform_policy(spec: EnvSpec, seed: int):
    rng = np.random.default_rng(seed)
    mask = spec.action_mask.astype(np.float32)

    def act(observations: np.ndarray) -> np.ndarray:
        shape = (observations.shape[0], spec.n_agents, spec.act_dim)
        return (rng.uniform(-1.0, 1.0, size=shape) * mask).astype(np.float32)

    return act


def collect(
    env: str,
    quality: str,
    transitions: int,
    seed: int = 0,
    n_envs: int = 25,
    checkpoints_root: Path | None = None,
    progress: bool = True,
) -> OfflineDataset:
    """Record at least `transitions` transitions (rounded up to whole episodes) of `quality` data."""
    if quality not in QUALITIES:
        raise ValueError(f"quality must be one of {', '.join(QUALITIES)}, got {quality!r}")
    if transitions < 1:
        raise ValueError(f"--transitions must be positive, got {transitions}")
    torch.set_num_threads(1)
    spec = env_spec(env)
    manifest = load_manifest(env, checkpoints_root)
    # The committed references (refused before recording anything if missing or stale).
    references = dataset_references(load_references(env, checkpoints_root))
    root = checkpoint_dir(env, checkpoints_root)
    episodes = math.ceil(transitions / spec.episode_length)
    seed_offset = seed * EPISODE_SEED_STRIDE
    bar = tqdm(
        total=episodes * spec.episode_length,
        desc=f"collect {env}/{quality}",
        unit="step",
        disable=not progress,
        mininterval=2.0,
    )
    try:
        if quality == "medium-replay":
            plan = _replay_plan(manifest, root, spec, episodes)
            chunks, sha = [], manifest["qualities"]["medium"]["sha256"]
            done = 0
            for index, (policy_factory, count) in enumerate(plan):
                if count:
                    chunks.append(
                        _record(
                            spec, policy_factory(seed * 1000 + index), count, seed_offset + done, n_envs, bar
                        )
                    )
                    done += count
            flat = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
        else:
            actor, info = load_actor(root / quality, spec)
            policy = numpy_policy(actor, manifest["collection_noise_std"], seed=seed)
            flat = _record(spec, policy, episodes, seed_offset, n_envs, bar)
            sha = info["sha256"]
    finally:
        bar.close()
    return _to_dataset(spec, quality, seed, flat, manifest, sha, references)


def _replay_plan(manifest: dict, root: Path, spec: EnvSpec, episodes: int) -> list[tuple]:
    """Split the episodes over warm-up and the replay actors in proportion to the steps each was in charge."""
    replay = manifest["medium_replay"]
    until, warmup, noise = replay["until_step"], replay["warmup"], replay["exploration_noise"]
    actors = replay["actors"]
    spans: list[tuple] = [(lambda s: _uniform_policy(spec, s), min(warmup, until))]
    for i, entry in enumerate(actors):
        begin = max(entry["step"], warmup)
        end = actors[i + 1]["step"] if i + 1 < len(actors) else until
        actor: Actor = load_actor(root / entry["dir"], spec)[0]
        spans.append(((lambda s, a=actor: numpy_policy(a, noise, seed=s)), max(0, end - begin)))
    total = sum(span for _, span in spans) or 1
    counts = [round(episodes * span / total) for _, span in spans]
    counts[-1] += episodes - sum(counts)  # rounding slack goes to the last (medium) actor
    return [(factory, max(0, count)) for (factory, _), count in zip(spans, counts, strict=True)]


def _to_dataset(
    spec: EnvSpec, quality: str, seed: int, flat: dict, manifest: dict, sha: str, references: dict
) -> OfflineDataset:
    n = spec.n_agents
    rewards = np.repeat(flat["rew"].astype(np.float32)[:, None], n, axis=1)
    dones = np.repeat(flat["term"].astype(np.float32)[:, None], n, axis=1)
    returns = episode_returns(rewards, flat["end"])
    metadata = dataset_metadata(
        spec,
        quality,
        seed,
        len(rewards),
        returns,
        references,
        sha,
        behaviour={"algo": manifest["algo"], "collection_noise_std": manifest["collection_noise_std"]},
    )
    return OfflineDataset(
        observations=flat["obs"].astype(np.float32),
        actions=flat["act"].astype(np.float32),
        rewards=rewards,
        next_observations=flat["next"].astype(np.float32),
        dones=dones,
        episode_ends=flat["end"].astype(bool),
        metadata=metadata,
    )

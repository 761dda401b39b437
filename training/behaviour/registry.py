"""The shipped behaviour checkpoints: which actor defines each dataset quality, and its measured return.

    training/behaviour/checkpoints/<env>/manifest.json
    training/behaviour/checkpoints/<env>/{random,medium,expert}/actor.{safetensors,json}
    training/behaviour/checkpoints/<env>/replay/step_<8 digits>/actor.{safetensors,json}

`medium-replay` is the replay buffer of the MATD3 run up to the medium checkpoint. Shipping that buffer
would cost megabytes, so the actors the run evaluated along the way are shipped instead (a few kB each)
and the buffer is re-recorded from them: uniform actions during warm-up, then each actor with the run's
exploration noise for the steps it was in charge. `om2p data collect --run RUN_DIR` reads the real buffer.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

CHECKPOINT_ROOT = Path(__file__).parent / "checkpoints"
MANIFEST_FILE = "manifest.json"


def checkpoint_dir(env: str, root: Path | None = None) -> Path:
    return (root or CHECKPOINT_ROOT) / env


def load_manifest(env: str, root: Path | None = None) -> dict[str, Any]:
    path = checkpoint_dir(env, root) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no behaviour checkpoints for {env!r}; train them with `om2p data train-behaviour --env {env}`"
            " and ship them with `om2p data ship-behaviour`"
        )
    return json.loads(path.read_text())


def ship_behaviour(
    run_dir: Path,
    env: str,
    root: Path | None = None,
    replay_every: int = 2,
    eval_episodes: int = 100,
    noise_std: float = 0.1,
    selection_episodes: int = 0,
    reference_episodes: int = 1000,
) -> dict[str, Any]:
    """Pick random/medium/expert from a MATD3 run, copy them (and the replay actors), measure their returns
    (`eval_episodes`), and measure the expert and random references into references.json
    (`reference_episodes`, see training/data/references.py).

    The picks read the run's own evaluations (20 episodes each by default). Sparse rewards make those noisy
    enough that the best one is often a lucky actor; `selection_episodes` > 0 re-evaluates every checkpoint
    with that many episodes (seeds apart from the reference evaluation's) and picks on those instead.
    """
    from training.behaviour.actor import file_sha256, load_actor, numpy_policy
    from training.envs import env_spec, evaluate_policy

    spec = env_spec(env)
    history = json.loads((run_dir / "evaluations.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    if selection_episodes > 0:
        history = _reevaluate(run_dir, env, history, selection_episodes, noise_std)
    by_step = {h["step"]: h for h in history}
    random_entry = by_step[0]
    # Expert: the best evaluated actor (MATD3's last one can sit in a dip; the paper calls it "fully trained").
    # Actors of the warm-up (uniform actions, no updates yet) are still the initial network.
    trained = [h for h in history if h["step"] > config["warmup"]] or history[-1:]
    expert_entry = max(trained, key=lambda h: h["mean_return"])
    halfway = 0.5 * (random_entry["mean_return"] + expert_entry["mean_return"])
    candidates = [h for h in trained if h["step"] < expert_entry["step"]] or [random_entry]
    medium_entry = min(candidates, key=lambda h: abs(h["mean_return"] - halfway))

    target = checkpoint_dir(env, root)
    if target.exists():
        shutil.rmtree(target)
    seeds = [2_000_000 + i for i in range(eval_episodes)]
    entries: dict[str, Any] = {}
    for quality, entry in (("random", random_entry), ("medium", medium_entry), ("expert", expert_entry)):
        source = run_dir / "checkpoints" / f"step_{entry['step']:08d}"
        shutil.copytree(source, target / quality)
        actor, _ = load_actor(target / quality, spec)
        result = evaluate_policy(env, numpy_policy(actor, noise_std, seed=1), seeds, n_envs=25)
        entries[quality] = {
            "step": entry["step"],
            "training_eval_return": entry.get("run_eval_return", entry["mean_return"]),
            **({"selection_return": entry["mean_return"]} if selection_episodes > 0 else {}),
            "mean_return": result.mean_return,
            "std_return": float(np.std(result.returns)),
            "sha256": file_sha256(target / quality / "actor.safetensors"),
        }
    replay_steps = sorted(h["step"] for h in history if h["step"] <= medium_entry["step"])
    replay_steps = replay_steps[::replay_every] if replay_every > 1 else replay_steps
    replay = []
    for step in replay_steps:
        name = f"step_{step:08d}"
        shutil.copytree(run_dir / "checkpoints" / name, target / "replay" / name)
        replay.append({"dir": f"replay/{name}", "step": step})
    manifest = {
        "env": env,
        "algo": "matd3",
        "run_config": config,
        "selection_episodes": selection_episodes,
        "collection_noise_std": noise_std,
        "evaluation_episodes": eval_episodes,
        "qualities": entries,
        "reference_returns": {
            "expert": entries["expert"]["mean_return"],
            "random": entries["random"]["mean_return"],
        },
        "medium_replay": {
            "until_step": medium_entry["step"],
            "warmup": config["warmup"],
            "exploration_noise": config["exploration_noise"],
            "actors": replay,
        },
    }
    (target / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    # The datasets' normalisation references: `reference_episodes` episodes each, with standard errors.
    from training.data.references import measure_references, write_references

    write_references(env, measure_references(env, reference_episodes, root), root)
    return manifest


SELECTION_SEED_BASE = 3_000_000  # apart from training (run seed), run evaluations (1e6) and references (2e6)


def _reevaluate(
    run_dir: Path, env: str, history: list[dict[str, Any]], episodes: int, noise_std: float
) -> list[dict[str, Any]]:
    """`history` with each entry's mean return replaced by a fresh `episodes`-episode evaluation."""
    from tqdm import tqdm

    from training.behaviour.actor import load_actor, numpy_policy
    from training.envs import env_spec, evaluate_policy

    spec = env_spec(env)
    seeds = [SELECTION_SEED_BASE + i for i in range(episodes)]
    fresh = []
    for entry in tqdm(history, desc=f"re-evaluating {env} checkpoints", unit="checkpoint"):
        actor, _ = load_actor(run_dir / "checkpoints" / f"step_{entry['step']:08d}", spec)
        result = evaluate_policy(env, numpy_policy(actor, noise_std, seed=1), seeds, n_envs=25)
        fresh.append({**entry, "run_eval_return": entry["mean_return"], "mean_return": result.mean_return})
    return fresh

"""Why every learned policy scores under its expert data (issue 20): the measurements behind
docs/training.md, "The gap to the data".

    python -m benchmarks.gap [--only PREFIX] [--list]

Each measurement appends one JSON line to benchmarks/results/gap.jsonl, keyed by `key`; a key already there is
skipped, so an interrupted session resumes where it stopped. Runs train through the real trainer (same data
path, networks and evaluation as `om2p train`) under benchmarks/results/tmp/gap/ (not committed) and are then
re-measured on their final checkpoint:

- `test30`: the trainer's own evaluation, the first 30 test episodes (seeds 100000..100029, e = 0), as the
  issue quotes it; `test1000`: the same checkpoint on 1,000 episodes (seeds 100000..100999);
- mean-flow actors also with the mean action over 16 noise draws (`mean_e16`) and with one sampled noise
  (`sampled`), on the same 1,000 episodes;
- action errors on 4,096 dataset rows: mean squared error per action entry to the dataset's action
  (`mse_data`) and to the expert's noise-free action (`mse_expert`), and the share of entries the policy's
  [-1, 1] clip changes (`clipped`).

Behaviour measurements evaluate the shipped expert actor itself, with and without its collection noise, on
the trainer's evaluation seeds and on the reference seeds: the ceiling a clone can reach on the seeds it is
tested on. One torch thread, CPU.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

ENV = "cooperative_navigation"
DATASET = Path("data") / ENV / "expert.npz"
OUT = Path("benchmarks/results/gap.jsonl")
RUNS = Path("benchmarks/results/tmp/gap")
EVAL_SEED = 100_000  # the trainer's default `eval_seed`
REFERENCE_SEED = 2_000_000  # training/data/references.py's SEED_BASE
GRID_TEST_SEED = 200_000
TEST_EPISODES = 1000
ISSUE_EPISODES = 30
ERROR_ROWS = 4096
NOISE_DRAWS = 16
# The grid's networks and batch (benchmarks/grid/settings.py FULL_COMMON).
SMALL = {"actor_hidden": [128, 128], "critic_hidden": [128, 128], "batch_size": 128}
MEAN_FLOW = ("om2p", "bc")


@dataclass(frozen=True)
class Run:
    """One training run: `algo` with `SMALL` plus `changes`, evaluated every `eval_every` on 30 episodes."""

    key: str
    algo: str
    steps: int
    changes: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    eval_every: int = 2500


@dataclass(frozen=True)
class Behaviour:
    """The shipped actor of `quality` with Gaussian noise `noise`, on `episodes` seeds from `first_seed`."""

    key: str
    noise: float
    first_seed: int
    episodes: int
    quality: str = "expert"


def measurements() -> list[Run | Behaviour | str]:
    return [
        "data",
        Behaviour("behaviour/expert/noise0.1/seeds100000/30", 0.1, EVAL_SEED, ISSUE_EPISODES),
        Behaviour("behaviour/expert/noise0.1/seeds100000/1000", 0.1, EVAL_SEED, TEST_EPISODES),
        Behaviour("behaviour/expert/noise0/seeds100000/30", 0.0, EVAL_SEED, ISSUE_EPISODES),
        Behaviour("behaviour/expert/noise0/seeds100000/1000", 0.0, EVAL_SEED, TEST_EPISODES),
        Behaviour("behaviour/expert/noise0.1/seeds2000000/1000", 0.1, REFERENCE_SEED, TEST_EPISODES),
        Behaviour("behaviour/expert/noise0/seeds2000000/1000", 0.0, REFERENCE_SEED, TEST_EPISODES),
        # The results grid's test seeds (benchmarks/grid/settings.py Protocol.test_seed).
        Behaviour("behaviour/expert/noise0/seeds200000/1000", 0.0, GRID_TEST_SEED, TEST_EPISODES),
        Run("train/bc_mse/default/seed0/10k", "bc_mse", 10_000),
        Run("train/bc_mse/default/seed1/10k", "bc_mse", 10_000, seed=1),
        Run("train/bc_mse/default/seed2/10k", "bc_mse", 10_000, seed=2),
        Run("train/bc_mse/batch256/seed0/10k", "bc_mse", 10_000, {"batch_size": 256}),
        Run("train/bc_mse/2x256/seed0/10k", "bc_mse", 10_000, {"actor_hidden": [256, 256]}),
        Run("train/bc_mse/relu/seed0/10k", "bc_mse", 10_000, {"activation": "relu"}),
        Run("train/bc_mse/raw_obs/seed0/10k", "bc_mse", 10_000, {"normalise_observations": False}),
        Run("train/bc_mse/default/seed0/40k", "bc_mse", 40_000, eval_every=5000),
        Run("train/bc/default/seed0/20k", "bc", 20_000),
        Run("train/bc/default/seed1/20k", "bc", 20_000, seed=1),
        Run("train/bc/default/seed2/20k", "bc", 20_000, seed=2),
        Run("train/bc/uniform/seed0/20k", "bc", 20_000, {"time_sampler": "uniform"}),
        Run("train/bc/logit_normal/seed0/20k", "bc", 20_000, {"time_sampler": "logit_normal"}),
        Run("train/bc/equal0/seed0/20k", "bc", 20_000, {"equal_time_ratio": 0.0}),
        Run("train/bc/2x256/seed0/20k", "bc", 20_000, {"actor_hidden": [256, 256]}),
        Run("train/bc/lr3e-4/seed0/20k", "bc", 20_000, {"actor_lr": 3e-4}),
        Run("train/bc/batch256/seed0/20k", "bc", 20_000, {"batch_size": 256}),
        Run("train/bc/raw_obs/seed0/20k", "bc", 20_000, {"normalise_observations": False}),
        Run("train/bc/default/seed0/100k", "bc", 100_000, eval_every=10_000),
        Run("train/om2p/alpha3/seed0/20k", "om2p", 20_000, {"alpha": 3.0}),
        Run("train/bc/residual/seed0/20k", "bc", 20_000, {"mean_flow_output": "residual"}),
        Run(
            "train/bc/residual-lr3e-4/seed0/20k",
            "bc",
            20_000,
            {"mean_flow_output": "residual", "actor_lr": 3e-4},
        ),
        Run(
            "train/om2p/alpha3-residual/seed0/20k",
            "om2p",
            20_000,
            {"alpha": 3.0, "mean_flow_output": "residual"},
        ),
    ]


def score_stats(returns: np.ndarray, references: dict[str, float]) -> dict[str, Any]:
    from training.data import normalised_score
    from training.trainer import normalised_score_se

    returns = np.asarray(returns, dtype=np.float64)
    return {
        "episodes": len(returns),
        "mean_return": float(returns.mean()),
        "normalised_score": float(normalised_score(float(returns.mean()), references)),
        "normalised_score_se": normalised_score_se(returns.tolist(), references),
    }


class Context:
    """What every measurement reads: the dataset, its references, the expert actor and a fixed row sample."""

    def __init__(self) -> None:
        from training.behaviour.actor import load_actor
        from training.behaviour.registry import checkpoint_dir
        from training.data import load_dataset
        from training.envs import env_spec

        self.spec = env_spec(ENV)
        self.dataset = load_dataset(DATASET, env=ENV)
        self.references = dict(self.dataset.metadata["reference_returns"])
        self.actors = {"expert": load_actor(checkpoint_dir(ENV) / "expert", self.spec)[0]}
        rows = np.random.default_rng(0).choice(len(self.dataset.observations), ERROR_ROWS, replace=False)
        self.obs = torch.as_tensor(np.asarray(self.dataset.observations)[rows], dtype=torch.float32)
        self.actions = torch.as_tensor(np.asarray(self.dataset.actions)[rows], dtype=torch.float32)
        with torch.no_grad():
            self.expert_actions = self.actors["expert"](self.obs)

    def evaluate(self, policy: Callable[[np.ndarray], np.ndarray], first_seed: int, episodes: int):
        from training.envs import evaluate_policy

        seeds = list(range(first_seed, first_seed + episodes))
        result = evaluate_policy(ENV, policy, seeds, n_envs=25)
        return score_stats(result.returns, self.references)


def measure_data(context: Context) -> dict[str, Any]:
    mask = torch.as_tensor(context.spec.action_mask, dtype=torch.float32)
    return {
        "what": "the dataset's own episodes (its seeds), and its actions against the noise-free expert",
        **score_stats(context.dataset.episode_returns, context.references),
        "references": context.dataset.metadata["references"],
        "mse_expert": entry_mse(context.actions, context.expert_actions, mask),
    }


def entry_mse(actions: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean squared error per real action entry."""
    return float(((actions - targets) * mask).square().sum() / (mask.sum() * actions.shape[0]))


def measure_behaviour(context: Context, item: Behaviour) -> dict[str, Any]:
    from training.behaviour.actor import numpy_policy

    policy = numpy_policy(context.actors[item.quality], item.noise, seed=1)
    return {
        "what": f"the shipped {item.quality} actor, noise std {item.noise}",
        "noise": item.noise,
        "first_seed": item.first_seed,
        **context.evaluate(policy, item.first_seed, item.episodes),
    }


def noise_policy(policy, mode: str, seed: int = 0):
    """A numpy batch policy over a `PolicyModule`: e = 0, one sampled e, or the mean action of many e."""
    generator = torch.Generator().manual_seed(seed)
    act_dim = int(policy.action_mask.shape[-1])

    @torch.no_grad()
    def act(observations: np.ndarray) -> np.ndarray:
        obs = torch.as_tensor(observations, dtype=torch.float32)
        shape = (*obs.shape[:-1], act_dim)
        if mode == "zero":
            return policy(obs, torch.zeros(shape)).numpy()
        if mode == "sampled":
            return policy(obs, torch.randn(shape, generator=generator)).numpy()
        draws = torch.randn((NOISE_DRAWS, *shape), generator=generator)
        return torch.stack([policy(obs, noise) for noise in draws]).mean(dim=0).numpy()

    return act


def action_errors(context: Context, policy, mean_flow: bool) -> dict[str, Any]:
    from training.networks import agent_major, batch_major

    mask = policy.action_mask
    obs, shape = context.obs, context.actions.shape
    generator = torch.Generator().manual_seed(1)
    out: dict[str, Any] = {}
    with torch.no_grad():
        zero = policy(obs, torch.zeros(shape))
        # The sampler's action before the policy's [-1, 1] clip: how often the clip changes it.
        raw = batch_major(
            policy.sampler(agent_major(policy.normalise(obs)), torch.zeros(shape).transpose(0, 1))
        )
        out["clipped"] = float(((raw.abs() > 1.0).float() * mask).sum() / (mask.sum() * shape[0]))
        candidates = {"zero": zero}
        if mean_flow:
            candidates["sampled"] = policy(obs, torch.randn(shape, generator=generator))
            draws = torch.randn((NOISE_DRAWS, *shape), generator=generator)
            candidates["mean_e16"] = torch.stack([policy(obs, e) for e in draws]).mean(dim=0)
        for name, actions in candidates.items():
            out[f"mse_data/{name}"] = entry_mse(actions, context.actions, mask)
            out[f"mse_expert/{name}"] = entry_mse(actions, context.expert_actions, mask)
    return out


def measure_run(context: Context, run: Run) -> dict[str, Any]:
    from training.checkpoint import load_policy
    from training.config import TrainConfig
    from training.trainer import train

    run_dir = RUNS / run.key
    if run_dir.exists():  # a run interrupted before its line was written starts again
        shutil.rmtree(run_dir)
    values = {
        **SMALL,
        **run.changes,
        "algo": run.algo,
        "env": ENV,
        "dataset": str(DATASET),
        "steps": run.steps,
        "seed": run.seed,
        "eval_every": run.eval_every,
        "eval_episodes": ISSUE_EPISODES,
        "num_threads": 1,
        "keep_checkpoints": 1,
    }
    config = TrainConfig.from_dict(values)
    started = time.perf_counter()
    train(config, run_dir, progress=False)
    seconds = time.perf_counter() - started
    with open(run_dir / "evaluations.csv") as handle:
        curve = [(int(r["step"]), round(float(r["normalised_score"]), 2)) for r in csv.DictReader(handle)]
    policy, info = load_policy(run_dir, device="cpu")
    policy.eval()
    mean_flow = run.algo in MEAN_FLOW
    out: dict[str, Any] = {
        "algo": run.algo,
        "changes": run.changes,
        "seed": run.seed,
        "steps": run.steps,
        "train_seconds": round(seconds, 1),
        "curve30": curve,
        "test30": {
            "normalised_score": info.evaluation["normalised_score"],
            "normalised_score_se": info.evaluation.get("normalised_score_se"),
        },
        "test1000": context.evaluate(noise_policy(policy, "zero"), EVAL_SEED, TEST_EPISODES),
        **action_errors(context, policy, mean_flow),
    }
    if mean_flow:
        out["test1000_mean_e16"] = context.evaluate(noise_policy(policy, "mean"), EVAL_SEED, TEST_EPISODES)
        out["test1000_sampled"] = context.evaluate(noise_policy(policy, "sampled"), EVAL_SEED, TEST_EPISODES)
    return out


def done_keys(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    return {json.loads(line)["key"] for line in path.read_text().splitlines() if line.strip()}


def key_of(item: Run | Behaviour | str) -> str:
    return item if isinstance(item, str) else item.key


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="run only the measurements whose key starts with this")
    parser.add_argument("--list", action="store_true", help="list the measurements and whether each is done")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    done = done_keys(OUT)
    todo = [m for m in measurements() if key_of(m).startswith(args.only)]
    if args.list:
        for item in todo:
            print(("done " if key_of(item) in done else "todo ") + key_of(item))
        return 0
    todo = [m for m in todo if key_of(m) not in done]
    context = Context()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    for item in (bar := tqdm(todo, desc="gap", unit="measurement")):
        bar.set_postfix_str(key_of(item))
        if isinstance(item, Run):
            result = measure_run(context, item)
        elif isinstance(item, Behaviour):
            result = measure_behaviour(context, item)
        else:
            result = measure_data(context)
        with open(OUT, "a") as handle:
            handle.write(json.dumps({"key": key_of(item), **result}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

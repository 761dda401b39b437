"""The training loop shared by every algorithm: seeding, batch sampling, evaluation in the real environment
with fixed seeds, CSV + TensorBoard logs, a learning-curve PNG, checkpoints and `--resume`."""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.algos import Algorithm, Batch, get_algorithm
from training.checkpoint import (
    CheckpointError,
    load_training_state,
    resolve_checkpoint,
    save_checkpoint,
    sha256_of,
)
from training.config import TrainConfig, deep_merge, flatten, upgrade_flat_fields
from training.cuda_graphs import GraphedStep, make_capturable
from training.envs import EnvSpec, env_spec, evaluate_policy
from training.policy import PolicyModule

METRICS_FILE = "metrics.csv"
EVALUATIONS_FILE = "evaluations.csv"
CURVE_FILE = "learning_curve.png"
# Standard deviations below this are treated as constant features (padding, fixed landmarks).
MIN_STD = 1e-3
# Config fields that may change between a run and its resumption.
RESUMABLE_CHANGES = {
    "steps",
    "eval_every",
    "eval_episodes",
    "eval_envs",
    "log_every",
    "device",
    "num_threads",
    "cuda_graphs",
    "compile_update",  # the same update, compiled or not (rounding differs, the losses do not)
}


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path
    step: int
    evaluation: dict[str, Any] | None


def normalised_score(mean_return: float, reference_returns: dict[str, float] | None) -> float | None:
    """100 (S - S_random) / (S_expert - S_random) through the datasets' own definition; None without
    reference returns (e.g. a dataset given in memory without them)."""
    if not reference_returns:
        return None
    from training.data import normalised_score as score

    return float(score(mean_return, reference_returns))


def normalised_score_se(returns: Sequence[float], reference_returns: dict[str, float] | None) -> float | None:
    """The standard error of the normalised score over these episodes (ddof 1): the returns' SE in units of
    the expert-random span. The references' own SEs are left out: they shift every run of a dataset alike.
    None without references or with fewer than two episodes."""
    if not reference_returns or len(returns) < 2:
        return None
    span = float(reference_returns["expert"]) - float(reference_returns["random"])
    if span == 0.0:
        return None
    return float(100.0 * np.std(returns, ddof=1) / math.sqrt(len(returns)) / abs(span))


def observation_statistics(
    observations: np.ndarray, spec: EnvSpec, enabled: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-agent, per-entry mean and std `[N, obs_dim]` of the dataset's observations; padded and constant
    entries get (0, 1) so they pass through unchanged."""
    n, d = spec.n_agents, spec.obs_dim
    if not enabled:
        return torch.zeros(n, d), torch.ones(n, d)
    flat = observations.reshape(-1, n, d).astype(np.float64)
    mean, std = flat.mean(axis=0), flat.std(axis=0)
    constant = (std < MIN_STD) | ~spec.obs_mask
    mean = np.where(constant, 0.0, mean)
    std = np.where(constant, 1.0, std)
    return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)


def load_training_data(path: str | Path, env: str) -> Any:
    """The offline dataset through the datasets part's validating loader."""
    try:
        from training.data import load_dataset
    except ImportError:
        raise ValueError(
            f"{path}: cannot load datasets: the training.data part is not in this build"
        ) from None
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: dataset not found (make one with `om2p data ...`)")
    return load_dataset(Path(path), env=env)


def dataset_metadata(dataset: Any) -> dict[str, Any]:
    """The dataset's metadata as plain JSON-able data (a dict, a dataclass or a pydantic model)."""
    import dataclasses

    metadata = getattr(dataset, "metadata", {})
    if hasattr(metadata, "model_dump"):
        return metadata.model_dump()
    if dataclasses.is_dataclass(metadata) and not isinstance(metadata, type):
        return dataclasses.asdict(metadata)
    return dict(metadata)


class ReplayTensors:
    """The whole dataset on the training device; batches are uniform index draws from the torch RNG.
    Rewards are stored times `reward_scale`."""

    def __init__(self, dataset: Any, device: torch.device, reward_scale: float = 1.0) -> None:
        def tensor(name: str) -> torch.Tensor:
            return torch.as_tensor(np.asarray(getattr(dataset, name), dtype=np.float32), device=device)

        self.observations = tensor("observations")
        self.actions = tensor("actions")
        self.rewards = tensor("rewards") * reward_scale
        self.next_observations = tensor("next_observations")
        self.dones = tensor("dones")
        self.size = int(self.observations.shape[0])
        self.device = device

    def sample(self, batch_size: int) -> Batch:
        index = torch.randint(self.size, (batch_size,), device=self.device)
        return Batch(
            self.observations[index],
            self.actions[index],
            self.rewards[index],
            self.next_observations[index],
            self.dones[index],
        )


def policy_function(policy: PolicyModule, device: torch.device, noise_seed: int | None = None):
    """Wrap a `PolicyModule` as a numpy batch policy; deterministic (e = 0) unless `noise_seed` is given."""
    generator = None if noise_seed is None else torch.Generator().manual_seed(noise_seed)
    act_dim = int(policy.action_mask.shape[-1])

    @torch.no_grad()
    def act(observations: np.ndarray) -> np.ndarray:
        obs = torch.as_tensor(observations, dtype=torch.float32, device=device)
        shape = (*obs.shape[:-1], act_dim)
        if generator is None:
            noise = torch.zeros(shape, device=device)
        else:
            noise = torch.randn(shape, generator=generator).to(device)
        return policy(obs, noise).cpu().numpy()

    return act


def evaluate(
    policy: PolicyModule,
    env: str,
    seeds: Sequence[int],
    n_envs: int,
    reference_returns: dict[str, float] | None,
    noise_seed: int | None = None,
) -> dict[str, Any]:
    """Episodes in the real environment, one per fixed seed; returns and the normalised score."""
    device = policy.obs_mean.device
    was_training = policy.training
    policy.eval()
    try:
        result = evaluate_policy(env, policy_function(policy, device, noise_seed), list(seeds), n_envs)
    finally:
        policy.train(was_training)
    mean_return = result.mean_return
    return {
        "seeds": [int(s) for s in seeds],
        "returns": [float(x) for x in result.returns],
        "mean_return": mean_return,
        "std_return": float(np.std(result.returns)),
        "normalised_score": normalised_score(mean_return, reference_returns),
        "normalised_score_se": normalised_score_se(result.returns, reference_returns),
        "deterministic": noise_seed is None,
    }


class RunLogger:
    """metrics.csv (losses), evaluations.csv and TensorBoard under the run directory; appends on resume."""

    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = run_dir
        self.writer = SummaryWriter(str(run_dir / "tensorboard"))
        self._metric_fields: list[str] | None = None

    def log_losses(self, step: int, values: dict[str, float]) -> None:
        row = {"step": step, **values}
        path = self.run_dir / METRICS_FILE
        if self._metric_fields is None:
            if path.is_file() and path.stat().st_size > 0:
                with open(path) as handle:
                    self._metric_fields = next(csv.reader(handle))
            else:
                self._metric_fields = list(row)
                with open(path, "w", newline="") as handle:
                    csv.writer(handle).writerow(self._metric_fields)
        with open(path, "a", newline="") as handle:
            csv.DictWriter(handle, self._metric_fields, extrasaction="ignore").writerow(row)
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def log_evaluation(self, step: int, evaluation: dict[str, Any]) -> None:
        path = self.run_dir / EVALUATIONS_FILE
        fields = ["step", "mean_return", "std_return", "normalised_score", "episodes"]
        new = not path.is_file()
        with open(path, "a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(fields)
            score = evaluation["normalised_score"]
            writer.writerow(
                [step, evaluation["mean_return"], evaluation["std_return"], score, len(evaluation["returns"])]
            )
        self.writer.add_scalar("eval/mean_return", evaluation["mean_return"], step)
        if score is not None:
            self.writer.add_scalar("eval/normalised_score", score, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def plot_learning_curve(run_dir: Path) -> Path | None:
    """learning_curve.png: evaluation score (or return) and the losses against gradient steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evaluations, metrics = run_dir / EVALUATIONS_FILE, run_dir / METRICS_FILE
    if not evaluations.is_file():
        return None
    with open(evaluations) as handle:
        rows = list(csv.DictReader(handle))
    losses: list[dict[str, str]] = []
    if metrics.is_file():
        with open(metrics) as handle:
            losses = list(csv.DictReader(handle))
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    steps = [int(r["step"]) for r in rows]
    has_score = all(r["normalised_score"] not in ("", "None") for r in rows)
    key, label = ("normalised_score", "normalised score") if has_score else ("mean_return", "mean return")
    top.plot(steps, [float(r[key]) for r in rows], marker="o")
    top.set_ylabel(label)
    top.set_title(f"{run_dir.name}: evaluation (deterministic, fixed seeds)")
    top.grid(alpha=0.3)
    if losses:
        loss_steps = [int(r["step"]) for r in losses]
        for name in (k for k in losses[0] if k.startswith("loss/")):
            values = [float(r[name]) if r.get(name) not in (None, "") else math.nan for r in losses]
            bottom.plot(loss_steps, values, label=name.removeprefix("loss/"))
        bottom.set_yscale("symlog", linthresh=1e-2)
        bottom.legend(fontsize=8)
    bottom.set_xlabel("gradient step")
    bottom.set_ylabel("loss")
    bottom.grid(alpha=0.3)
    figure.tight_layout()
    path = run_dir / CURVE_FILE
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _restore_rng(state: dict[str, torch.Tensor], device: torch.device) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"].to(torch.uint8))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].to(torch.uint8), device)


def _check_resumable(saved: dict[str, Any], config: TrainConfig, path: Path) -> None:
    # A field the checkpoint does not record was added after it was written: the run used its default.
    # Flat baseline fields of checkpoints written before the per-algorithm sections move into them.
    # Only the run's own algorithm section matters: the other algorithms' settings do not change this run.
    saved = flatten(deep_merge(TrainConfig().to_dict(), upgrade_flat_fields(saved)))
    current = {
        k: v
        for k, v in flatten(config.to_dict()).items()
        if "." not in k or k.partition(".")[0] == config.algo
    }
    changed = sorted(k for k, v in current.items() if k not in RESUMABLE_CHANGES and saved.get(k) != v)
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in changed)
        raise CheckpointError(f"{path}: cannot resume with a different configuration ({details})")


def train(
    config: TrainConfig,
    run_dir: str | Path,
    dataset: Any | None = None,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train `config.algo` on the offline dataset and write everything under `run_dir`.

    `dataset` may be given directly (an object with the dataset arrays and `metadata`); otherwise
    `config.dataset` is loaded through `training.data.load_dataset`."""
    from tqdm import tqdm

    run_dir = Path(run_dir)
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("config field 'device': cuda requested but no CUDA device is available")
    if config.num_threads > 0:
        torch.set_num_threads(config.num_threads)
    spec = env_spec(config.env)
    dataset_path = Path(config.dataset) if config.dataset else Path("data") / config.env / "expert.npz"
    if dataset is None:
        dataset = load_training_data(dataset_path, config.env)
        dataset_record = {"path": str(dataset_path), "sha256": sha256_of(dataset_path)}
    else:
        dataset_record = {"path": str(config.dataset) or None, "sha256": None}
    metadata = dataset_metadata(dataset)
    if metadata.get("env", config.env) != config.env:
        raise ValueError(
            f"{dataset_path}: dataset is for environment {metadata['env']!r}, not {config.env!r}"
        )
    reference_returns = metadata.get("reference_returns")
    dataset_record.update(
        quality=metadata.get("quality"),
        transitions=int(np.asarray(dataset.observations).shape[0]),
        reference_returns=reference_returns,
        # With their standard errors (datasets of format 2), for pages that report the references.
        references=metadata.get("references"),
    )

    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    obs_mean, obs_std = observation_statistics(
        np.asarray(dataset.observations), spec, config.normalise_observations
    )
    algorithm: Algorithm = get_algorithm(config.algo)(spec, config, obs_mean, obs_std).to(device)
    optimizers = algorithm.optimizers()
    graphed = device.type == "cuda" and config.cuda_graphs and algorithm.supports_cuda_graphs
    if graphed:
        make_capturable(optimizers)
    start = 0
    evaluation: dict[str, Any] | None = None
    if resume:
        checkpoint = resolve_checkpoint(run_dir)
        from training.checkpoint import read_info

        saved = read_info(checkpoint)
        _check_resumable(saved.config, config, checkpoint)
        saved_info, rng = load_training_state(checkpoint, algorithm, optimizers)
        _restore_rng(rng, device)
        start, evaluation = saved_info.step, saved_info.evaluation
    elif (run_dir / "checkpoints").exists():
        raise ValueError(f"{run_dir}: already holds checkpoints; pass --resume or choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")

    replay = ReplayTensors(dataset, device, config.reward_scale)

    def training_step() -> dict[str, torch.Tensor]:
        return algorithm.update(replay.sample(config.batch_size))

    step_once = GraphedStep(training_step) if graphed else training_step
    logger = RunLogger(run_dir)
    seeds = range(config.eval_seed, config.eval_seed + config.eval_episodes)
    eval_every = config.eval_every if config.eval_every > 0 else config.steps
    checkpoint_path = run_dir
    started = time.perf_counter()
    bar = tqdm(total=config.steps, initial=start, desc=f"{config.algo} {config.env}", disable=not progress)
    try:
        algorithm.train()
        for step in range(start + 1, config.steps + 1):
            info = step_once()
            if step % config.log_every == 0 or step == config.steps:
                values = {k: float(v) for k, v in info.items()}
                values["time/steps_per_s"] = (step - start) / (time.perf_counter() - started)
                logger.log_losses(step, values)
                bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in values.items() if "loss" in k})
            if step % eval_every == 0 or step == config.steps:
                evaluation = evaluate(
                    algorithm.policy, config.env, seeds, config.eval_envs, reference_returns
                )
                logger.log_evaluation(step, evaluation)
                checkpoint_path = save_checkpoint(
                    run_dir,
                    algorithm,
                    {
                        "algo": config.algo,
                        "env": config.env,
                        "env_spec": spec.to_dict(),
                        "config": config.to_dict(),
                        "obs_mean": obs_mean.tolist(),
                        "obs_std": obs_std.tolist(),
                        "step": step,
                        "dataset": dataset_record,
                        "evaluation": evaluation,
                        "network_evaluations_per_action": algorithm.evaluations_per_action(),
                    },
                    optimizers,
                    _rng_state(device),
                    keep=config.keep_checkpoints,
                )
                plot_learning_curve(run_dir)
                score = evaluation["normalised_score"]
                bar.write(
                    f"step {step}: return {evaluation['mean_return']:.2f}"
                    + (f", normalised score {score:.1f}" if score is not None else "")
                )
            bar.update(1)
    finally:
        bar.close()
        logger.close()
    if start >= config.steps:
        checkpoint_path = resolve_checkpoint(run_dir)
    return TrainResult(run_dir, checkpoint_path, max(start, config.steps), evaluation)

"""Training checkpoints: safetensors + JSON, never pickle (docs/architecture.md, section 3).

    RUN_DIR/checkpoints/step_<8 digits>/weights.safetensors    all module state (`policy.*` is deployable)
                                       /optimizer.safetensors  optimizer state + RNG state, for --resume
                                       /checkpoint.json        config, env spec, normalisation, dataset, eval
    RUN_DIR/checkpoints/latest                                 text: the newest step directory's name

`load_policy(path)` rebuilds the `PolicyModule` from checkpoint.json alone and loads its weights; `path` may
be a step directory, a `checkpoints/` directory or a run directory (both resolve through `latest`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from training.checkpoint_files import (
    CHECKPOINTS_DIR,
    INFO_FILE,
    LATEST_FILE,
    OPTIMIZER_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    read_info_json,
    resolve_checkpoint,
)
from training.checkpoint_files import step_dir as step_directory
from training.config import TrainConfig
from training.policy import PolicyModule

__all__ = [
    "INFO_FILE",
    "LATEST_FILE",
    "OPTIMIZER_FILE",
    "WEIGHTS_FILE",
    "CheckpointError",
    "CheckpointInfo",
    "resolve_checkpoint",
]

FORMAT_VERSION = 1


@dataclass
class CheckpointInfo:
    """Everything checkpoint.json records, plus where it was read from."""

    path: Path
    format_version: int
    algo: str
    env: str
    env_spec: dict[str, Any]
    config: dict[str, Any]
    obs_mean: list[list[float]]
    obs_std: list[list[float]]
    step: int
    dataset: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] | None = None
    network_evaluations_per_action: int = 1
    weights_sha256: str = ""
    created_at: str = ""

    @property
    def agents(self) -> list[str]:
        return list(self.env_spec["agents"])

    @property
    def n_agents(self) -> int:
        return len(self.env_spec["agents"])

    @property
    def obs_dim(self) -> int:
        return int(self.env_spec["obs_dim"])

    @property
    def act_dim(self) -> int:
        return int(self.env_spec["act_dim"])

    @property
    def action_mask(self) -> list[list[bool]]:
        return self.env_spec["action_mask"]

    @property
    def reference_returns(self) -> dict[str, float] | None:
        return self.dataset.get("reference_returns")

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k not in ("path", "weights_sha256")}
        return data


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_info(path: str | Path) -> CheckpointInfo:
    step_dir = resolve_checkpoint(path)
    info_path = step_dir / INFO_FILE
    data = read_info_json(step_dir)
    if data.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{info_path}: field 'format_version' is {data.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    try:
        info = CheckpointInfo(path=step_dir, **data)
    except TypeError as error:
        raise CheckpointError(f"{info_path}: unexpected or missing fields: {error}") from None
    weights = step_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing (the checkpoint holds no weights)")
    info.weights_sha256 = sha256_of(weights)
    return info


def check_env(info: CheckpointInfo, env: str | None) -> None:
    """Refuse a checkpoint made for another environment, or whose dims no longer match the environment."""
    if env is None:
        return
    if info.env != env:
        raise CheckpointError(
            f"{info.path / INFO_FILE}: checkpoint is for environment {info.env!r}, not {env!r}"
        )
    from training.envs import env_spec

    spec = env_spec(env)
    expected = (spec.n_agents, spec.obs_dim, spec.act_dim)
    found = (info.n_agents, info.obs_dim, info.act_dim)
    if expected != found:
        raise CheckpointError(
            f"{info.path / INFO_FILE}: (agents, obs_dim, act_dim) {found} do not match {env!r} {expected}"
        )


def _spec_from_dict(data: dict[str, Any]):
    from training.envs.spec import EnvSpec

    return EnvSpec(
        name=data["name"],
        agents=tuple(data["agents"]),
        obs_dims=tuple(data["obs_dims"]),
        act_dims=tuple(data["act_dims"]),
        native_low=tuple(tuple(x) for x in data["native_low"]),
        native_high=tuple(tuple(x) for x in data["native_high"]),
        episode_length=data["episode_length"],
        backend=data["backend"],
        opponents=tuple(data.get("opponents", ())),
    )


def load_policy(
    path: str | Path, device: str | torch.device = "cpu", env: str | None = None
) -> tuple[PolicyModule, CheckpointInfo]:
    """The deployable policy of a checkpoint, in eval mode, and its recorded facts.

    `env`, when given, must be the checkpoint's environment (CheckpointError otherwise)."""
    from training.algos import get_algorithm

    info = read_info(path)
    check_env(info, env)
    config = TrainConfig.from_checkpoint_dict(info.config, source=str(info.path / INFO_FILE))
    spec = _spec_from_dict(info.env_spec)
    obs_mean, obs_std = torch.tensor(info.obs_mean), torch.tensor(info.obs_std)
    policy = get_algorithm(info.algo).build_policy(spec, config, obs_mean, obs_std)
    state = load_file(info.path / WEIGHTS_FILE, device="cpu")
    prefix = "policy."
    policy_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    try:
        policy.load_state_dict(policy_state)
    except RuntimeError as error:
        first = str(error).splitlines()[0:2]
        raise CheckpointError(
            f"{info.path / WEIGHTS_FILE}: weights do not fit the recorded config: {first}"
        ) from None
    return policy.to(device).eval().requires_grad_(False), info


def _flatten_optimizer(name: str, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            tensors[f"{name}/{index}/{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return tensors, {"param_groups": state["param_groups"]}


def _unflatten_optimizer(name: str, tensors: dict[str, torch.Tensor], groups: dict) -> dict:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        owner, _, rest = key.partition("/")
        if owner == name:
            index, entry = rest.split("/")
            state.setdefault(int(index), {})[entry] = value
    return {"state": state, "param_groups": groups["param_groups"]}


def save_checkpoint(
    run_dir: str | Path,
    algorithm: torch.nn.Module,
    info: dict[str, Any],
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
    rng_state: dict[str, torch.Tensor] | None = None,
    keep: int = 0,
) -> Path:
    """Write `RUN_DIR/checkpoints/step_<step>/`, point `latest` at it, keep the newest `keep` (0: all).

    `info` holds checkpoint.json's fields except `format_version` and `created_at`, which are added here."""
    checkpoints = Path(run_dir) / CHECKPOINTS_DIR
    step_dir = step_directory(run_dir, info["step"])
    partial = checkpoints / f".{step_dir.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    weights = {k: v.detach().cpu().contiguous().clone() for k, v in algorithm.state_dict().items()}
    save_file(weights, partial / WEIGHTS_FILE)
    if optimizers is not None:
        tensors: dict[str, torch.Tensor] = {}
        groups: dict[str, str] = {}
        for name, optimizer in optimizers.items():
            flat, group = _flatten_optimizer(name, optimizer)
            tensors.update(flat)
            groups[name] = json.dumps(group)
        for name, value in (rng_state or {}).items():
            tensors[f"rng/{name}"] = value.detach().cpu().contiguous()
        save_file(tensors, partial / OPTIMIZER_FILE, metadata=groups)
    record = {
        "format_version": FORMAT_VERSION,
        **info,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (partial / INFO_FILE).write_text(json.dumps(record, indent=2) + "\n")
    # Written under a temporary name and renamed, so a crash never leaves a half checkpoint as `latest`.
    shutil.rmtree(step_dir, ignore_errors=True)
    partial.rename(step_dir)
    (checkpoints / LATEST_FILE).write_text(step_dir.name + "\n")
    if keep > 0:
        steps = sorted(p for p in checkpoints.glob("step_*") if p.is_dir())
        for old in steps[:-keep]:
            shutil.rmtree(old)
    return step_dir


def load_training_state(
    path: str | Path,
    algorithm: torch.nn.Module,
    optimizers: dict[str, torch.optim.Optimizer],
) -> tuple[CheckpointInfo, dict[str, torch.Tensor]]:
    """Restore all weights and optimizer state (for --resume); returns the info and the saved RNG state."""
    from safetensors import safe_open

    info = read_info(path)
    device = next(algorithm.parameters()).device
    state = load_file(info.path / WEIGHTS_FILE, device=str(device))
    try:
        algorithm.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(
            f"{info.path / WEIGHTS_FILE}: weights do not fit this configuration: {str(error).splitlines()[0]}"
        ) from None
    optimizer_path = info.path / OPTIMIZER_FILE
    if not optimizer_path.is_file():
        raise CheckpointError(f"{optimizer_path}: missing; this checkpoint cannot be resumed")
    tensors = load_file(optimizer_path, device="cpu")
    with safe_open(optimizer_path, framework="pt") as handle:
        metadata = handle.metadata() or {}
    for name, optimizer in optimizers.items():
        if name not in metadata:
            raise CheckpointError(f"{optimizer_path}: no state for optimizer {name!r}")
        optimizer.load_state_dict(_unflatten_optimizer(name, tensors, json.loads(metadata[name])))
    rng = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("rng/")}
    return info, rng


def save_untrained(run_dir: str | Path, env: str, config: TrainConfig | None = None) -> Path:
    """A step-0 checkpoint with freshly initialised weights and identity observation normalisation: what
    export and serving can be developed against before any training run has finished."""
    from training.algos import get_algorithm
    from training.envs import env_spec

    config = (config or TrainConfig()).replace(env=env)
    spec = env_spec(env)
    torch.manual_seed(config.seed)
    obs_mean, obs_std = torch.zeros(spec.n_agents, spec.obs_dim), torch.ones(spec.n_agents, spec.obs_dim)
    algorithm = get_algorithm(config.algo)(spec, config, obs_mean, obs_std)
    info = {
        "algo": config.algo,
        "env": env,
        "env_spec": spec.to_dict(),
        "config": config.to_dict(),
        "obs_mean": obs_mean.tolist(),
        "obs_std": obs_std.tolist(),
        "step": 0,
        "dataset": {},
        "evaluation": None,
        "network_evaluations_per_action": algorithm.evaluations_per_action(),
    }
    return save_checkpoint(run_dir, algorithm, info)

"""The decentralised MATD3 actor and its small on-disk form (safetensors + JSON, never pickle).

Kept apart from the trainer so that dataset collection only needs the actor weights.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from training.envs import EnvSpec
from training.networks import GroupedMLP, agent_major, batch_major

ACTOR_FILE = "actor.safetensors"
INFO_FILE = "actor.json"


class Actor(nn.Module):
    """One deterministic policy per agent, all agents in one batched MLP: `[B, N, obs] -> [B, N, act]`."""

    def __init__(
        self, n_agents: int, obs_dim: int, act_dim: int, hidden: tuple[int, ...], action_mask
    ) -> None:
        super().__init__()
        self.net = GroupedMLP(n_agents, obs_dim, hidden, act_dim, activation="relu")
        # Padded action entries never reach the environment; keeping them 0 keeps datasets canonical.
        self.register_buffer("action_mask", torch.as_tensor(np.asarray(action_mask), dtype=torch.float32))
        self.hidden = tuple(hidden)

    def preactivations(self, observations: torch.Tensor) -> torch.Tensor:
        """The outputs before tanh, `[B, N, act]` (what an action penalty regularises)."""
        return batch_major(self.net(agent_major(observations)))

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.preactivations(observations)) * self.action_mask


def build_actor(spec: EnvSpec, hidden: tuple[int, ...]) -> Actor:
    return Actor(spec.n_agents, spec.obs_dim, spec.act_dim, hidden, spec.action_mask)


def save_actor(directory: Path, actor: Actor, env: str, extra: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / ACTOR_FILE
    state = {k: v.detach().contiguous() for k, v in actor.state_dict().items() if k != "action_mask"}
    save_file(state, str(weights))
    info = {"env": env, "hidden": list(actor.hidden), "sha256": file_sha256(weights), **extra}
    (directory / INFO_FILE).write_text(json.dumps(info, indent=2))
    return weights


def load_actor(directory: Path, spec: EnvSpec) -> tuple[Actor, dict]:
    """Load an actor saved by `save_actor`; the JSON names the environment and the network widths."""
    info_path = Path(directory) / INFO_FILE
    if not info_path.is_file():
        raise FileNotFoundError(f"{info_path}: behaviour checkpoint info not found")
    info = json.loads(info_path.read_text())
    if info.get("env") != spec.name:
        raise ValueError(f"{info_path}: field 'env' is {info.get('env')!r}, expected {spec.name!r}")
    actor = build_actor(spec, tuple(info["hidden"]))
    state = load_file(str(Path(directory) / ACTOR_FILE))
    actor.load_state_dict({**state, "action_mask": actor.action_mask}, strict=True)
    actor.eval()
    return actor, info


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def numpy_policy(actor: Actor, noise_std: float = 0.0, seed: int = 0):
    """A `BatchPolicy` for `evaluate_policy`/collection: Gaussian exploration noise, clipped to [-1, 1]."""
    rng = np.random.default_rng(seed)
    mask = actor.action_mask.numpy()

    def act(observations: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            actions = actor(torch.as_tensor(observations, dtype=torch.float32)).numpy()
        if noise_std > 0:
            actions = actions + rng.normal(0.0, noise_std, size=actions.shape)
        return (np.clip(actions, -1.0, 1.0) * mask).astype(np.float32)

    return act

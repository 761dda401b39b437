"""Online MATD3 (Ackermann et al. 2019): the behaviour policies of the offline datasets (OMAR protocol).

TD3 per agent with centralised critics: decentralised actors `pi_i(o_i)`, twin critics per agent
`Q_i^{1,2}(o_1..o_N, a_1..a_N)`, target-policy smoothing, clipped double-Q targets, delayed actor and target
updates, Gaussian exploration noise. The team reward is shared, so every agent's critic regresses the same
target; all of them live in one `GroupedMLP` (2N groups) and cost one batched matmul.

    RUN_DIR/checkpoints/step_<8 digits>/actor.safetensors + actor.json   (actor + evaluation return)
    RUN_DIR/evaluations.json                                            (step, mean return, std), growing
    RUN_DIR/state/                                                      everything `--resume` needs
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file, save_file
from torch.nn import functional as F
from tqdm import tqdm

from training.behaviour.actor import build_actor, numpy_policy, save_actor
from training.behaviour.shaping import PursuitShaping
from training.envs import EnvSpec, VectorEnv, env_spec, evaluate_policy
from training.networks import GroupedMLP

EVAL_SEED_BASE = 1_000_000  # evaluation episodes never share a seed with training episodes


@dataclass
class MATD3Config:
    env: str = "cooperative_navigation"
    """benchmark name (training.envs.ENV_NAMES)"""
    steps: int = 200_000
    """environment transitions to collect in total"""
    seed: int = 0
    """seeds torch, numpy and the episodes"""
    n_envs: int = 4
    """environments stepped in lockstep (one batched actor call per step)"""
    actor_hidden: tuple[int, ...] = (64, 64)
    """actor widths: small, so shipped checkpoints stay tiny"""
    critic_hidden: tuple[int, ...] = (128, 128)
    """critic widths"""
    gamma: float = 0.95
    """discount (MPE's 25-step episodes)"""
    tau: float = 0.01
    """Polyak rate of the target networks"""
    actor_lr: float = 1e-3
    critic_lr: float = 1e-3
    batch_size: int = 256
    updates_per_step: float = 0.25
    """gradient updates per collected transition"""
    warmup: int = 5_000
    """transitions of uniform random actions before learning starts"""
    exploration_noise: float = 0.1
    """std of the Gaussian noise added to actions while collecting"""
    target_noise: float = 0.2
    """std of the target-policy smoothing noise"""
    target_noise_clip: float = 0.5
    policy_delay: int = 2
    """critic updates per actor (and target) update"""
    eval_interval: int = 5_000
    """transitions between evaluations + checkpoints"""
    eval_episodes: int = 20
    action_penalty: float = 0.0
    """weight of the mean squared pre-tanh actor output in the actor loss (MADDPG's 1e-3): keeps the
    actor out of tanh saturation, where Q's gradient vanishes and the policy freezes at bang-bang"""
    pursuit_shaping: float = 0.0
    """weight of a per-step distance cost toward the evaders (predator_prey, world; training only)"""
    threads: int = 1
    """torch threads (the machine is shared)"""
    extra: dict = field(default_factory=dict)


class ReplayBuffer:
    """Joint transitions in insertion order (capacity = the whole run, so a prefix is the buffer at that step)."""

    FIELDS = ("observations", "actions", "rewards", "next_observations", "terminals", "episode_ends")

    def __init__(self, spec: EnvSpec, capacity: int) -> None:
        n, o, a = spec.n_agents, spec.obs_dim, spec.act_dim
        self.observations = np.zeros((capacity, n, o), np.float32)
        self.actions = np.zeros((capacity, n, a), np.float32)
        self.rewards = np.zeros(capacity, np.float32)
        self.next_observations = np.zeros((capacity, n, o), np.float32)
        self.terminals = np.zeros(capacity, np.float32)
        self.episode_ends = np.zeros(capacity, bool)
        self.size = 0

    def add(self, obs, actions, rewards, next_obs, terminals, episode_ends) -> None:
        k = len(obs)
        s = slice(self.size, self.size + k)
        self.observations[s], self.actions[s], self.rewards[s] = obs, actions, rewards
        self.next_observations[s], self.terminals[s], self.episode_ends[s] = next_obs, terminals, episode_ends
        self.size += k

    def sample(self, rng: np.random.Generator, batch: int) -> dict[str, torch.Tensor]:
        index = rng.integers(0, self.size, size=batch)
        return {name: torch.as_tensor(getattr(self, name)[index]) for name in self.FIELDS[:5]}

    def save(self, path: Path) -> None:
        save_numpy({name: getattr(self, name)[: self.size] for name in self.FIELDS}, str(path))

    def load(self, path: Path) -> None:
        arrays = load_numpy(str(path))
        self.size = len(arrays["rewards"])
        for name in self.FIELDS:
            getattr(self, name)[: self.size] = arrays[name]


class MATD3:
    def __init__(self, spec: EnvSpec, config: MATD3Config) -> None:
        self.spec, self.config = spec, config
        n = spec.n_agents
        joint = n * (spec.obs_dim + spec.act_dim)
        self.actor = build_actor(spec, config.actor_hidden)
        self.target_actor = build_actor(spec, config.actor_hidden)
        self.critic = GroupedMLP(2 * n, joint, config.critic_hidden, 1, activation="relu")
        self.target_critic = GroupedMLP(2 * n, joint, config.critic_hidden, 1, activation="relu")
        self.target_actor.load_state_dict(self.actor.state_dict())
        self.target_critic.load_state_dict(self.critic.state_dict())
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr)
        self.updates = 0

    def q_values(self, critic: GroupedMLP, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """`[2N, B]`: twin Q of every agent on the joint observation-action."""
        joint = torch.cat([obs.flatten(1), actions.flatten(1)], dim=1)
        return critic(joint.unsqueeze(0).expand(critic.n_groups, -1, -1)).squeeze(-1)

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        c = self.config
        n = self.spec.n_agents
        info: dict[str, float] = {}

        # Clipped double-Q target with target-policy smoothing.
        with torch.no_grad():
            next_actions = self.target_actor(batch["next_observations"])
            noise = (torch.randn_like(next_actions) * c.target_noise).clamp(
                -c.target_noise_clip, c.target_noise_clip
            )
            next_actions = (next_actions + noise).clamp(-1.0, 1.0) * self.actor.action_mask
            target_q = self.q_values(self.target_critic, batch["next_observations"], next_actions)
            target_q = torch.minimum(target_q[:n], target_q[n:])
            target = batch["rewards"] + c.gamma * (1.0 - batch["terminals"]) * target_q

        # Critic loss.
        q = self.q_values(self.critic, batch["observations"], batch["actions"])
        critic_loss = F.mse_loss(q, torch.cat([target, target]))
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optimizer.step()
        info["critic_loss"] = critic_loss.item()

        # Delayed actor loss: every agent ascends its first critic with all actions from the current actors.
        self.updates += 1
        if self.updates % c.policy_delay == 0:
            preactivations = self.actor.preactivations(batch["observations"])
            actions = torch.tanh(preactivations) * self.actor.action_mask
            actor_loss = -self.q_values(self.critic, batch["observations"], actions)[:n].mean()
            if c.action_penalty > 0.0:
                penalty = (preactivations * self.actor.action_mask).square().mean()
                actor_loss = actor_loss + c.action_penalty * penalty
            self.actor_optimizer.zero_grad(set_to_none=True)
            actor_loss.backward()
            self.actor_optimizer.step()
            info["actor_loss"] = actor_loss.item()
            with torch.no_grad():
                for net, target_net in ((self.actor, self.target_actor), (self.critic, self.target_critic)):
                    for p, tp in zip(net.parameters(), target_net.parameters(), strict=True):
                        tp.lerp_(p, c.tau)
        return info

    def modules(self) -> dict[str, torch.nn.Module]:
        return {
            "actor": self.actor,
            "target_actor": self.target_actor,
            "critic": self.critic,
            "target_critic": self.target_critic,
        }


def _optimizer_tensors(prefix: str, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    state = optimizer.state_dict()["state"]
    out = {}
    for index, values in state.items():
        for key, value in values.items():
            out[f"{prefix}.{index}.{key}"] = torch.as_tensor(value).reshape(-1) if key == "step" else value
    return out


def _load_optimizer(prefix: str, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    state_dict = optimizer.state_dict()
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        head, index, key = name.split(".")
        if head != prefix:
            continue
        state.setdefault(int(index), {})[key] = value.reshape(()) if key == "step" else value
    state_dict["state"] = state
    optimizer.load_state_dict(state_dict)


def save_state(directory: Path, agent: MATD3, buffer: ReplayBuffer, progress: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {
        f"{name}.{k}": v.contiguous()
        for name, m in agent.modules().items()
        for k, v in m.state_dict().items()
    }
    save_file(tensors, str(directory / "modules.safetensors"))
    optim = {
        **_optimizer_tensors("actor", agent.actor_optimizer),
        **_optimizer_tensors("critic", agent.critic_optimizer),
    }
    optim["torch_rng"] = torch.get_rng_state()
    save_file(optim, str(directory / "optimizer.safetensors"))
    buffer.save(directory / "replay.safetensors")
    (directory / "progress.json").write_text(json.dumps({**progress, "updates": agent.updates}))


def load_state(directory: Path, agent: MATD3, buffer: ReplayBuffer) -> dict:
    tensors = load_file(str(directory / "modules.safetensors"))
    for name, module in agent.modules().items():
        module.load_state_dict({k[len(name) + 1 :]: v for k, v in tensors.items() if k.split(".")[0] == name})
    optim = load_file(str(directory / "optimizer.safetensors"))
    torch.set_rng_state(optim.pop("torch_rng"))
    _load_optimizer("actor", agent.actor_optimizer, optim)
    _load_optimizer("critic", agent.critic_optimizer, optim)
    buffer.load(directory / "replay.safetensors")
    progress = json.loads((directory / "progress.json").read_text())
    agent.updates = progress["updates"]
    return progress


def evaluate(agent: MATD3, config: MATD3Config) -> tuple[float, float]:
    seeds = [EVAL_SEED_BASE + i for i in range(config.eval_episodes)]
    result = evaluate_policy(config.env, numpy_policy(agent.actor), seeds, n_envs=min(10, len(seeds)))
    return result.mean_return, float(np.std(result.returns))


def train(config: MATD3Config, out: Path, resume: bool = False) -> list[dict]:
    """Run MATD3; returns the evaluation history (also in RUN_DIR/evaluations.json)."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    spec = env_spec(config.env)
    out.mkdir(parents=True, exist_ok=True)
    agent = MATD3(spec, config)
    buffer = ReplayBuffer(spec, config.steps + config.n_envs)
    rng = np.random.default_rng(config.seed)
    history: list[dict] = []
    step, episodes, update_debt = 0, 0, 0.0
    state_dir = out / "state"
    if resume and (state_dir / "progress.json").is_file():
        progress = load_state(state_dir, agent, buffer)
        step, episodes, update_debt = progress["step"], progress["episodes"], progress["update_debt"]
        rng.bit_generator.state = progress["rng"]
        history = json.loads((out / "evaluations.json").read_text())
        # A restart begins fresh episodes, so the run differs from an uninterrupted one: say where.
        previous = json.loads((out / "config.json").read_text()).get("extra", {})
        extra = {**previous, **config.extra, "resumed_at": [*previous.get("resumed_at", []), step]}
        config = replace(config, extra=extra)
    # Written on every start: a resumed run may have been extended (`--steps`), and shipping reads it.
    (out / "config.json").write_text(json.dumps(asdict(config), indent=2))
    if not history:
        mean, std = evaluate(agent, config)
        history.append({"step": 0, "mean_return": mean, "std_return": std})
        save_actor(
            out / "checkpoints" / "step_00000000", agent.actor, config.env, {"step": 0, "mean_return": mean}
        )

    vector = VectorEnv(config.env, config.n_envs)
    shaping = PursuitShaping(config.env, config.pursuit_shaping)
    # Fresh episodes after (re)start: a seed per episode, drawn from the run's seed.
    seeds = [config.seed * 10_000_000 + episodes + i for i in range(config.n_envs)]
    episodes += config.n_envs
    observations = vector.reset(seeds)
    mask = spec.action_mask.astype(np.float32)
    bar = tqdm(
        total=config.steps,
        initial=step,
        desc=f"MATD3 {config.env}",
        unit="step",
        dynamic_ncols=True,
        mininterval=5.0,
    )
    last_info: dict[str, float] = {}
    started = time.time()
    try:
        while step < config.steps:
            if step < config.warmup:
                actions = rng.uniform(-1.0, 1.0, size=(config.n_envs, spec.n_agents, spec.act_dim))
            else:
                with torch.no_grad():
                    actions = agent.actor(torch.as_tensor(observations)).numpy()
                actions = actions + rng.normal(0.0, config.exploration_noise, size=actions.shape)
            actions = (np.clip(actions, -1.0, 1.0) * mask).astype(np.float32)
            next_obs, rewards, dones, infos = vector.step(actions)
            terminals = np.array([i["terminated"] for i in infos], np.float32)
            if shaping.enabled:
                rewards = rewards + shaping.bonus(vector.envs)
            buffer.add(observations, actions, rewards, next_obs, terminals, dones)
            observations = next_obs
            for index in np.flatnonzero(dones):
                observations[index] = vector.envs[index].reset(seed=config.seed * 10_000_000 + episodes)
                episodes += 1
            previous = step
            step += config.n_envs
            bar.update(config.n_envs)

            if step >= config.warmup:
                update_debt += config.updates_per_step * config.n_envs
                while update_debt >= 1.0:
                    last_info = agent.update(buffer.sample(rng, config.batch_size))
                    update_debt -= 1.0

            if step // config.eval_interval > previous // config.eval_interval or step >= config.steps:
                mean, std = evaluate(agent, config)
                history.append({"step": step, "mean_return": mean, "std_return": std, **last_info})
                save_actor(
                    out / "checkpoints" / f"step_{step:08d}",
                    agent.actor,
                    config.env,
                    {"step": step, "mean_return": mean},
                )
                (out / "evaluations.json").write_text(json.dumps(history, indent=1))
                save_state(
                    state_dir,
                    agent,
                    buffer,
                    {
                        "step": step,
                        "episodes": episodes,
                        "update_debt": update_debt,
                        "rng": rng.bit_generator.state,
                    },
                )
                bar.set_postfix(ret=f"{mean:.1f}", elapsed=f"{time.time() - started:.0f}s")
                tqdm.write(f"step {step}: eval return {mean:.2f} +- {std:.2f}")
    finally:
        bar.close()
        vector.close()
    return history

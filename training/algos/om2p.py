"""OM2P: offline multi-agent mean-flow policy (Li et al., arXiv 2508.06269), agent-batched.

Per agent i a mean-flow actor `u(z, r, t | o_i)` and an ensemble of two LayerNorm critics `Q(o_i, a_i)`;
all agents' networks are evaluated together (one batched matmul per layer). Conventions as in MeanFlow:
t = 0 is data, t = 1 is noise, z_t = (1 - t) x + t e, v = e - x.

Actor loss  L = L_MF + alpha * L_Q:
- L_MF = || u(z_t, r, t) - stopgrad(v - (t - r) d/dt u(z_t, r, t)) ||^2, the MeanFlow identity, with
  d/dt u = v . grad_z u + du/dt estimated by `fd`, `jvp` or `zero` (see the estimators below);
- L_Q = -mean Q(o_i, a_i) / stopgrad(mean |Q|) with a_i = clip(e - u(e, 0, 1 | o_i)), the gradient flowing
  through the single network evaluation that produced a_i.
Critic loss: TD error against r + gamma (1 - done) agg_k Q_target^k(o', a'), a' the one-step next action.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import contextmanager, nullcontext

import torch

from training.algos.base import Algorithm, Batch
from training.algos.critics import AgentCritics, critic_loss, normalised_q_loss, polyak_update, td_target
from training.algos.timesteps import sample_timesteps
from training.config import TrainConfig
from training.envs.spec import EnvSpec
from training.policy import MeanFlowActor, MeanFlowSampler, PolicyModule, constant_like

__all__ = [
    "OM2P",
    "du_dt_fd",
    "du_dt_jvp",
    "mean_flow_loss",
    "mean_flow_objective",
    "mean_flow_target",
    "path_point",
    "sample_timesteps",
]

VelocityField = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""`u(obs, z, r, t)`: the average velocity, e.g. a `MeanFlowActor`."""


# Mean-flow objective.


def path_point(x: torch.Tensor, e: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """z_t = (1 - t) x + t e and the instantaneous velocity v = e - x (t = 0 data, t = 1 noise)."""
    return (1.0 - t) * x + t * e, e - x


@torch.no_grad()
def du_dt_fd(
    u: VelocityField,
    obs: torch.Tensor,
    z: torch.Tensor,
    v: torch.Tensor,
    r: torch.Tensor,
    t: torch.Tensor,
    delta: float,
    u_now: torch.Tensor | None = None,
) -> torch.Tensor:
    """Derivative-free d/dt u (OM2P): a backward difference along the path, no graph.

    z_{t - delta} = z_t - delta v on the straight path, so
    d/dt u ~ [u(z_t, r, t) - u(z_t - delta v, r, t - delta)] / delta. `u_now` reuses an evaluation already
    made at (z_t, r, t). delta must be resolvable in float32 next to t (1e-3..1e-2): the reference code's
    1e-12 gives t - delta == t and a derivative of exactly zero (pitfall 2).
    """
    if u_now is None:
        u_now = u(obs, z, r, t)
    u_before = u(obs, z - delta * v, r, t - delta)
    return (u_now.float() - u_before.float()) / delta


def du_dt_jvp(
    u: VelocityField, obs: torch.Tensor, z: torch.Tensor, v: torch.Tensor, r: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact `(u, d/dt u)` by one forward-mode pass with tangent (v, 1) in (z, t).

    Forward mode is per sample by construction: each row's tangent only touches that row, unlike the
    reference code's full-batch Jacobian (O(B^2) memory, diagonal taken with a reshape that mixes samples,
    pitfall 3). The returned `u` keeps its graph for the loss.
    """
    return torch.func.jvp(lambda z_, t_: u(obs, z_, r, t_), (z, t), (v, torch.ones_like(t)))


def mean_flow_target(v: torch.Tensor, r: torch.Tensor, t: torch.Tensor, du_dt: torch.Tensor) -> torch.Tensor:
    """u_tgt = v - (t - r) d/dt u: the MeanFlow identity solved for u."""
    return v - (t - r) * du_dt


def mean_flow_loss(
    u_pred: torch.Tensor,
    u_target: torch.Tensor,
    action_mask: torch.Tensor | None = None,
    adaptive_power: float = 0.0,
) -> torch.Tensor:
    """|| u_pred - stopgrad(u_target) ||^2 summed over real action entries, averaged over rows.

    `adaptive_power` p > 0 weights each row by 1 / (err^2 + 1e-3)^p (MeanFlow's adaptive loss)."""
    error = u_pred - u_target.detach()
    if action_mask is not None:
        error = error * action_mask
    squared = error.float().square().sum(dim=-1)
    if adaptive_power > 0.0:
        squared = squared / (squared.detach() + 1e-3).pow(adaptive_power)
    return squared.mean()


def mean_flow_objective(
    u: VelocityField,
    obs: torch.Tensor,
    x: torch.Tensor,
    e: torch.Tensor,
    r: torch.Tensor,
    t: torch.Tensor,
    estimator: str = "fd",
    delta: float = 5e-3,
    action_mask: torch.Tensor | None = None,
    adaptive_power: float = 0.0,
) -> torch.Tensor:
    """L_MF for data `x` and noise `e` at times (r, t): the reference form of the loss (the trainer's
    `OM2P.update` computes the same quantity with its network passes fused)."""
    z, v = path_point(x, e, t)
    if estimator == "jvp":
        u_pred, derivative = du_dt_jvp(u, obs, z, v, r, t)
    else:
        u_pred = u(obs, z, r, t)
        if estimator == "fd":
            derivative = du_dt_fd(u, obs, z, v, r, t, delta, u_now=u_pred.detach())
        elif estimator == "zero":
            derivative = torch.zeros_like(u_pred)
        else:
            raise ValueError(f"unknown du/dt estimator {estimator!r}; choose fd, jvp or zero")
    target = mean_flow_target(v, r, t, derivative.detach())
    return mean_flow_loss(u_pred, target, action_mask, adaptive_power)


# The algorithm.


@contextmanager
def frozen(module: torch.nn.Module):
    """No parameter gradients for `module` (the actor's Q term differentiates through the critics' inputs
    only; skipping their weight gradients saves one matmul per layer)."""
    parameters = [p for p in module.parameters() if p.requires_grad]
    for p in parameters:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in parameters:
            p.requires_grad_(True)


class OM2P(Algorithm):
    """Agent-batched OM2P: mean-flow actors, twin LayerNorm critics, Polyak target critics."""

    name = "om2p"
    supports_cuda_graphs = True

    def __init__(self, spec: EnvSpec, config: TrainConfig, obs_mean: torch.Tensor, obs_std: torch.Tensor):
        super().__init__(spec, config, obs_mean, obs_std)
        self.policy = self.build_policy(spec, config, obs_mean, obs_std)
        self.critics = AgentCritics.for_config(spec, config)
        self.target_critics = copy.deepcopy(self.critics).requires_grad_(False)

    @classmethod
    def build_policy(
        cls, spec: EnvSpec, config: TrainConfig, obs_mean: torch.Tensor, obs_std: torch.Tensor
    ) -> PolicyModule:
        actor = MeanFlowActor(
            spec.n_agents,
            spec.obs_dim,
            spec.act_dim,
            config.actor_hidden,
            config.activation,
            share_parameters=config.share_parameters,
            output=config.mean_flow_output,
        )
        return PolicyModule.for_spec(MeanFlowSampler(actor, config.sampling_steps), spec, obs_mean, obs_std)

    @property
    def actor(self) -> MeanFlowActor:
        return self.policy.sampler.actor

    def evaluations_per_action(self) -> int:
        return self.config.sampling_steps

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self.lazy_adam(
            actor=(self.actor, self.config.actor_lr), critic=(self.critics, self.config.critic_lr)
        )

    def _autocast(self, device: torch.device):
        if not self.config.bf16_autocast:
            return nullcontext()
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        config, actor = self.config, self.actor
        optimizers = self.optimizers()
        obs, next_obs, x, rewards, dones, mask = self.agent_major_batch(batch)
        n, b = x.shape[0], x.shape[1]
        device = x.device

        e = torch.randn_like(x) * mask  # the mean-flow path's noise
        e_policy = torch.randn_like(x) * mask  # noise of the Q term's one-step action
        e_next = torch.randn_like(x) * mask  # noise of the TD target's next action
        r, t = sample_timesteps(config, (n, b, 1), device)
        z, v = path_point(x, e, t)
        zeros, ones = constant_like(x, 0.0), constant_like(x, 1.0)

        # One graph-free actor pass for everything that needs no gradient: the next actions and, for `fd`,
        # the earlier point on the path (plus the current point when the graph pass runs in bf16, whose
        # rounding would swamp a difference over delta).
        fd = config.du_dt == "fd"
        fp32_now = fd and config.bf16_autocast
        rows = [(next_obs, e_next, zeros, ones)]
        if fd:
            rows.append((obs, z - config.fd_delta * v, r, t - config.fd_delta))
        if fp32_now:
            rows.append((obs, z, r, t))
        with torch.no_grad():
            outputs = actor(*(torch.cat(parts, dim=1) for parts in zip(*rows, strict=True))).split(b, dim=1)
        next_actions = (e_next - outputs[0]).clamp(-1.0, 1.0) * mask

        # Critics: TD regression toward the target critics at the one-step next action.
        with torch.no_grad():
            target = td_target(
                rewards, dones, self.target_critics(next_obs, next_actions), config.gamma, config.q_aggregate
            )
        with self._autocast(device):
            q = self.critics(obs, x)
        loss_critic = critic_loss(q.float(), target)
        optimizers["critic"].zero_grad(set_to_none=True)
        loss_critic.backward()
        optimizers["critic"].step()

        # Actor: the mean-flow rows and the one-step rows of the Q term share one batched pass.
        use_q = config.alpha > 0.0
        graph_rows = [(obs, z, r, t)] + ([(obs, e_policy, zeros, ones)] if use_q else [])
        inputs = [torch.cat(parts, dim=1) for parts in zip(*graph_rows, strict=True)]
        with self._autocast(device):
            if config.du_dt == "jvp":
                # Tangent (v, 1) on the mean-flow rows, 0 on the one-step rows.
                tangent_z = torch.cat([v, torch.zeros_like(e_policy)], dim=1) if use_q else v
                tangent_t = torch.cat([ones, zeros], dim=1) if use_q else ones
                u_all, derivative_all = torch.func.jvp(
                    lambda z_, t_: actor(inputs[0], z_, inputs[2], t_),
                    (inputs[1], inputs[3]),
                    (tangent_z, tangent_t),
                )
                derivative = derivative_all[:, :b].float()
            else:
                u_all = actor(*inputs)
        u_pred = u_all[:, :b]
        if fd:
            u_now = outputs[2] if fp32_now else u_pred.detach()
            derivative = (u_now.float() - outputs[1].float()) / config.fd_delta
        elif config.du_dt == "zero":
            derivative = torch.zeros_like(x)
        u_target = mean_flow_target(v, r, t, derivative.detach())
        loss_mf = mean_flow_loss(u_pred, u_target, mask, config.adaptive_loss_power)
        info = {
            "loss/critic": loss_critic.detach(),
            "loss/mean_flow": loss_mf.detach(),
            "q/mean": q.detach().mean(),
        }
        loss_actor = loss_mf
        if use_q:
            policy_actions = (e_policy - u_all[:, b:]).clamp(-1.0, 1.0) * mask
            with frozen(self.critics), self._autocast(device):
                q_policy = self.critics(obs, policy_actions).float().mean(dim=1)
            loss_q = normalised_q_loss(q_policy)
            loss_actor = loss_mf + config.alpha * loss_q
            info["loss/q"] = loss_q.detach()
            # loss/q is -1 or 1 whenever every Q shares a sign; the raw value shows the actor's progress.
            info["q/policy"] = q_policy.detach().mean()
        optimizers["actor"].zero_grad(set_to_none=True)
        loss_actor.backward()
        optimizers["actor"].step()

        polyak_update(self.target_critics, self.critics, config.tau)
        info["loss/actor"] = loss_actor.detach()
        info["du_dt/abs_mean"] = derivative.detach().abs().mean()
        return info


ALGORITHM = OM2P

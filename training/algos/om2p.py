"""OM2P: offline multi-agent mean-flow policy (Li et al., arXiv 2508.06269), agent-batched.

Per agent i a mean-flow actor `u(z, r, t | o_i)` and an ensemble of two LayerNorm critics `Q(o_i, a_i)`;
all agents' networks are evaluated together (one batched matmul per layer). Conventions as in MeanFlow:
t = 0 is data, t = 1 is noise, z_t = (1 - t) x + t e, v = e - x.

Actor loss  L = L_MF + alpha * L_Q:
- L_MF = || u(z_t, r, t) - stopgrad(v - (t - r) d/dt u(z_t, r, t)) ||^2, the MeanFlow identity, with
  d/dt u = v . grad_z u + du/dt estimated by `fd`, `jvp` or `zero` (`DuDtEstimator`, one function each);
- L_Q = -mean Q(o_i, a_i) / stopgrad(mean |Q|) with a_i = clip(e - u(e, 0, 1 | o_i)), the gradient flowing
  through the single network evaluation that produced a_i.
Critic loss: TD error against r + gamma (1 - done) agg_k Q_target^k(o', a'), a' the one-step next action.

`mean_flow_loss` is the only implementation of L_MF: OM2P's actor loss, `bc` and the ablations all call it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import contextmanager
from typing import NamedTuple

import torch

from training.acceleration import bf16_autocast, native_bf16
from training.algos.base import AgentBatch, Algorithm, Batch
from training.algos.critics import AgentCritics, critic_loss, normalised_q_loss, polyak_update, td_target
from training.algos.timesteps import sample_timesteps
from training.config import DuDtEstimator, TrainConfig
from training.envs.spec import EnvSpec
from training.policy import MeanFlowActor, MeanFlowSampler, PolicyModule, constant_like

__all__ = [
    "DU_DT_ESTIMATORS",
    "OM2P",
    "MeanFlowLoss",
    "du_dt_fd",
    "du_dt_jvp",
    "masked_mse",
    "mean_flow_loss",
    "mean_flow_target",
    "path_point",
    "sample_timesteps",
]

VelocityField = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""`u(obs, z, r, t)`: the average velocity, e.g. a `MeanFlowActor`."""

Rows = tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor]
"""The inputs `(obs, z, r, t)` of one network pass, agent-major `[N, B, *]`."""


# Mean-flow objective.


def path_point(x: torch.Tensor, e: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """z_t = (1 - t) x + t e and the instantaneous velocity v = e - x (t = 0 data, t = 1 noise)."""
    return (1.0 - t) * x + t * e, e - x


def _stack_rows(*rows: Rows) -> Rows:
    """Several passes' inputs as one pass (rows concatenated on the batch axis); obs may be None."""
    return tuple(  # type: ignore[return-value]
        None if parts[0] is None else torch.cat(parts, dim=1) for parts in zip(*rows, strict=True)
    )


@torch.no_grad()
def du_dt_fd(
    u: VelocityField,
    obs: torch.Tensor | None,
    z: torch.Tensor,
    v: torch.Tensor,
    r: torch.Tensor,
    t: torch.Tensor,
    delta: float,
    u_now: torch.Tensor | None = None,
) -> torch.Tensor:
    """Derivative-free d/dt u (OM2P): a backward difference along the path, no graph, in float32.

    z_{t - delta} = z_t - delta v on the straight path, so
    d/dt u ~ [u(z_t, r, t) - u(z_t - delta v, r, t - delta)] / delta. `u_now` reuses an fp32 evaluation
    already made at (z_t, r, t); without it both points go through one pass. delta must be resolvable in
    float32 next to t (1e-3..1e-2): the reference code's 1e-12 gives t - delta == t and a derivative of
    exactly zero (pitfall 2). Autocast is off here: bf16 rounding (~4e-3 relative) divided by delta would
    swamp the difference.
    """
    earlier = (obs, z - delta * v, r, t - delta)
    with torch.autocast(device_type=z.device.type, enabled=False):
        if u_now is None:
            u_now, u_before = u(*_stack_rows((obs, z, r, t), earlier)).split(z.shape[1], dim=1)
        else:
            u_before = u(*earlier)
    return (u_now.float() - u_before.float()) / delta


def du_dt_jvp(
    u: VelocityField,
    obs: torch.Tensor | None,
    z: torch.Tensor,
    v: torch.Tensor,
    r: torch.Tensor,
    t: torch.Tensor,
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


def masked_mse(
    prediction: torch.Tensor,
    target: torch.Tensor,
    action_mask: torch.Tensor | None = None,
    adaptive_power: float = 0.0,
) -> torch.Tensor:
    """|| prediction - stopgrad(target) ||^2 summed over real action entries, averaged over rows.

    `adaptive_power` p > 0 weights each row by 1 / (err^2 + 1e-3)^p (MeanFlow's adaptive loss)."""
    error = prediction - target.detach()
    if action_mask is not None:
        error = error * action_mask
    squared = error.float().square().sum(dim=-1)
    if adaptive_power > 0.0:
        squared = squared / (squared.detach() + 1e-3).pow(adaptive_power)
    return squared.mean()


class Estimate(NamedTuple):
    """One graph pass over the mean-flow rows (first `b`) and any extra rows, and d/dt u on the first `b`."""

    u_all: torch.Tensor
    du_dt: torch.Tensor


def _fd_estimate(
    u: VelocityField, rows: Rows, path: Rows, v: torch.Tensor, delta: float, bf16: bool
) -> Estimate:
    b = v.shape[1]
    with bf16_autocast(bf16, v.device):
        u_all = u(*rows)
    # In fp32 the graph pass's own output is the later point; in bf16 its rounding is too coarse for it.
    u_now = None if bf16 else u_all[:, :b].detach()
    return Estimate(u_all, du_dt_fd(u, *path[:2], v, *path[2:], delta, u_now=u_now))


def _jvp_estimate(
    u: VelocityField, rows: Rows, path: Rows, v: torch.Tensor, delta: float, bf16: bool
) -> Estimate:
    b = v.shape[1]
    extra = rows[1].shape[1] - b
    # Tangent (v, 1) on the mean-flow rows, 0 on the extra rows.
    tangent_z = torch.cat([v, v.new_zeros(v.shape[0], extra, v.shape[2])], dim=1)
    tangent_t = torch.cat([torch.ones_like(path[3]), path[3].new_zeros(v.shape[0], extra, 1)], dim=1)
    with bf16_autocast(bf16, v.device):
        u_all, derivative = torch.func.jvp(
            lambda z_, t_: u(rows[0], z_, rows[2], t_), (rows[1], rows[3]), (tangent_z, tangent_t)
        )
    return Estimate(u_all, derivative[:, :b].float())


def _zero_estimate(
    u: VelocityField, rows: Rows, path: Rows, v: torch.Tensor, delta: float, bf16: bool
) -> Estimate:
    with bf16_autocast(bf16, v.device):
        u_all = u(*rows)
    return Estimate(u_all, torch.zeros_like(v))


DU_DT_ESTIMATORS: dict[DuDtEstimator, Callable[..., Estimate]] = {
    DuDtEstimator.FD: _fd_estimate,
    DuDtEstimator.JVP: _jvp_estimate,
    DuDtEstimator.ZERO: _zero_estimate,
}
"""d/dt u by estimator: `(u, graph rows, mean-flow rows, v, delta, bf16) -> Estimate`."""


class MeanFlowLoss(NamedTuple):
    loss: torch.Tensor
    """L_MF, a scalar with its graph."""
    du_dt: torch.Tensor
    """The d/dt u estimate on the mean-flow rows (detached), for logging."""
    extra: torch.Tensor | None
    """u at the extra rows, with its graph (OM2P's one-step actions for the Q term), or None."""


def mean_flow_loss(
    u: VelocityField,
    obs: torch.Tensor | None,
    x: torch.Tensor,
    e: torch.Tensor,
    r: torch.Tensor,
    t: torch.Tensor,
    estimator: DuDtEstimator | str = DuDtEstimator.FD,
    delta: float = 5e-3,
    action_mask: torch.Tensor | None = None,
    adaptive_power: float = 0.0,
    extra_rows: Rows | None = None,
    bf16: bool = False,
) -> MeanFlowLoss:
    """L_MF = || u(z_t, r, t) - stopgrad(v - (t - r) d/dt u) ||^2 for data `x`, noise `e` at times (r, t).

    `extra_rows` `(obs, z, r, t)` ride along in the same graph pass (one batched matmul per layer instead of
    two passes); their outputs come back as `extra`. `bf16` autocasts the graph pass (the fd difference
    stays fp32)."""
    z, v = path_point(x, e, t)
    path = (obs, z, r, t)
    rows = path if extra_rows is None else _stack_rows(path, extra_rows)
    # A StrEnum key also matches its plain string value (the config's), without a lookup dynamo would break on.
    u_all, du_dt = DU_DT_ESTIMATORS[estimator](u, rows, path, v, delta, bf16)
    b = x.shape[1]
    target = mean_flow_target(v, r, t, du_dt.detach())
    loss = masked_mse(u_all[:, :b], target, action_mask, adaptive_power)
    return MeanFlowLoss(loss, du_dt.detach(), None if extra_rows is None else u_all[:, b:])


# The algorithm.


@contextmanager
def frozen(module: torch.nn.Module):
    """No parameter gradients for `module` (an actor term that differentiates through the critics' inputs
    only; skipping their weight gradients saves one matmul per layer). Used by the TD3-style baselines;
    OM2P's compiled path uses `with_detached_weights` instead, which changes no Python state."""
    parameters = [p for p in module.parameters() if p.requires_grad]
    for p in parameters:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in parameters:
            p.requires_grad_(True)


def with_detached_weights(module: torch.nn.Module, *args: torch.Tensor) -> torch.Tensor:
    """`module(*args)` with its weights as constants: gradients reach the inputs, never the weights."""
    weights = {name: p.detach() for name, p in module.named_parameters()}
    return torch.func.functional_call(module, weights, args)


class StepInputs(NamedTuple):
    """One step's agent-major batch and every random draw of the step, made before the (compilable) losses
    so that compiled and eager steps see the same numbers."""

    batch: AgentBatch
    noise: torch.Tensor
    """e of the mean-flow path z_t = (1 - t) x + t e."""
    policy_noise: torch.Tensor
    """e of the Q term's one-step action."""
    next_noise: torch.Tensor
    """e of the TD target's one-step next action."""
    r: torch.Tensor
    t: torch.Tensor


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

    def bf16(self, device: torch.device) -> bool:
        """Whether the passes that carry gradients run under bf16 autocast on `device`."""
        return self.config.bf16_autocast and native_bf16(device)

    def step_inputs(self, batch: Batch) -> StepInputs:
        agent_batch = self.agent_major_batch(batch)
        x, mask = agent_batch.actions, agent_batch.mask
        noise = torch.randn_like(x) * mask
        policy_noise = torch.randn_like(x) * mask
        next_noise = torch.randn_like(x) * mask
        r, t = sample_timesteps(self.config, (x.shape[0], x.shape[1], 1), x.device)
        return StepInputs(agent_batch, noise, policy_noise, next_noise, r, t)

    def critic_loss(self, inputs: StepInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        config, batch = self.config, inputs.batch
        device = batch.actions.device

        # TD target: r + gamma (1 - done) agg_k Q_target^k(o', a'), a' = clip(e' - u(e', 0, 1 | o')).
        with torch.no_grad():
            e_next = inputs.next_noise
            u_next = self.actor(
                batch.next_obs, e_next, constant_like(e_next, 0.0), constant_like(e_next, 1.0)
            )
            next_actions = (e_next - u_next).clamp(-1.0, 1.0) * batch.mask
            next_q = self.target_critics(batch.next_obs, next_actions)
            target = td_target(batch.rewards, batch.dones, next_q, config.gamma, config.q_aggregate)

        # Critic loss: the squared TD error of every ensemble member.
        with bf16_autocast(self.bf16(device), device):
            q = self.critics(batch.obs, batch.actions)
        loss = critic_loss(q.float(), target)
        return loss, {"loss/critic": loss.detach(), "q/mean": q.detach().float().mean()}

    def actor_loss(self, inputs: StepInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        config, batch = self.config, inputs.batch
        x, mask, e_policy = batch.actions, batch.mask, inputs.policy_noise
        device, bf16 = x.device, self.bf16(x.device)
        use_q = config.alpha > 0.0

        # Mean-flow loss L_MF; the Q term's one-step rows u(e, 0, 1 | o) share its graph pass.
        one_step_rows = (batch.obs, e_policy, constant_like(x, 0.0), constant_like(x, 1.0))
        mean_flow = mean_flow_loss(
            self.actor,
            batch.obs,
            x,
            inputs.noise,
            inputs.r,
            inputs.t,
            config.du_dt,
            config.fd_delta,
            mask,
            config.adaptive_loss_power,
            extra_rows=one_step_rows if use_q else None,
            bf16=bf16,
        )
        info = {"loss/mean_flow": mean_flow.loss.detach(), "du_dt/abs_mean": mean_flow.du_dt.abs().mean()}
        loss = mean_flow.loss

        # Q loss L_Q = -mean Q(o_i, a_i) / stopgrad(mean |Q|), a_i = clip(e - u(e, 0, 1 | o_i)); the gradient
        # reaches the actor through a_i only (the critics' weights are constants here).
        if use_q:
            policy_actions = (e_policy - mean_flow.extra).clamp(-1.0, 1.0) * mask
            with bf16_autocast(bf16, device):
                q_policy = with_detached_weights(self.critics, batch.obs, policy_actions)
            q_policy = q_policy.float().mean(dim=1)
            loss_q = normalised_q_loss(q_policy)
            loss = loss + config.alpha * loss_q
            info["loss/q"] = loss_q.detach()
            # loss/q is -1 or 1 whenever every Q shares a sign; the raw value shows the actor's progress.
            info["q/policy"] = q_policy.detach().mean()
        info["loss/actor"] = loss.detach()
        return loss, info

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        optimizers = self.optimizers()
        inputs = self.step_inputs(batch)
        critic_loss_fn, actor_loss_fn = self.losses(inputs.batch.actions.device)

        loss_critic, info = critic_loss_fn(inputs)
        optimizers["critic"].zero_grad(set_to_none=True)
        loss_critic.backward()
        optimizers["critic"].step()

        # The actor's Q term reads the critics after their step, as in the sequential update of the paper.
        loss_actor, actor_info = actor_loss_fn(inputs)
        optimizers["actor"].zero_grad(set_to_none=True)
        loss_actor.backward()
        optimizers["actor"].step()

        polyak_update(self.target_critics, self.critics, self.config.tau)
        return info | actor_info


ALGORITHM = OM2P

"""The deployable policy: the mean-flow actor `u(z, r, t | o_i)` of all agents and the module that export
traces, `PolicyModule.forward(obs [B, N, obs_dim], noise [B, N, act_dim]) -> actions [B, N, act_dim]`.

Everything between raw observations and environment-ready actions happens inside `PolicyModule`:
observation normalisation, the K-step sampler (unrolled; K = 1 for one-step OM2P), clipping to [-1, 1] and
zeroing of padded action entries. No Python control flow depends on tensor values, so the graph traces.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from training.config import MEAN_FLOW_OUTPUTS, MeanFlowOutput
from training.networks import GroupedMLP, agent_major, batch_major

if TYPE_CHECKING:
    from training.envs.spec import EnvSpec


def constant_like(reference: torch.Tensor, value: float) -> torch.Tensor:
    """`[..., 1]` filled with `value`, shaped after `reference[..., :1]`; written as arithmetic on the input
    so the batch axis stays dynamic when traced to ONNX."""
    return reference[..., :1] * 0.0 + value


class MeanFlowActor(nn.Module):
    """Average velocity `u(z, r, t | o_i)` of every agent in one batched pass, agent-major `[N, B, *]`.

    The time inputs are `(t, t - r)` (MeanFlow's choice: the interval length is what `u` averages over).
    With `share_parameters` one MLP serves all agents and a one-hot agent id is appended to its input.

    `output` says what the MLP's output f is: `velocity`, u = f (the paper's), or `residual`, u = z - f. Both
    describe the same functions; they differ in what the network must learn. With `velocity` the one-step
    action e - f(e, 0, 1) needs f to carry e through unchanged, and any error in that identity lands in the
    action; with `residual` the action is f(e, 0, 1) itself, and on a near-deterministic expert f is close to
    the action wherever t is near 1 (docs/training.md, "The gap to the data").
    """

    def __init__(
        self,
        n_agents: int,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int],
        activation: str = "gelu",
        share_parameters: bool = False,
        output: str = "velocity",
    ) -> None:
        super().__init__()
        if output not in MEAN_FLOW_OUTPUTS:
            raise ValueError(
                f"unknown mean-flow output {output!r}; choose one of {', '.join(MEAN_FLOW_OUTPUTS)}"
            )
        self.n_agents, self.obs_dim, self.act_dim = n_agents, obs_dim, act_dim
        self.share_parameters, self.output = share_parameters, output
        in_features = obs_dim + act_dim + 2 + (n_agents if share_parameters else 0)
        groups = 1 if share_parameters else n_agents
        self.net = GroupedMLP(groups, in_features, tuple(hidden), act_dim, activation)
        if share_parameters:
            self.register_buffer("agent_ids", torch.eye(n_agents).unsqueeze(1), persistent=False)

    def forward(self, obs: torch.Tensor, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """`obs [N, B, obs_dim]`, `z [N, B, act_dim]`, `r`, `t` `[N, B, 1]` -> `u [N, B, act_dim]`."""
        x = torch.cat([obs, z, t, t - r], dim=-1)
        if not self.share_parameters:
            f = self.net(x)
        else:
            n, b = x.shape[0], x.shape[1]
            ids = self.agent_ids.expand(n, b, n)
            # Agents become rows of one group: the shared MLP sees [1, N*B, F].
            f = self.net(torch.cat([x, ids], dim=-1).reshape(1, n * b, -1)).reshape(n, b, self.act_dim)
        return z - f if self.output == MeanFlowOutput.RESIDUAL else f

    def flops_per_row(self) -> int:
        """Multiply-add FLOPs of one evaluation for one (agent, sample) row."""
        return self.net.flops_per_row()


class MeanFlowSampler(nn.Module):
    """`steps` network evaluations from noise (t = 1) to an action (t = 0): z_r = z_t - (t - r) u(z_t, r, t).
    With one step this is the one-step action `e - u(e, 0, 1 | o)`."""

    def __init__(self, actor: MeanFlowActor, steps: int = 1) -> None:
        super().__init__()
        self.actor, self.steps = actor, steps

    def forward(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        z = noise
        for k in range(self.steps, 0, -1):  # unrolled: `steps` is a Python constant
            t, r = k / self.steps, (k - 1) / self.steps
            z = z - (t - r) * self.actor(obs, z, constant_like(z, r), constant_like(z, t))
        return z

    def evaluations_per_action(self) -> int:
        return self.steps


def one_step_action(actor: MeanFlowActor, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """`a = e - u(e, 0, 1 | o)` (agent-major, unclipped): the single evaluation training and serving share.

    The reference code returns `u(e, 0, 1)` itself (pitfall 1), which disagrees with how it was trained.
    """
    return noise - actor(obs, noise, constant_like(noise, 0.0), constant_like(noise, 1.0))


class PolicyModule(nn.Module):
    """Raw observations and noise in, environment-ready actions out, all agents at once (batch-major).

    `sampler` maps normalised agent-major observations `[N, B, obs_dim]` and noise `[N, B, act_dim]` to
    unclipped actions `[N, B, act_dim]`; OM2P uses `MeanFlowSampler`, baselines plug in their own.
    """

    def __init__(
        self,
        sampler: nn.Module,
        obs_mean: torch.Tensor,
        obs_std: torch.Tensor,
        action_mask: torch.Tensor,
    ) -> None:
        super().__init__()
        self.sampler = sampler
        self.register_buffer("obs_mean", obs_mean.detach().float().clone())
        self.register_buffer("obs_std", obs_std.detach().float().clone())
        self.register_buffer("action_mask", action_mask.detach().float().clone())

    @classmethod
    def for_spec(
        cls, sampler: nn.Module, spec: EnvSpec, obs_mean: torch.Tensor, obs_std: torch.Tensor
    ) -> PolicyModule:
        """`sampler` behind the environment's action mask (padded action entries are always zero)."""
        return cls(sampler, obs_mean, obs_std, torch.as_tensor(spec.action_mask, dtype=torch.float32))

    @property
    def n_agents(self) -> int:
        return int(self.obs_mean.shape[0])

    def normalise(self, obs: torch.Tensor) -> torch.Tensor:
        """`[..., N, obs_dim]` raw -> standardised with the training dataset's statistics."""
        return (obs - self.obs_mean) / self.obs_std

    def forward(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """`obs [B, N, obs_dim]`, `noise [B, N, act_dim]` -> `actions [B, N, act_dim]` in [-1, 1].
        Deterministic serving passes `noise = 0`."""
        normalised = agent_major(self.normalise(obs))
        actions = self.sampler(normalised, agent_major(noise * self.action_mask))
        return batch_major(actions).clamp(-1.0, 1.0) * self.action_mask

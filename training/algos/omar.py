"""OMAR: Offline Multi-Agent RL with Actor Rectification (Pan, Huang, Ma, Xu; "Plan Better Amid
Conservatism: Offline Multi-Agent Reinforcement Learning with Actor Rectification", ICML 2022), agent-batched.

Built on the MA-TD3 machinery of `matd3bc` (deterministic actors, twin critics, target networks), set up as
the published code (github.com/ling-pan/OMAR, `algorithms/maddpg.py`) has it; every setting is in the
config's `omar` section and the per-dataset weights in `training/published_settings.py`:

- Critics: conservative Q-learning (CQL, Kumar et al. 2020). Per agent the TD loss plus
  cql_weight * mean_k [ logsumexp_j (Q^k(o_i, a_j) - log p(a_j)) - Q^k(o_i, a_i) ], a_j ~ U[-1, 1]^A
  (`cql_samples` per state, the importance correction log p(a_j) = -A_i log 2 of the uniform density). The
  published code sums the TD and CQL terms over the two critics where we average both; the ratio is the same.
  Its target action has no smoothing noise and the actor is updated at every step (`policy_delay=1`).
- Actor rectification: L = (1 - tau) (-Q^1(o_i, pi(o_i))) + tau ||pi(o_i) - a_hat_i||^2
  + `actor_l2` mean(pi(o_i)^2), tau = `coef`, where a_hat_i is whichever of pi(o_i) and the search's best
  sample has the higher Q^1. The search (`search_actions`) starts from N(`init_mean`, `init_std`^2), i.e.
  N(0, 2^2), not from the policy's action, and runs `iterations` rounds of `samples` samples clipped to
  [-1, 1]; `softmax` (the particle environments) moves the mean to the softmax(Q)-weighted mean of the
  samples and the std to their root-mean-square distance from it, `elite` (MaMuJoCo) refits mean and std to
  the `elites` best samples, carrying them into the next round. Q is not normalised, as in the paper.
- Both networks' gradients are clipped per agent to norm `critic_grad_clip` / `actor_grad_clip` (0.5), as
  the published code clips each agent's networks.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from training.algos.matd3bc import MATD3BC, masked_mse
from training.config import OMARConfig

__all__ = ["OMAR", "clip_grad_norm_per_agent", "conservative_penalty", "search_actions"]

QFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""`Q(obs [N, B, obs_dim], actions [N, B, A]) -> [N, B]`: one critic of every agent."""


def conservative_penalty(
    q_random: torch.Tensor, q_data: torch.Tensor, log_density: torch.Tensor
) -> torch.Tensor:
    """CQL(H): mean of logsumexp_j (Q(o, a_j) - log p(a_j)) - Q(o, a).

    `q_random [N, E, B, M]` at M sampled actions, `q_data [N, E, B]` at the dataset actions, `log_density
    [N, 1, 1, 1]` the sampling density of each agent's actions."""
    soft_max = torch.logsumexp(q_random - log_density, dim=-1)
    return (soft_max - q_data).mean()


@torch.no_grad()
def search_actions(
    q_function: QFunction,
    obs: torch.Tensor,
    policy_action: torch.Tensor,
    mask: torch.Tensor,
    settings: OMARConfig,
) -> torch.Tensor:
    """OMAR's sampling-based search for the rectification target a_hat (agent-major `[N, B, A]`).

    Returns, per row, the search's best sample or `policy_action`, whichever has the higher Q."""
    n, b, a = policy_action.shape
    s = settings.samples
    obs_rows = obs.unsqueeze(2).expand(n, b, s, obs.shape[-1]).reshape(n, b * s, -1)
    mean = torch.full_like(policy_action, settings.init_mean)
    std = torch.full_like(policy_action, settings.init_std)
    kept_actions: torch.Tensor | None = None  # elite search: last round's elites and their Q
    kept_q: torch.Tensor | None = None
    for _ in range(settings.iterations):  # a Python constant: no data-dependent control flow
        noise = torch.randn(n, b, s, a, device=policy_action.device, dtype=policy_action.dtype)
        actions = (mean.unsqueeze(2) + std.unsqueeze(2) * noise).clamp(-1.0, 1.0) * mask.unsqueeze(2)
        q = q_function(obs_rows, actions.reshape(n, b * s, a)).reshape(n, b, s)
        if settings.search == "softmax":
            weights = torch.softmax(q, dim=-1).unsqueeze(-1)  # temperature 1 on the raw Q, as published
            mean = (weights * actions).sum(dim=2)
            std = (actions - mean.unsqueeze(2)).square().mean(dim=2).sqrt()
        else:
            if kept_actions is not None and kept_q is not None:
                actions, q = torch.cat([actions, kept_actions], dim=2), torch.cat([q, kept_q], dim=2)
            kept_q, index = q.topk(settings.elites, dim=-1)
            kept_actions = actions.gather(2, index.unsqueeze(-1).expand(n, b, settings.elites, a))
            mean, std = kept_actions.mean(dim=2), kept_actions.std(dim=2)
    best_q, best = q.max(dim=-1)
    best_action = actions.gather(2, best.reshape(n, b, 1, 1).expand(n, b, 1, a)).squeeze(2)
    better = best_q > q_function(obs, policy_action)
    return torch.where(better.unsqueeze(-1), best_action, policy_action)


@torch.no_grad()
def clip_grad_norm_per_agent(module: nn.Module, max_norm: float, groups_per_agent: int) -> None:
    """`clip_grad_norm_` for each agent's networks separately, as the published code clips each agent's own
    critic or actor. Every parameter of the grouped networks stores its groups on axis 0 (agent-major: agent i
    owns groups i*groups_per_agent ...); with shared parameters axis 0 holds `groups_per_agent` or 1 entries
    and all agents are clipped together."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads or max_norm <= 0.0:
        return
    per_group = torch.stack([g.square().flatten(1).sum(dim=1) for g in grads])  # [P, G]
    units = per_group.shape[1] // groups_per_agent if per_group.shape[1] >= groups_per_agent else 1
    norms = per_group.sum(dim=0).reshape(units, -1).sum(dim=1).sqrt()  # [agents]
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0).repeat_interleave(per_group.shape[1] // units)
    for g in grads:
        g.mul_(scale.reshape(-1, *([1] * (g.dim() - 1))))


class OMAR(MATD3BC):
    """Agent-batched OMAR: MA-TD3 with CQL critics and a search-rectified actor."""

    name = "omar"

    @property
    def td3(self) -> OMARConfig:
        return self.config.omar

    def critic_regulariser(
        self, obs: torch.Tensor, q_data: torch.Tensor, mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        # CQL: push Q down on uniformly drawn actions (log-sum-exp) and up on the dataset's actions.
        settings = self.config.omar
        n, b, m = obs.shape[0], obs.shape[1], settings.cql_samples
        obs_rows = obs.unsqueeze(2).expand(n, b, m, obs.shape[-1]).reshape(n, b * m, -1)
        random_actions = (torch.rand(n, b * m, mask.shape[-1], device=obs.device) * 2.0 - 1.0) * mask
        q_random = self.critics(obs_rows, random_actions).reshape(n, -1, b, m)
        log_density = (-math.log(2.0) * mask.sum(dim=-1)).reshape(n, 1, 1, 1)  # U[-1, 1] per real entry
        penalty = conservative_penalty(q_random, q_data, log_density)
        return {"loss/cql": settings.cql_weight * penalty}

    def clip_gradients(self, name: str) -> None:
        settings = self.config.omar
        if name == "critic":
            clip_grad_norm_per_agent(self.critics, settings.critic_grad_clip, self.critics.ensemble)
        else:
            clip_grad_norm_per_agent(self.actor, settings.actor_grad_clip, 1)

    def actor_loss(
        self, obs: torch.Tensor, x: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        settings = self.config.omar
        actions = self.actor(obs) * mask

        # Actor rectification target a_hat: the search's best action, or the policy's where Q^1 prefers it.
        def q1(obs_rows: torch.Tensor, action_rows: torch.Tensor) -> torch.Tensor:
            return self.critics.member(0, obs_rows, action_rows)

        a_hat = search_actions(q1, obs, actions.detach(), mask, settings)
        # Q loss (unnormalised, as in the paper); the gradient reaches the actor through its actions only.
        loss_q = -self.critics.member(0, obs, actions, detach_weights=True).mean()
        # Rectification loss.
        loss_rectify = masked_mse(actions, a_hat, mask)
        # L2 term on the actor's output (the published code's 1e-3 * mean(pi(o)^2)).
        loss_l2 = masked_mse(actions, torch.zeros_like(actions), mask)
        loss = (1.0 - settings.coef) * loss_q + settings.coef * loss_rectify + settings.actor_l2 * loss_l2
        return loss, {"loss/q": loss_q, "loss/rectify": loss_rectify, "loss/l2": loss_l2}


ALGORITHM = OMAR

"""OMAR: Offline Multi-Agent RL with Actor Rectification (Pan, Huang, Ma, Xu; "Plan Better Amid
Conservatism: Offline Multi-Agent Reinforcement Learning with Actor Rectification", ICML 2022), agent-batched.

Built on the MA-TD3 machinery of `matd3bc` (deterministic actors, twin critics, target networks, target-policy
smoothing, delayed actor updates), with the two changes of the paper:

- Critics: conservative Q-learning (CQL, Kumar et al. 2020). Per agent the TD loss plus
  cql_weight * mean_k [ logsumexp_j (Q^k(o_i, a_j) - log p(a_j)) - Q^k(o_i, a_i) ], a_j ~ U[-1, 1]^A
  (`cql_samples` per state, the importance correction log p(a_j) = -A_i log 2 of the uniform density).
- Actor rectification: L = (1 - tau) (-Q^1(o_i, pi(o_i))) + tau ||pi(o_i) - a_hat_i||^2 with tau =
  `omar_coef`, where a_hat_i is the best action by Q^1 found by zeroth-order search: `omar_iterations` rounds
  of `omar_samples` Gaussian samples, the `omar_top_k` best (elites) refitting the mean and std. The search
  starts at the current policy action with std `omar_init_std` (the reference code starts at a constant mean
  of 0 with std 2, which this replaces by a local search around pi(o)), and a_hat is the best action seen,
  pi(o_i) included, so rectification never pulls the actor toward a worse action. Q is not normalised, as in
  the paper. The defaults (2 x 10 samples, 3 elites) are cheaper than the paper's (3 x 20, 5 elites).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from training.algos.matd3bc import MATD3BC, masked_mse
from training.algos.om2p import frozen

__all__ = ["OMAR", "conservative_penalty", "zeroth_order_search"]

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
def zeroth_order_search(
    q_function: QFunction,
    obs: torch.Tensor,
    start: torch.Tensor,
    mask: torch.Tensor,
    iterations: int,
    samples: int,
    top_k: int,
    init_std: float,
) -> torch.Tensor:
    """OMAR's sampling-based search for a high-Q action near `start` (agent-major `[N, B, A]`).

    Each round draws `samples` actions
    from N(mu, std^2) clipped to [-1, 1], keeps the `top_k` by Q and refits mu and std to them. Returns the
    best action seen, `start` included."""
    n, b, a = start.shape
    obs_rows = obs.unsqueeze(2).expand(n, b, samples, obs.shape[-1]).reshape(n, b * samples, -1)
    best_action, best_q = start, q_function(obs, start)
    mean, std = start, torch.full_like(start, init_std)
    for _ in range(iterations):  # a Python constant: no data-dependent control flow
        noise = torch.randn(n, b, samples, a, device=start.device, dtype=start.dtype)
        candidates = (mean.unsqueeze(2) + std.unsqueeze(2) * noise).clamp(-1.0, 1.0) * mask.unsqueeze(2)
        q = q_function(obs_rows, candidates.reshape(n, b * samples, a)).reshape(n, b, samples)
        top_q, top_index = q.topk(top_k, dim=-1)
        elites = candidates.gather(2, top_index.unsqueeze(-1).expand(n, b, top_k, a))
        mean, std = elites.mean(dim=2), elites.std(dim=2, correction=0)
        # The best elite is the round's best sample; keep it where it beats everything seen so far.
        better = top_q[..., 0] > best_q
        best_action = torch.where(better.unsqueeze(-1), elites[:, :, 0], best_action)
        best_q = torch.maximum(top_q[..., 0], best_q)
    return best_action


class OMAR(MATD3BC):
    """Agent-batched OMAR: MA-TD3 with CQL critics and a zeroth-order-rectified actor."""

    name = "omar"

    def critic_regulariser(
        self, obs: torch.Tensor, q_data: torch.Tensor, mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        # CQL: push Q down on uniformly drawn actions (log-sum-exp) and up on the dataset's actions.
        config = self.config
        n, b, m = obs.shape[0], obs.shape[1], config.cql_samples
        obs_rows = obs.unsqueeze(2).expand(n, b, m, obs.shape[-1]).reshape(n, b * m, -1)
        random_actions = (torch.rand(n, b * m, mask.shape[-1], device=obs.device) * 2.0 - 1.0) * mask
        q_random = self.critics(obs_rows, random_actions).reshape(n, -1, b, m)
        log_density = (-math.log(2.0) * mask.sum(dim=-1)).reshape(n, 1, 1, 1)  # U[-1, 1] per real entry
        penalty = conservative_penalty(q_random, q_data, log_density)
        return {"loss/cql": config.cql_weight * penalty}

    def actor_loss(
        self, obs: torch.Tensor, x: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        config = self.config
        actions = self.actor(obs) * mask

        # Actor rectification target a_hat: zeroth-order optimisation of Q^1 around the current action.
        def q1(obs_rows: torch.Tensor, action_rows: torch.Tensor) -> torch.Tensor:
            return self.critics(obs_rows, action_rows)[:, 0]

        a_hat = zeroth_order_search(
            q1,
            obs,
            actions.detach(),
            mask,
            config.omar_iterations,
            config.omar_samples,
            config.omar_top_k,
            config.omar_init_std,
        )
        # Q loss (unnormalised, as in the paper).
        with frozen(self.critics):
            loss_q = -self.critics(obs, actions)[:, 0].mean()
        # Rectification loss.
        loss_rectify = masked_mse(actions, a_hat, mask)
        loss = (1.0 - config.omar_coef) * loss_q + config.omar_coef * loss_rectify
        return loss, {"loss/q": loss_q, "loss/rectify": loss_rectify}


ALGORITHM = OMAR

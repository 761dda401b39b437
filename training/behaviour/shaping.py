"""Distance shaping for behaviour training in the pursuit benchmarks.

predator_prey and world pay the learners only on contact (+10 / +5 per collision step). Within the budget of
a CPU session MATD3 rarely sees a contact and learns next to nothing, while a scripted "run at the nearest
evader" policy scores 18.8 and 28.3. The learner is therefore also charged `weight` times the mean distance
from each adversary to its nearest evader after every step: MPE's own `shape` option for adversaries
(weight 0.1 there), scaled up.

Why not potential-based shaping (gamma Phi(s') - Phi(s))? It provably leaves Q(s, a) - Q(s, a') unchanged,
so the actor's gradient dQ/da, all that MATD3 follows, gets no denser; it only moves a state baseline.
A per-step distance cost does change the optimum, toward "stay close to the evader", which is the behaviour
a catch needs. Only the behaviour learner sees it: evaluation, the shipped returns and every dataset record
the environment's own reward.
"""

from __future__ import annotations

import numpy as np

SHAPED_ENVIRONMENTS = ("predator_prey", "world")


def pursuit_distance(world) -> float:
    """Mean over the adversaries (the learners) of the distance to their nearest good agent."""
    adversaries = [agent.state.p_pos for agent in world.agents if agent.adversary]
    evaders = np.stack([agent.state.p_pos for agent in world.agents if not agent.adversary])
    return float(np.mean([np.min(np.linalg.norm(evaders - p, axis=1)) for p in adversaries]))


class PursuitShaping:
    """`-weight * pursuit_distance` per environment of a `VectorEnv`, added to the training reward."""

    def __init__(self, env: str, weight: float) -> None:
        if weight > 0.0 and env not in SHAPED_ENVIRONMENTS:
            raise ValueError(
                f"pursuit shaping applies to {', '.join(SHAPED_ENVIRONMENTS)}, not {env!r}; set it to 0"
            )
        self.weight = weight

    @property
    def enabled(self) -> bool:
        return self.weight > 0.0

    def bonus(self, envs) -> np.ndarray:
        """The shaping term of the step just taken, one per environment (a cost: never positive)."""
        return np.array([-self.weight * pursuit_distance(env.world) for env in envs], np.float32)

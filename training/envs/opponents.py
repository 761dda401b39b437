"""Fixed policies for the agents that do not learn (the prey in predator-prey, the good agents in world).

OMAR uses pretrained opponents; until the project ships trained ones these scripted policies stand in.
They read the particle world's state, which is fair for a fixed opponent and keeps them independent of
observation layouts. Native MPE continuous actions are `[no-op, -x, +x, -y, +y]` in [0, 1].
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

# Beyond this radius a fleeing agent is pulled back towards the arena centre instead of running off.
ARENA_RADIUS = 1.0
# MPE's good agents out-accelerate the adversaries (4 vs 3) and cap faster (1.3 vs 1.0); under MPE's damping
# a full push settles at 0.4 * 4 = 1.6 -> 1.3, above the adversaries' 1.0, so a perfect full-effort flight
# is never caught by one predator and a learner sees no reward. OMAR's fixed opponents are pretrained, i.e.
# fallible; half effort (terminal speed 0.8 < 1.0) keeps the scripted ones sound but catchable.
OPPONENT_EFFORT = 0.5


class OpponentPolicy(Protocol):
    def reset(self, seed: int | None) -> None: ...

    def act(self, observations: dict[str, np.ndarray], world) -> dict[str, np.ndarray]: ...


def direction_to_mpe_action(direction: np.ndarray, effort: float = 1.0) -> np.ndarray:
    """A 2-d desired direction as an MPE continuous action pushing with `effort` (at most 1) of full force."""
    norm = float(np.linalg.norm(direction))
    unit = effort * direction / norm if norm > 1e-8 else np.zeros(2)
    return np.array(
        [0.0, max(-unit[0], 0.0), max(unit[0], 0.0), max(-unit[1], 0.0), max(unit[1], 0.0)],
        dtype=np.float32,
    )


def flee_direction(position: np.ndarray, threats: list[np.ndarray]) -> np.ndarray:
    """Away from threats, weighted by inverse square distance, and back towards the centre when far."""
    push = np.zeros(2)
    for threat in threats:
        offset = position - threat
        push += offset / max(float(offset @ offset), 1e-3)
    distance_from_centre = float(np.linalg.norm(position))
    if distance_from_centre > ARENA_RADIUS:
        push -= position / distance_from_centre * (distance_from_centre - ARENA_RADIUS) * 10.0
    return push


class FleeingPrey:
    """Predator-prey: every good agent flees its predators (the adversaries)."""

    def reset(self, seed: int | None) -> None:
        pass

    def act(self, observations: dict[str, np.ndarray], world) -> dict[str, np.ndarray]:
        predators = [agent.state.p_pos for agent in world.agents if agent.adversary]
        return {
            agent.name: direction_to_mpe_action(flee_direction(agent.state.p_pos, predators), OPPONENT_EFFORT)
            for agent in world.agents
            if not agent.adversary and agent.name in observations
        }


class ForagingEvaders:
    """World: the good agents go for the nearest food and flee adversaries that come close."""

    def __init__(self, danger_radius: float = 0.5) -> None:
        self.danger_radius = danger_radius

    def reset(self, seed: int | None) -> None:
        pass

    def act(self, observations: dict[str, np.ndarray], world) -> dict[str, np.ndarray]:
        adversaries = [agent.state.p_pos for agent in world.agents if agent.adversary]
        food = [entity.state.p_pos for entity in getattr(world, "food", [])]
        actions = {}
        for agent in world.agents:
            if agent.adversary or agent.name not in observations:
                continue
            position = agent.state.p_pos
            near = [p for p in adversaries if np.linalg.norm(p - position) < self.danger_radius]
            if near or not food:
                direction = flee_direction(position, near or adversaries)
            else:
                target = min(food, key=lambda f: float(np.linalg.norm(f - position)))
                direction = target - position
            actions[agent.name] = direction_to_mpe_action(direction, OPPONENT_EFFORT)
        return actions

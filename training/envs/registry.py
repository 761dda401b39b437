"""The paper's four benchmarks by name."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache, partial

from training.envs.base import MultiAgentEnv
from training.envs.opponents import FleeingPrey, ForagingEvaders, OpponentPolicy
from training.envs.spec import EnvSpec


def _cooperative_navigation(
    opponent: OpponentPolicy | None = None, force_actions: bool = False
) -> MultiAgentEnv:
    from mpe2 import simple_spread_v3

    from training.envs.mpe import MPEEnv

    # 3 agents, 3 landmarks: the benchmark (the reference code's default of 4 is a known pitfall).
    make = partial(simple_spread_v3.parallel_env, N=3)
    name = "cooperative_navigation_force2d" if force_actions else "cooperative_navigation"
    return MPEEnv(name, make, ("agent_0", "agent_1", "agent_2"), force_actions=force_actions)


def _predator_prey(opponent: OpponentPolicy | None = None) -> MultiAgentEnv:
    from mpe2 import simple_tag_v3

    from training.envs.mpe import MPEEnv

    make = partial(simple_tag_v3.parallel_env, num_good=1, num_adversaries=3, num_obstacles=2)
    learners = ("adversary_0", "adversary_1", "adversary_2")
    return MPEEnv("predator_prey", make, learners, opponent or FleeingPrey())


def _world(opponent: OpponentPolicy | None = None) -> MultiAgentEnv:
    from mpe2 import simple_world_comm_v3

    from training.envs.mpe import MPEEnv

    make = partial(simple_world_comm_v3.parallel_env, num_good=2, num_adversaries=4)
    learners = ("leadadversary_0", "adversary_0", "adversary_1", "adversary_2")
    return MPEEnv("world", make, learners, opponent or ForagingEvaders())


def _halfcheetah_2x3(opponent: OpponentPolicy | None = None) -> MultiAgentEnv:
    from training.envs.mamujoco import MaMuJoCoEnv

    if opponent is not None:
        raise ValueError("halfcheetah_2x3: every agent learns; there is no opponent to drive")
    return MaMuJoCoEnv("halfcheetah_2x3", "HalfCheetah", "2x3")


ENVIRONMENTS: dict[str, Callable[..., MultiAgentEnv]] = {
    "cooperative_navigation": _cooperative_navigation,
    "predator_prey": _predator_prey,
    "world": _world,
    "halfcheetah_2x3": _halfcheetah_2x3,
}
ENV_NAMES: tuple[str, ...] = tuple(ENVIRONMENTS)

VARIANTS: dict[str, Callable[..., MultiAgentEnv]] = {
    # cooperative_navigation with the original particle environments' 2-D force actions (the MADDPG and
    # OMAR code's action space): the same dynamics, rewards and observations. Not a benchmark of the grid:
    # for diagnostics of methods tuned on 2-D actions (docs/results.md, OMAR); datasets come from the
    # benchmark's by `om2p data force2d`.
    "cooperative_navigation_force2d": partial(_cooperative_navigation, force_actions=True),
}
TRAINABLE_ENV_NAMES: tuple[str, ...] = (*ENV_NAMES, *VARIANTS)
"""What `om2p train` and `om2p eval` accept: the benchmarks and their variants."""


def make_env(name: str, opponent: OpponentPolicy | None = None) -> MultiAgentEnv:
    """Build a benchmark (or a variant) by name; `opponent` replaces the default fixed policy of the non-learners."""
    factory = ENVIRONMENTS.get(name) or VARIANTS.get(name)
    if factory is None:
        choices = ", ".join(TRAINABLE_ENV_NAMES)
        raise ValueError(f"unknown environment {name!r}; choose one of {choices}")
    return factory(opponent)


@cache
def env_spec(name: str) -> EnvSpec:
    """The spec of a benchmark (builds the environment once per process)."""
    with make_env(name) as env:
        return env.spec

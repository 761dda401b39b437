"""The paper's four benchmarks by name."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

from training.envs.base import MultiAgentEnv
from training.envs.opponents import FleeingPrey, ForagingEvaders, OpponentPolicy
from training.envs.spec import EnvSpec


def _cooperative_navigation(opponent: OpponentPolicy | None = None) -> MultiAgentEnv:
    from functools import partial

    from mpe2 import simple_spread_v3

    from training.envs.mpe import MPEEnv

    # 3 agents, 3 landmarks: the benchmark (the reference code's default of 4 is a known pitfall).
    make = partial(simple_spread_v3.parallel_env, N=3)
    return MPEEnv("cooperative_navigation", make, ("agent_0", "agent_1", "agent_2"))


def _predator_prey(opponent: OpponentPolicy | None = None) -> MultiAgentEnv:
    from functools import partial

    from mpe2 import simple_tag_v3

    from training.envs.mpe import MPEEnv

    make = partial(simple_tag_v3.parallel_env, num_good=1, num_adversaries=3, num_obstacles=2)
    learners = ("adversary_0", "adversary_1", "adversary_2")
    return MPEEnv("predator_prey", make, learners, opponent or FleeingPrey())


def _world(opponent: OpponentPolicy | None = None) -> MultiAgentEnv:
    from functools import partial

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


def make_env(name: str, opponent: OpponentPolicy | None = None) -> MultiAgentEnv:
    """Build a benchmark by name; `opponent` replaces the default fixed policy of the non-learners."""
    try:
        factory = ENVIRONMENTS[name]
    except KeyError:
        raise ValueError(f"unknown environment {name!r}; choose one of {', '.join(ENV_NAMES)}") from None
    return factory(opponent)


@cache
def env_spec(name: str) -> EnvSpec:
    """The spec of a benchmark (builds the environment once per process)."""
    with make_env(name) as env:
        return env.spec

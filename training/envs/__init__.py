"""The environment layer: one interface for the paper's four benchmarks (numpy only, no torch)."""

from training.envs.actions import from_native, to_native, validate_actions
from training.envs.base import MultiAgentEnv, StepResult
from training.envs.registry import ENV_NAMES, TRAINABLE_ENV_NAMES, env_spec, make_env
from training.envs.spec import EnvSpec
from training.envs.vector import RolloutResult, VectorEnv, evaluate_policy, random_policy

__all__ = [
    "ENV_NAMES",
    "TRAINABLE_ENV_NAMES",
    "EnvSpec",
    "MultiAgentEnv",
    "RolloutResult",
    "StepResult",
    "VectorEnv",
    "env_spec",
    "evaluate_policy",
    "from_native",
    "make_env",
    "random_policy",
    "to_native",
    "validate_actions",
]

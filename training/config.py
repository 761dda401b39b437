"""The typed training configuration: every field has a type, a default and a one-line description.

Values come from (later wins) the defaults here, a YAML file (`--config`), and `--set key=value` overrides.
The defaults are sized for a small CPU budget: 2 x 256 GELU MLPs, lr 1e-3, 8000 steps (about 20 minutes on one
core here); the paper's GPU scale is `actor_hidden=[512,512,512,512]`, `critic_hidden=[512,512,512,512]`,
`actor_lr=3e-4`, `critic_lr=3e-4`, `steps=1000000`.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DU_DT_ESTIMATORS = ("fd", "jvp", "zero")
TIME_SAMPLERS = ("uniform", "logit_normal", "beta", "endpoint")
Q_AGGREGATES = ("mean", "min")


def _doc(default: Any, doc: str) -> Any:
    """A dataclass field (immutable default) whose description travels with it (`--help-config`)."""
    return field(default=default, metadata={"doc": doc})


@dataclass
class TrainConfig:
    """Hyperparameters of one training run (OM2P and the baselines that share the trainer)."""

    # What to train on.
    algo: str = _doc("om2p", "training/algos module: om2p, bc, matd3bc, omar, flow or diffusion")
    env: str = _doc("cooperative_navigation", "benchmark environment name (see `om2p envs`)")
    dataset: str = _doc("", "offline dataset .npz (default data/<env>/expert.npz)")
    steps: int = _doc(8000, "gradient steps (one step updates critics and actors of all agents)")
    seed: int = _doc(0, "seed of parameter initialisation, batch sampling and noise")
    device: str = _doc("cpu", "torch device: cpu or cuda")
    num_threads: int = _doc(1, "torch CPU threads (0: torch's default; 1 suits a shared machine)")
    cuda_graphs: bool = _doc(True, "on cuda, replay the whole training step as one CUDA graph (om2p, bc)")

    # Networks.
    actor_hidden: list[int] = field(
        default_factory=lambda: [256, 256],
        metadata={"doc": "hidden widths of each agent's mean-flow actor MLP"},
    )
    critic_hidden: list[int] = field(
        default_factory=lambda: [256, 256],
        metadata={"doc": "hidden widths of each agent's Q MLPs (LayerNorm)"},
    )
    activation: str = _doc("gelu", "hidden activation: gelu, relu, silu or tanh")
    share_parameters: bool = _doc(False, "one actor/critic for all agents with a one-hot agent-id input")
    centralised_critic: bool = _doc(False, "critics see the joint observation and joint action")
    normalise_observations: bool = _doc(True, "standardise observations with the dataset's mean and std")

    # Optimisation.
    batch_size: int = _doc(256, "transitions per gradient step (each holds all agents)")
    actor_lr: float = _doc(1e-3, "Adam learning rate of the actors (the paper: 3e-4 at 4x512)")
    critic_lr: float = _doc(1e-3, "Adam learning rate of the critics (the paper: 3e-4 at 4x512)")
    gamma: float = _doc(0.99, "discount factor of the TD target")
    tau: float = _doc(0.005, "Polyak rate of the target critics")
    q_aggregate: str = _doc("mean", "TD target over the two target Qs: mean or min (matd3bc, omar: min)")
    alpha: float = _doc(0.03, "normalised Q-loss weight: L_MF + alpha L_Q; flow, diffusion: L_BC + alpha L_Q")
    bf16_autocast: bool = _doc(False, "bfloat16 autocast for the network passes that carry gradients")

    # Mean-flow objective.
    du_dt: str = _doc("fd", "estimator of d/dt u: fd (finite difference), jvp (exact) or zero (ablation)")
    fd_delta: float = _doc(5e-3, "finite-difference step along the path; must be representable in float32")
    time_sampler: str = _doc("endpoint", "(r, t) distribution: uniform, logit_normal, beta or endpoint")
    logit_normal_mean: float = _doc(-0.4, "mean of the logit-normal timestep distribution (MeanFlow)")
    logit_normal_std: float = _doc(1.0, "std of the logit-normal timestep distribution (MeanFlow)")
    beta_a: float = _doc(1.0, "first shape parameter of the Beta timestep distribution")
    beta_b: float = _doc(1.0, "second shape parameter of the Beta timestep distribution")
    endpoint_scale: float = _doc(0.2, "endpoint sampler: r = clip(s Exp(1)), t = clip(1 - s Exp(1))")
    equal_time_ratio: float = _doc(0.25, "fraction of samples with r = t (flow matching on the diagonal)")
    adaptive_loss_power: float = _doc(0.0, "MeanFlow adaptive weight 1/(|err|^2 + c)^p; 0 = plain MSE")
    sampling_steps: int = _doc(1, "network evaluations per action at inference (1 = one-step OM2P)")

    # Baselines (training/algos/{bc,matd3bc,omar,flow,diffusion}.py); bc uses the mean-flow fields above.
    flow_steps: int = _doc(10, "flow: Euler steps K of the flow policy (K network evaluations per action)")
    diffusion_steps: int = _doc(10, "diffusion: DDPM/DDIM steps K (K network evaluations per action)")
    td3bc_alpha: float = _doc(2.5, "matd3bc: TD3+BC's alpha, actor loss -alpha Q/mean|Q| + MSE(pi(o), a)")
    policy_delay: int = _doc(2, "matd3bc, omar: critic updates per actor and target-network update (TD3)")
    target_noise: float = _doc(0.2, "matd3bc, omar: std of the target-policy smoothing noise (TD3)")
    target_noise_clip: float = _doc(0.5, "matd3bc, omar: clip of the target-policy smoothing noise (TD3)")
    cql_weight: float = _doc(1.0, "omar: weight of the CQL regulariser in the critic loss")
    cql_samples: int = _doc(10, "omar: uniform random actions per state in the CQL log-sum-exp")
    omar_coef: float = _doc(0.7, "omar: tau of the actor loss (1 - tau)(-Q) + tau ||pi(o) - a_hat||^2")
    omar_iterations: int = _doc(2, "omar: iterations of the zeroth-order search for a_hat")
    omar_samples: int = _doc(10, "omar: Gaussian samples per iteration of the search")
    omar_top_k: int = _doc(3, "omar: elites (best by Q) that refit the search's mean and std")
    omar_init_std: float = _doc(0.5, "omar: initial std of the search, centred on the policy's action")

    # Evaluation, logging, checkpoints.
    eval_every: int = _doc(1000, "steps between evaluations and checkpoints (0: only at the end)")
    eval_episodes: int = _doc(50, "episodes per evaluation, seeds eval_seed .. eval_seed + episodes - 1")
    eval_seed: int = _doc(100000, "first evaluation seed (fixed, disjoint from dataset seeds)")
    eval_envs: int = _doc(25, "environments stepped in lockstep during evaluation")
    log_every: int = _doc(250, "steps between CSV/TensorBoard loss records")
    keep_checkpoints: int = _doc(3, "newest checkpoints kept under RUN_DIR/checkpoints (0: keep all)")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        choices = {
            "du_dt": DU_DT_ESTIMATORS,
            "time_sampler": TIME_SAMPLERS,
            "q_aggregate": Q_AGGREGATES,
            "device": None,
        }
        for name, allowed in choices.items():
            value = getattr(self, name)
            if allowed is not None and value not in allowed:
                raise ValueError(f"config field {name!r}: {value!r} is not one of {', '.join(allowed)}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"config field 'device': {self.device!r} must be cpu or cuda[:N]")
        positive = (
            "steps",
            "batch_size",
            "sampling_steps",
            "eval_episodes",
            "eval_envs",
            "log_every",
            "flow_steps",
            "diffusion_steps",
            "policy_delay",
            "cql_samples",
            "omar_iterations",
            "omar_samples",
            "omar_top_k",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"config field {name!r} must be at least 1, got {getattr(self, name)}")
        if not 0.0 < self.fd_delta < 0.5:
            raise ValueError(f"config field 'fd_delta': {self.fd_delta} must lie in (0, 0.5)")
        if self.fd_delta < 1e-5:
            # Pitfall 2 of the reference code: t - 1e-12 == t in float32, the difference is always zero.
            raise ValueError(
                f"config field 'fd_delta': {self.fd_delta} is below float32 resolution of t; use 1e-3..1e-2"
            )
        if not 0.0 <= self.equal_time_ratio <= 1.0:
            raise ValueError(f"config field 'equal_time_ratio': {self.equal_time_ratio} must lie in [0, 1]")
        if not 0.0 <= self.tau <= 1.0 or not 0.0 <= self.gamma <= 1.0:
            raise ValueError("config fields 'tau' and 'gamma' must lie in [0, 1]")
        for name in ("td3bc_alpha", "target_noise", "target_noise_clip", "cql_weight"):
            if getattr(self, name) < 0.0:
                raise ValueError(f"config field {name!r} must not be negative, got {getattr(self, name)}")
        if not 0.0 <= self.omar_coef <= 1.0:
            raise ValueError(f"config field 'omar_coef': {self.omar_coef} must lie in [0, 1]")
        if self.omar_top_k > self.omar_samples:
            raise ValueError(
                f"config field 'omar_top_k': {self.omar_top_k} exceeds omar_samples ({self.omar_samples})"
            )
        if not self.omar_init_std > 0.0:
            raise ValueError(f"config field 'omar_init_std': {self.omar_init_std} must be positive")
        if not self.actor_hidden or not self.critic_hidden:
            raise ValueError("config fields 'actor_hidden' and 'critic_hidden' need at least one layer")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown config field(s) {', '.join(unknown)}")
        hints = typing.get_type_hints(cls)
        values = {name: _coerce(name, hints[name], value, source) for name, value in data.items()}
        return cls(**values)

    def replace(self, **changes: Any) -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **changes})


def _coerce(name: str, hint: Any, value: Any, source: str) -> Any:
    """Check/convert one YAML or JSON value to the field's type (ints are accepted for floats)."""
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        (item,) = set(typing.get_args(hint))
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{source}: field {name!r} must be a list of {item.__name__}, got {value!r}")
        return [_coerce(name, item, v, source) for v in value]
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"unsupported config type for {name}")
    accepted = {bool: (bool,), float: (int, float), int: (int,), str: (str,)}[hint]
    # bool is an int in Python; a YAML `true` must not become 1 (nor 1 become true).
    if isinstance(value, accepted) and (hint is bool) == isinstance(value, bool):
        return float(value) if hint is float else value
    raise ValueError(f"{source}: field {name!r} must be {hint.__name__}, got {value!r}")


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` with a YAML value (`alpha=0.1`, `actor_hidden=[512,512]`, `du_dt=jvp`)."""
    import yaml

    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--set {text!r}: expected key=value")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise ValueError(f"--set {text!r}: value is not valid YAML: {error}") from None
    return key.strip(), raw if value is None else value


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, **explicit: Any
) -> TrainConfig:
    """Defaults, then the YAML file, then explicit keyword values (command-line flags), then `--set`."""
    import yaml

    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: config file not found") from None
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: not valid YAML: {error}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{path}: a config file must be a mapping of field: value")
        data.update(loaded or {})
    data.update({k: v for k, v in explicit.items() if v is not None})
    for text in overrides or []:
        key, value = parse_override(text)
        data[key] = value
    source = str(path) if path is not None else "config"
    return TrainConfig.from_dict(data, source=source)


def describe_fields() -> str:
    """One line per field: name, type, default and description (for `om2p train --help-config`)."""
    lines = []
    for f in dataclasses.fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lines.append(f"{f.name:<24} {json.dumps(default):<22} {f.metadata['doc']}")
    return "\n".join(lines)

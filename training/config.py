"""The typed training configuration: every field has a type, a default and a one-line description.

Values come from (later wins) the defaults here, a YAML file (`--config`), and `--set key=value` overrides.
The defaults are sized for a small CPU budget: 2 x 256 GELU MLPs, lr 1e-3, 8000 steps (about 20 minutes on one
core here); the paper's GPU scale is `actor_hidden=[512,512,512,512]`, `critic_hidden=[512,512,512,512]`,
`actor_lr=3e-4`, `critic_lr=3e-4`, `steps=1000000`.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class DuDtEstimator(enum.StrEnum):
    """How the mean-flow loss estimates d/dt u (`du_dt`); each maps to one function in training/algos/om2p.py."""

    FD = "fd"  # derivative-free: a backward difference along the path (OM2P's choice)
    JVP = "jvp"  # exact: one forward-mode pass with tangent (v, 1)
    ZERO = "zero"  # d/dt u := 0, flow matching with two time inputs (an ablation)


class TimeSampler(enum.StrEnum):
    """The (r, t) distribution (`time_sampler`); each maps to one function in training/algos/timesteps.py."""

    UNIFORM = "uniform"
    LOGIT_NORMAL = "logit_normal"
    BETA = "beta"
    ENDPOINT = "endpoint"


DU_DT_ESTIMATORS = tuple(DuDtEstimator)
TIME_SAMPLERS = tuple(TimeSampler)


class MeanFlowOutput(enum.StrEnum):
    """What the mean-flow actor's MLP outputs (`mean_flow_output`); see training/policy.py's MeanFlowActor."""

    VELOCITY = "velocity"  # u = f (the paper's)
    RESIDUAL = "residual"  # u = z - f: the one-step action e - u(e, 0, 1) is f(e, 0, 1) itself


MEAN_FLOW_OUTPUTS = tuple(MeanFlowOutput)
Q_AGGREGATES = ("mean", "min")


def _doc(default: Any, doc: str) -> Any:
    """A dataclass field (immutable default) whose description travels with it (`--help-config`)."""
    return field(default=default, metadata={"doc": doc})


def _check(ok: bool, name: str, problem: str) -> None:
    if not ok:
        raise ValueError(f"config field {name!r}: {problem}")


@dataclass
class FlowConfig:
    """`flow` (training/algos/flow.py): flow matching plus the normalised Q loss through the Euler chain."""

    steps: int = _doc(10, "Euler steps K of the flow policy (K network evaluations per action)")

    def validate(self) -> None:
        _check(self.steps >= 1, "flow.steps", f"must be at least 1, got {self.steps}")


@dataclass
class DiffusionConfig:
    """`diffusion` (training/algos/diffusion.py): Diffusion-QL with a DDIM sampler."""

    steps: int = _doc(10, "DDPM/DDIM steps K (K network evaluations per action)")

    def validate(self) -> None:
        _check(self.steps >= 1, "diffusion.steps", f"must be at least 1, got {self.steps}")


@dataclass
class TD3Config:
    """The MA-TD3 machinery that `matd3bc` and `omar` share (one copy per section: each has its defaults)."""

    policy_delay: int = _doc(2, "critic updates per actor and target-network update (TD3)")
    target_noise: float = _doc(0.2, "std of the target-policy smoothing noise (TD3; 0 turns it off)")
    target_noise_clip: float = _doc(0.5, "clip of the target-policy smoothing noise (TD3)")

    def validate(self) -> None:
        name = SECTION_NAMES[type(self)]
        _check(self.policy_delay >= 1, f"{name}.policy_delay", f"must be at least 1, got {self.policy_delay}")
        for key in ("target_noise", "target_noise_clip"):
            value = getattr(self, key)
            _check(value >= 0.0, f"{name}.{key}", f"must not be negative, got {value}")


@dataclass
class MATD3BCConfig(TD3Config):
    """`matd3bc` (training/algos/matd3bc.py): TD3+BC per agent."""

    alpha: float = _doc(2.5, "TD3+BC's alpha: actor loss -alpha Q/mean|Q| + MSE(pi(o), a)")

    def validate(self) -> None:
        super().validate()
        _check(self.alpha >= 0.0, "matd3bc.alpha", f"must not be negative, got {self.alpha}")


OMAR_SEARCHES = ("softmax", "elite")


@dataclass
class OMARConfig(TD3Config):
    """`omar` (training/algos/omar.py). Defaults: the published code's (github.com/ling-pan/OMAR,
    `main.py` and `algorithms/maddpg.py`) for the particle environments; its per-dataset `coef` and
    `cql_weight` are in `training/published_settings.py`."""

    # The published MATD3 has neither target-policy smoothing nor delayed actor updates.
    policy_delay: int = _doc(1, "critic updates per actor and target-network update (published: 1)")
    target_noise: float = _doc(0.0, "std of the target-policy smoothing noise (published: none)")
    cql_weight: float = _doc(1.0, "weight of the CQL regulariser in the critic loss (per dataset: 0.5..5)")
    cql_samples: int = _doc(10, "uniform random actions per state in the CQL log-sum-exp")
    coef: float = _doc(1.0, "tau of the actor loss (1 - tau)(-Q) + tau ||pi(o) - a_hat||^2 (omar_coe)")
    search: str = _doc(
        "softmax", "action search: softmax (MPE: softmax-Q-weighted mean) or elite (MaMuJoCo: CEM elites)"
    )
    iterations: int = _doc(3, "iterations of the action search for a_hat")
    samples: int = _doc(10, "Gaussian samples per iteration of the search")
    elites: int = _doc(5, "elite search only: the best samples that refit its mean and std")
    init_mean: float = _doc(0.0, "mean of the search's first Gaussian (every action entry)")
    init_std: float = _doc(2.0, "std of the search's first Gaussian (samples are clipped to [-1, 1])")
    critic_grad_clip: float = _doc(0.5, "per-agent gradient-norm clip of the critics (0: none)")
    actor_grad_clip: float = _doc(0.5, "per-agent gradient-norm clip of the actors (0: none)")
    actor_l2: float = _doc(1e-3, "weight of the L2 term mean(pi(o)^2) on the actor's output")

    def validate(self) -> None:
        super().validate()
        for key in ("cql_weight", "critic_grad_clip", "actor_grad_clip", "actor_l2"):
            value = getattr(self, key)
            _check(value >= 0.0, f"omar.{key}", f"must not be negative, got {value}")
        for key in ("cql_samples", "iterations", "samples", "elites"):
            value = getattr(self, key)
            _check(value >= 1, f"omar.{key}", f"must be at least 1, got {value}")
        _check(0.0 <= self.coef <= 1.0, "omar.coef", f"{self.coef} must lie in [0, 1]")
        _check(
            self.search in OMAR_SEARCHES,
            "omar.search",
            f"{self.search!r} is not one of {', '.join(OMAR_SEARCHES)}",
        )
        if self.search == "elite":
            _check(
                self.elites <= self.samples,
                "omar.elites",
                f"{self.elites} exceeds omar.samples ({self.samples})",
            )
            # The elites' standard deviation is the next round's: one elite has none.
            _check(self.elites >= 2, "omar.elites", f"the elite search needs at least 2, got {self.elites}")
        _check(self.init_std > 0.0, "omar.init_std", f"{self.init_std} must be positive")


SECTION_NAMES: dict[type, str] = {
    FlowConfig: "flow",
    DiffusionConfig: "diffusion",
    MATD3BCConfig: "matd3bc",
    OMARConfig: "omar",
}
"""Each per-algorithm section's field name in `TrainConfig`."""

MOVED_FIELDS = {
    "flow_steps": "flow.steps",
    "diffusion_steps": "diffusion.steps",
    "td3bc_alpha": "matd3bc.alpha",
    "policy_delay": "matd3bc.policy_delay",
    "target_noise": "matd3bc.target_noise",
    "target_noise_clip": "matd3bc.target_noise_clip",
    "cql_weight": "omar.cql_weight",
    "cql_samples": "omar.cql_samples",
    "omar_coef": "omar.coef",
    "omar_iterations": "omar.iterations",
    "omar_samples": "omar.samples",
    "omar_top_k": "omar.elites",
    "omar_init_std": "omar.init_std",
}
"""Flat baseline fields of config files before the per-algorithm sections, and where each lives now.
(`policy_delay` and the target noise were shared by matd3bc and omar; omar has its own copies now.)"""


@dataclass
class TrainConfig:
    """Hyperparameters of one training run (OM2P and the baselines that share the trainer)."""

    # What to train on.
    algo: str = _doc("om2p", "training/algos module: om2p, bc, bc_mse, matd3bc, omar, flow or diffusion")
    env: str = _doc("cooperative_navigation", "benchmark environment name (see `om2p envs`)")
    dataset: str = _doc("", "offline dataset .npz (default data/<env>/expert.npz)")
    steps: int = _doc(8000, "gradient steps (one step updates critics and actors of all agents)")
    seed: int = _doc(0, "seed of parameter initialisation, batch sampling and noise")
    device: str = _doc("cpu", "torch device: cpu or cuda")
    num_threads: int = _doc(1, "torch CPU threads (0: torch's default; 1 suits a shared machine)")
    cuda_graphs: bool = _doc(
        True, "on cuda, replay the whole training step as one CUDA graph (om2p, bc, bc_mse)"
    )

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
    reward_scale: float = _doc(
        1.0,
        "the dataset's rewards times this in the TD target (Q's scale; raw-Q softmaxes such as OMAR's see it)",
    )
    q_aggregate: str = _doc("mean", "TD target over the two target Qs: mean or min (matd3bc, omar: min)")
    alpha: float = _doc(
        10.0,
        "normalised Q-loss weight: L_MF + alpha L_Q (tuned: docs/results.md); flow, diffusion: L_BC + alpha L_Q",
    )
    bf16_autocast: bool = _doc(
        True,
        "om2p: bfloat16 autocast for the passes that carry gradients where the device runs bf16 natively "
        "(CUDA; CPUs with AVX512-BF16 or AMX), fp32 elsewhere; the fd difference stays fp32",
    )
    compile_update: bool = _doc(
        False,
        "om2p, matd3bc, omar on cpu: torch.compile the critic and actor losses (inductor; warm-up of about a minute)",
    )

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
    mean_flow_output: str = _doc(
        "velocity", "the actor MLP's output f: velocity (u = f) or residual (u = z - f, action = f(e, 0, 1))"
    )

    # Baselines: one section per algorithm (`--set omar.cql_weight=5`, YAML `omar: {cql_weight: 5}`); bc uses
    # the mean-flow fields above.
    flow: FlowConfig = field(default_factory=lambda: FlowConfig(), metadata={"doc": "flow baseline"})
    diffusion: DiffusionConfig = field(
        default_factory=lambda: DiffusionConfig(), metadata={"doc": "diffusion baseline"}
    )
    matd3bc: MATD3BCConfig = field(default_factory=lambda: MATD3BCConfig(), metadata={"doc": "MA-TD3+BC"})
    omar: OMARConfig = field(default_factory=lambda: OMARConfig(), metadata={"doc": "OMAR"})

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
            "mean_flow_output": MEAN_FLOW_OUTPUTS,
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
        if not self.reward_scale > 0.0:
            raise ValueError(f"config field 'reward_scale': {self.reward_scale} must be positive")
        if not self.actor_hidden or not self.critic_hidden:
            raise ValueError("config fields 'actor_hidden' and 'critic_hidden' need at least one layer")
        for section in SECTION_NAMES.values():
            getattr(self, section).validate()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types; each per-algorithm section is a nested mapping."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build from a mapping of field: value; `section.key` names and partial sections are accepted, the
        flat names of the fields that moved into sections are refused with the new name."""
        moved = sorted(name for name in data if name in MOVED_FIELDS)
        if moved:
            hints = ", ".join(f"{name!r} is now {MOVED_FIELDS[name]!r}" for name in moved)
            raise ValueError(f"{source}: config field(s) moved into per-algorithm sections: {hints}")
        return _build(cls, nest(data, source), source, "")

    @classmethod
    def from_checkpoint_dict(cls, data: dict[str, Any], source: str = "checkpoint") -> TrainConfig:
        """`from_dict` for a config recorded by a run (checkpoint.json): flat names written before the
        per-algorithm sections existed are moved into them first, so old checkpoints keep loading."""
        return cls.from_dict(upgrade_flat_fields(data), source)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with `changes`: field=value, a section as a (partial) mapping, or `**{"omar.coef": 0.5}`."""
        return TrainConfig.from_dict(deep_merge(self.to_dict(), nest(changes, "replace")))


def _build(cls: type, data: dict[str, Any], source: str, prefix: str) -> Any:
    """`cls(**data)` after checking names and types; `prefix` is the section's `name.` in messages."""
    if not isinstance(data, dict):
        raise ValueError(
            f"{source}: field {prefix.rstrip('.')!r} must be a mapping of field: value, got {data!r}"
        )
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{source}: unknown config field(s) {', '.join(prefix + name for name in unknown)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        if dataclasses.is_dataclass(hints[name]):
            values[name] = (
                value
                if isinstance(value, hints[name])
                else _build(hints[name], value, source, f"{prefix}{name}.")
            )
        else:
            values[name] = _coerce(prefix + name, hints[name], value, source)
    return cls(**values)


def nest(data: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """`{"omar.coef": 1}` -> `{"omar": {"coef": 1}}`, merged with any `omar:` mapping already there."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        section, dot, name = key.partition(".")
        if not dot:
            out[key] = deep_merge(out[key], value) if isinstance(out.get(key), dict) else value
            continue
        if section not in SECTION_NAMES.values():
            raise ValueError(f"{source}: unknown config section {section!r} in {key!r}")
        existing = out.setdefault(section, {})
        if not isinstance(existing, dict):
            raise ValueError(f"{source}: field {section!r} must be a mapping of field: value")
        existing[name] = value
    return out


def deep_merge(base: dict[str, Any], changes: Any) -> Any:
    """`changes` over `base`, section by section (a partial section keeps the other fields of `base`)."""
    if not isinstance(changes, dict):
        return changes
    merged = dict(base)
    for key, value in changes.items():
        merged[key] = deep_merge(merged[key], value) if isinstance(merged.get(key), dict) else value
    return merged


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The inverse of `nest`: `{"omar": {"coef": 1}}` -> `{"omar.coef": 1}`."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


_SHARED_TD3 = ("policy_delay", "target_noise", "target_noise_clip")


def upgrade_flat_fields(data: dict[str, Any]) -> dict[str, Any]:
    """A recorded config with the pre-section flat baseline fields moved into their sections. The TD3 fields
    were shared by matd3bc and omar, so both sections get the recorded value."""
    data = dict(data)
    for old in [name for name in data if name in MOVED_FIELDS]:
        value = data.pop(old)
        targets = [f"matd3bc.{old}", f"omar.{old}"] if old in _SHARED_TD3 else [MOVED_FIELDS[old]]
        for target in targets:
            section, _, name = target.partition(".")
            data.setdefault(section, {})
            if isinstance(data[section], dict):
                data[section] = {**data[section], name: value}
    return data


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
    source = str(path) if path is not None else "config"
    data = nest(data, source)
    data.update({k: v for k, v in explicit.items() if v is not None})
    for text in overrides or []:
        key, value = parse_override(text)
        if key in MOVED_FIELDS:
            raise ValueError(f"--set {text!r}: config field {key!r} is now {MOVED_FIELDS[key]!r}")
        data = deep_merge(data, nest({key: value}, f"--set {text!r}"))
    return TrainConfig.from_dict(data, source=source)


def field_defaults() -> list[tuple[str, Any, str]]:
    """`(name, default, description)` of every field, sections' fields as `section.name`, in class order."""

    def rows(cls: type, prefix: str) -> list[tuple[str, Any, str]]:
        out = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if dataclasses.is_dataclass(default):
                out.extend(rows(type(default), f"{prefix}{f.name}."))
            else:
                out.append((prefix + f.name, getattr(default, "value", default), f.metadata["doc"]))
        return out

    return rows(TrainConfig, "")


def describe_fields() -> str:
    """One line per field: name, default and description (for `om2p train --help-config`)."""
    return "\n".join(f"{name:<24} {json.dumps(default):<22} {doc}" for name, default, doc in field_defaults())


def defaults_table() -> str:
    """The markdown table of every field's default that docs/training.md holds (a test compares the two;
    `python -m training.config` prints it)."""
    lines = ["| field | default | meaning |", "| --- | --- | --- |"]
    for name, default, doc in field_defaults():
        escaped = doc.replace("|", "\\|")
        lines.append(f"| `{name}` | `{json.dumps(default)}` | {escaped} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(defaults_table())

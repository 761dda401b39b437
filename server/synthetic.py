"""Synthetic policies written exactly as `om2p export` writes a model: a real ONNX graph and a real manifest,
for the server, clients, export and deployment tests and the benchmarks. Nothing here imports torch; onnx is
imported only when a graph is written.

    version_dir = write_synthetic_repository(tmp_path / "models")           # random 2x256 actor, 3 agents

`write_synthetic_repository` writes `<root>/<name>/<version>/{model.onnx, manifest.json}` exactly as
`om2p export` does: graph inputs `obs [B, N, obs_dim]` and `noise [B, N, act_dim]`, output
`actions = clip(noise - u(noise, r=0, t=1 | obs), -1, 1)` with masked entries zero, where `u` is one
random-weight MLP per agent (GELU) fed `[normalised obs, noise, t, t - r]`, as in `training/policy.py`.
`reference_policy(version_dir)` evaluates the same function in numpy, to check any backend against.
"""

from __future__ import annotations

import datetime
import hashlib
import itertools
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from export.manifest import MANIFEST_FILENAME, load_manifest, resolve_version_dir, sha256_file

OPSET = 20
_WEIGHTS_FILE = "synthetic_weights.npz"  # only for reference_policy; not listed in the manifest


def synthetic_weights(
    n_agents: int, obs_dim: int, act_dim: int, hidden: Sequence[int], seed: int
) -> dict[str, np.ndarray]:
    """Per-agent MLP weights `w{i}` `[N, in, out]`, `b{i}` `[N, 1, out]` and obs normalisation stats,
    initialised like `nn.Linear` (uniform in +-1/sqrt(in))."""
    rng = np.random.default_rng(seed)
    widths = [obs_dim + act_dim + 2, *hidden, act_dim]
    weights: dict[str, np.ndarray] = {
        "obs_mean": rng.normal(0.0, 0.5, (n_agents, obs_dim)).astype(np.float32),
        "obs_std": rng.uniform(0.5, 2.0, (n_agents, obs_dim)).astype(np.float32),
    }
    for layer, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        bound = 1.0 / math.sqrt(fan_in)
        weights[f"w{layer}"] = rng.uniform(-bound, bound, (n_agents, fan_in, fan_out)).astype(np.float32)
        weights[f"b{layer}"] = rng.uniform(-bound, bound, (n_agents, 1, fan_out)).astype(np.float32)
    return weights


def _gelu(x: np.ndarray) -> np.ndarray:
    from math import erf  # numpy has no erf; vectorise the scalar one (reference only, not a hot path)

    return 0.5 * x * (1.0 + np.vectorize(erf, otypes=[np.float64])(x / math.sqrt(2.0)))


def _numpy_actions(
    weights: dict[str, np.ndarray], mask: np.ndarray, obs: np.ndarray, noise: np.ndarray
) -> np.ndarray:
    n_layers = sum(1 for key in weights if key.startswith("w"))
    normalised = (obs - weights["obs_mean"]) / weights["obs_std"]
    ones = np.ones((*noise.shape[:-1], 1), dtype=np.float64)
    # [normalised obs, z, t, t - r] with t = 1, r = 0, agent-major for the per-agent matmuls.
    x = np.concatenate([normalised, noise, ones, ones], axis=-1).astype(np.float64).transpose(1, 0, 2)
    for layer in range(n_layers):
        x = x @ weights[f"w{layer}"].astype(np.float64) + weights[f"b{layer}"]
        if layer < n_layers - 1:
            x = _gelu(x)
    u = x.transpose(1, 0, 2)
    return (np.clip(noise - u, -1.0, 1.0) * mask).astype(np.float32)


def _onnx_graph(weights: dict[str, np.ndarray], mask: np.ndarray, obs_dim: int, act_dim: int, n_agents: int):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, initializers = [], []

    def constant(name: str, value: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    n_layers = sum(1 for key in weights if key.startswith("w"))
    w0 = weights["w0"]
    # t = 1 and t - r = 1 are constants of the one-step sampler: fold their columns of the first layer into
    # its bias, as ONNX constant folding does for the exported graph.
    b0 = weights["b0"] + w0[:, obs_dim + act_dim : obs_dim + act_dim + 1] + w0[:, obs_dim + act_dim + 1 :]
    constant("obs_mean", weights["obs_mean"])
    constant("obs_std", weights["obs_std"])
    constant("action_mask", mask.astype(np.float32))
    constant("low", np.array(-1.0, np.float32))
    constant("high", np.array(1.0, np.float32))
    nodes += [
        helper.make_node("Sub", ["obs", "obs_mean"], ["obs_centred"]),
        helper.make_node("Div", ["obs_centred", "obs_std"], ["obs_normalised"]),
        helper.make_node("Concat", ["obs_normalised", "noise"], ["features"], axis=-1),
        helper.make_node("Transpose", ["features"], ["x0"], perm=[1, 0, 2]),  # [N, B, F]
    ]
    x = "x0"
    for layer in range(n_layers):
        w = weights[f"w{layer}"][:, : obs_dim + act_dim] if layer == 0 else weights[f"w{layer}"]
        b = b0 if layer == 0 else weights[f"b{layer}"]
        constant(f"w{layer}", w)
        constant(f"b{layer}", b)
        nodes += [
            helper.make_node("MatMul", [x, f"w{layer}"], [f"mm{layer}"]),
            helper.make_node("Add", [f"mm{layer}", f"b{layer}"], [f"h{layer}"]),
        ]
        x = f"h{layer}"
        if layer < n_layers - 1:  # exact GELU, the opset-20 op `make export` writes too
            nodes.append(helper.make_node("Gelu", [x], [f"a{layer}"]))
            x = f"a{layer}"
    nodes += [
        helper.make_node("Transpose", [x], ["u"], perm=[1, 0, 2]),  # back to [B, N, act_dim]
        helper.make_node("Sub", ["noise", "u"], ["z0"]),
        helper.make_node("Clip", ["z0", "low", "high"], ["clipped"]),
        helper.make_node("Mul", ["clipped", "action_mask"], ["actions"]),
    ]
    graph = helper.make_graph(
        nodes,
        "om2p_synthetic_policy",
        inputs=[
            helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", n_agents, obs_dim]),
            helper.make_tensor_value_info("noise", TensorProto.FLOAT, ["batch", n_agents, act_dim]),
        ],
        outputs=[helper.make_tensor_value_info("actions", TensorProto.FLOAT, ["batch", n_agents, act_dim])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="om2p.server.synthetic"
    )
    model.ir_version = 9  # opset 20 (onnx 1.15): readable by every onnxruntime >= 1.17
    onnx.checker.check_model(model)
    return model


def write_synthetic_repository(
    root: Path | str,
    name: str = "synthetic",
    n_agents: int = 3,
    obs_dim: int = 18,
    act_dim: int = 5,
    hidden: Sequence[int] = (256, 256),
    version: int = 1,
    seed: int = 0,
    action_mask: np.ndarray | None = None,
) -> Path:
    """Write a random-weight policy as `<root>/<name>/<version>/` with a valid manifest; return that dir.

    `action_mask` (`[n_agents, act_dim]` bool, default all True) zeroes padded action entries. Call again
    with `version=2` (and other weights via `seed`) to publish a new version next to the first.
    """
    mask = np.ones((n_agents, act_dim), bool) if action_mask is None else np.asarray(action_mask, bool)
    if mask.shape != (n_agents, act_dim):
        raise ValueError(f"action_mask must be [{n_agents}, {act_dim}], got {list(mask.shape)}")
    version_dir = Path(root) / name / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    weights = synthetic_weights(n_agents, obs_dim, act_dim, hidden, seed)
    model = _onnx_graph(weights, mask, obs_dim, act_dim, n_agents)
    onnx_path = version_dir / "model.onnx"
    onnx_path.write_bytes(model.SerializeToString())
    np.savez(version_dir / _WEIGHTS_FILE, action_mask=mask, **weights)
    weights_sha = hashlib.sha256((version_dir / _WEIGHTS_FILE).read_bytes()).hexdigest()
    manifest = {
        "schema_version": 1,
        "name": name,
        "version": version,
        "algo": "om2p",
        "env": "synthetic",
        "agents": [f"agent_{index}" for index in range(n_agents)],
        "obs_dim": obs_dim,
        "act_dim": act_dim,
        "action_mask": mask.tolist(),
        "network_evaluations_per_action": 1,
        "inputs": [
            {"name": "obs", "shape": [-1, n_agents, obs_dim]},
            {"name": "noise", "shape": [-1, n_agents, act_dim]},
        ],
        "outputs": [{"name": "actions", "shape": [-1, n_agents, act_dim]}],
        "files": [
            {
                "path": onnx_path.name,
                "sha256": sha256_file(onnx_path),
                "bytes": onnx_path.stat().st_size,
                "format": "onnx",
                "precision": "fp32",
            }
        ],
        "opset": OPSET,
        "source_checkpoint_sha256": weights_sha,
        "config_summary": {"synthetic": True, "hidden": list(hidden), "seed": seed},
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    (version_dir / MANIFEST_FILENAME).write_text(json.dumps(manifest, indent=2))
    load_manifest(version_dir)  # what the server will check, checked here first
    return version_dir


def reference_policy(model_path: Path | str) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """The numpy twin of a synthetic policy: `(obs [B, N, obs_dim], noise [B, N, act_dim]) -> actions`."""
    version_dir = resolve_version_dir(Path(model_path))
    with np.load(version_dir / _WEIGHTS_FILE, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    mask = arrays.pop("action_mask").astype(np.float32)
    return lambda obs, noise: _numpy_actions(arrays, mask, np.asarray(obs), np.asarray(noise))

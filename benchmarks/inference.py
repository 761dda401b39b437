"""Inference cost per action: one-step OM2P vs 10-step flow vs 10- and 200-step diffusion, at batch
1 / 64 / 1024, PyTorch vs ONNX Runtime. Every sampler is the real deployable `PolicyModule` that its algorithm
builds (`ALGORITHM.build_policy`, 2x256 networks, the cooperative_navigation dims), exported to one ONNX graph by
the project's exporter with its K steps unrolled inside: latency does not depend on the weights, so fresh ones
serve."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

SAMPLERS = {
    "om2p (1 step)": ("om2p", {}),
    "flow (10 steps)": ("flow", {"flow.steps": 10}),
    "diffusion (10 steps)": ("diffusion", {"diffusion.steps": 10}),
    "diffusion (200 steps)": ("diffusion", {"diffusion.steps": 200}),
}
BATCHES = (1, 64, 1024)
ENV, HIDDEN = "cooperative_navigation", [256, 256]


def _time_per_call(call, budget_s: float, min_calls: int = 2) -> float:
    call()  # warm
    calls, started = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - started < budget_s:
        call()
        calls += 1
    return (time.perf_counter() - started) / calls


def _policy(algo: str, overrides: dict):
    """The algorithm's own deployable policy with fresh weights, in eval mode."""
    import torch

    from training.algos import get_algorithm
    from training.config import TrainConfig
    from training.envs import env_spec

    spec = env_spec(ENV)
    config = TrainConfig.from_dict(
        {"algo": algo, "env": ENV, "actor_hidden": HIDDEN, "critic_hidden": HIDDEN, **overrides}
    )
    mean, std = torch.zeros(spec.n_agents, spec.obs_dim), torch.ones(spec.n_agents, spec.obs_dim)
    policy = get_algorithm(algo).build_policy(spec, config, mean, std).eval()
    return policy, spec


def run(work_dir: Path, budget_s: float = 0.4) -> list[dict]:
    import torch
    from tqdm import tqdm

    from export.onnx_graph import export_onnx
    from export.session import open_session

    torch.set_num_threads(1)
    work_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    rng = np.random.default_rng(0)
    for sampler, (algo, overrides) in tqdm(SAMPLERS.items(), desc="inference", unit="sampler"):
        policy, spec = _policy(algo, overrides)
        path = work_dir / f"{algo}-{policy.sampler.evaluations_per_action()}.onnx"
        # The TorchScript tracer: a 200-step unrolled chain takes minutes through the dynamo exporter.
        export_onnx(policy, path, spec.n_agents, spec.obs_dim, spec.act_dim, exporter="torchscript")
        session = open_session(path)
        steps = policy.sampler.evaluations_per_action()
        for batch in BATCHES:
            obs = rng.normal(size=(batch, spec.n_agents, spec.obs_dim)).astype(np.float32)
            noise = rng.normal(size=(batch, spec.n_agents, spec.act_dim)).astype(np.float32)
            obs_t, noise_t = torch.from_numpy(obs), torch.from_numpy(noise)

            def ort_call(o=obs, n=noise, s=session) -> None:
                s.run(["actions"], {"obs": o, "noise": n})

            def torch_call(o=obs_t, n=noise_t, p=policy) -> None:
                with torch.inference_mode():
                    p(o, n)

            ort_s = _time_per_call(ort_call, budget_s)
            torch_s = _time_per_call(torch_call, budget_s)
            rows.append(
                {
                    "sampler": sampler,
                    "steps": steps,
                    "batch": batch,
                    "onnxruntime_us": ort_s * 1e6,
                    "pytorch_us": torch_s * 1e6,
                    "onnxruntime_speedup_vs_pytorch": torch_s / ort_s,
                }
            )
    for row in rows:  # the one-step policy's advantage, from timings of the same run
        base = next(r for r in rows if r["batch"] == row["batch"] and r["steps"] == 1)
        row["om2p_speedup_onnxruntime"] = row["onnxruntime_us"] / base["onnxruntime_us"]
        row["om2p_speedup_pytorch"] = row["pytorch_us"] / base["pytorch_us"]
    return rows

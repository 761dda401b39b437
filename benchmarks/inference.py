"""Inference cost per action: one-step OM2P vs 10-step flow vs 10- and 200-step diffusion, at batch
1 / 64 / 1024, PyTorch vs ONNX Runtime. The baselines' exported models do not exist yet: a K-step sampler is
measured as K chained evaluations of the same-width network (the synthetic 2x256 policy of
`server.testing`, each step's output fed to the next), which is what its sampling loop costs."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

SAMPLERS = {
    "om2p (1 step)": 1,
    "flow (10 steps)": 10,
    "diffusion (10 steps)": 10,
    "diffusion (200 steps)": 200,
}
BATCHES = (1, 64, 1024)
N_AGENTS, OBS_DIM, ACT_DIM, HIDDEN = 3, 18, 5, (256, 256)


def _time_per_call(call, budget_s: float, min_calls: int = 2) -> float:
    call()  # warm
    calls, started = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - started < budget_s:
        call()
        calls += 1
    return (time.perf_counter() - started) / calls


def _torch_network(weights: dict[str, np.ndarray]):
    import torch

    n_layers = sum(1 for key in weights if key.startswith("w"))
    ws = [torch.from_numpy(weights[f"w{i}"]) for i in range(n_layers)]
    bs = [torch.from_numpy(weights[f"b{i}"]) for i in range(n_layers)]
    mean, std = torch.from_numpy(weights["obs_mean"]), torch.from_numpy(weights["obs_std"])

    def evaluate(obs, z):
        ones = torch.ones((*z.shape[:-1], 2))
        x = torch.cat([(obs - mean) / std, z, ones], -1).transpose(0, 1)
        for i in range(n_layers):
            x = torch.baddbmm(bs[i], x, ws[i])
            if i < n_layers - 1:
                x = torch.nn.functional.gelu(x)
        return z - x.transpose(0, 1)

    return evaluate


def run(work_dir: Path, budget_s: float = 0.4) -> list[dict]:
    import onnxruntime as ort
    import torch
    from tqdm import tqdm

    from server.testing import synthetic_weights, write_synthetic_repository

    torch.set_num_threads(1)
    version_dir = write_synthetic_repository(work_dir / "inference", hidden=HIDDEN)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        str(version_dir / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    network = _torch_network(synthetic_weights(N_AGENTS, OBS_DIM, ACT_DIM, HIDDEN, seed=0))
    rows = []
    rng = np.random.default_rng(0)
    for batch in tqdm(BATCHES, desc="inference", unit="batch size"):
        obs = rng.normal(size=(batch, N_AGENTS, OBS_DIM)).astype(np.float32)
        noise = rng.normal(size=(batch, N_AGENTS, ACT_DIM)).astype(np.float32)
        obs_t, noise_t = torch.from_numpy(obs), torch.from_numpy(noise)

        def ort_sampler(steps: int, o=obs, n=noise) -> None:
            z = n
            for _ in range(steps):  # each step feeds the previous action back in, as a sampler does
                z = session.run(["actions"], {"obs": o, "noise": z})[0]

        def torch_sampler(steps: int, o=obs_t, n=noise_t) -> None:
            with torch.inference_mode():
                z = n
                for _ in range(steps):
                    z = network(o, z)

        for sampler, steps in SAMPLERS.items():
            ort_s = _time_per_call(lambda k=steps: ort_sampler(k), budget_s)
            torch_s = _time_per_call(lambda k=steps: torch_sampler(k), budget_s)
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
    return rows

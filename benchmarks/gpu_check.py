"""`make gpu-check`: the GPU path of training and serving, measured on one CUDA device, into one JSON.

    python -m benchmarks.gpu_check [--out benchmarks/results/gpu_check.json] [--train-steps 3000]

Sections (each one is independent: a section that fails records its error and the others still run):
- `device`: the GPU, torch and CUDA versions, and the matmul rates (fp32, TF32, bf16) measured now;
- `train_step`: one joint OM2P update (critics + actors + targets of all agents) at the paper's size (4x512,
  batch 256), the results grid's (2x128, batch 128) and a GPU-sized batch (4x512, batch 4096), eager and
  replayed as one CUDA graph, fp32 and bf16 autocast; beside them the reference code's structure (one agent
  object per agent, updated in turn) for the agent-batched vs per-agent comparison of the whole update;
- `agent_batched_forward`: one agent-batched actor pass vs a loop over per-agent networks;
- `training_run`: a short real run (`training.trainer.train`) on a freshly collected cooperative_navigation
  expert dataset, with its evaluations;
- `serving`: the torch serving backend (`server/backends/torch.py`, CUDA graphs per batch bucket) on that
  run's checkpoint, against eager calls of the same policy, per batch size.

Without CUDA it prints one line saying why and exits 0 (nothing to measure, nothing written).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.train_step import ACT_DIM, N_AGENTS, OBS_DIM, ReferenceStyleOM2P, _batch, batched_vs_loop
from training.cuda_graphs import GraphedStep, make_capturable

RESULTS = Path(__file__).resolve().parent / "results" / "gpu_check.json"
SIZES = {
    "paper_4x512_b256": ([512, 512, 512, 512], 256),
    "grid_2x128_b128": ([128, 128], 128),
    "gpu_4x512_b4096": ([512, 512, 512, 512], 4096),
}


def cuda_time_ms(fn: Callable[[], Any], repeats: int, rounds: int = 5) -> dict[str, float]:
    """Per-call time of `fn` by CUDA events: the fastest and the median of `rounds` rounds of `repeats`."""
    fn()
    torch.cuda.synchronize()
    per_call = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            fn()
        end.record()
        end.synchronize()
        per_call.append(start.elapsed_time(end) / repeats)
    per_call.sort()
    return {"ms": per_call[0], "ms_median": per_call[len(per_call) // 2]}


def matmul_tflops(dtype: torch.dtype, tf32: bool = False, size: int = 8192) -> float:
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        a = torch.randn(size, size, device="cuda", dtype=dtype)
        b = torch.randn(size, size, device="cuda", dtype=dtype)
        timing = cuda_time_ms(lambda: a @ b, repeats=5, rounds=3)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return 2 * size**3 / (timing["ms"] * 1e-3) / 1e12


def device_section() -> dict[str, Any]:
    props = torch.cuda.get_device_properties(0)
    return {
        "gpu": torch.cuda.get_device_name(0),
        "capability": f"{props.major}.{props.minor}",
        "multiprocessors": props.multi_processor_count,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "matmul_tflop_s": {
            "fp32": matmul_tflops(torch.float32),
            "tf32": matmul_tflops(torch.float32, tf32=True),
            "bf16": matmul_tflops(torch.bfloat16),
        },
    }


def build_om2p(hidden: list[int], batch_size: int, bf16: bool):
    from training.algos.om2p import OM2P
    from training.config import TrainConfig
    from training.envs import env_spec

    torch.manual_seed(0)
    config = TrainConfig(
        actor_hidden=hidden,
        critic_hidden=hidden,
        batch_size=batch_size,
        bf16_autocast=bf16,
        device="cuda",
    )
    stats = torch.zeros(N_AGENTS, OBS_DIM), torch.ones(N_AGENTS, OBS_DIM)
    return OM2P(env_spec("cooperative_navigation"), config, *stats).to("cuda")


def graphed_update(algorithm, batch) -> GraphedStep:
    """The trainer's CUDA-graphed step (`training/cuda_graphs.py`) on a fixed batch, captured before timing."""
    make_capturable(algorithm.optimizers())
    step = GraphedStep(lambda: algorithm.update(batch))
    for _ in range(step.warmup + 1):
        step()
    return step


def train_step_section(repeats: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for size_name, (hidden, batch_size) in SIZES.items():
        results[size_name] = time_update(hidden, batch_size, repeats)
        torch.cuda.empty_cache()
    return results


def time_update(hidden: list[int], batch_size: int, repeats: int) -> dict[str, Any]:
    """One size: eager and graphed, fp32 and bf16 autocast, and the per-agent reference structure."""
    batch = _batch(batch_size, torch.device("cuda"))
    row: dict[str, Any] = {"hidden": hidden, "batch": batch_size}
    for precision, bf16 in (("fp32", False), ("bf16_autocast", True)):
        eager = build_om2p(hidden, batch_size, bf16)
        row[f"eager_{precision}"] = cuda_time_ms(lambda a=eager: a.update(batch), repeats)
        try:
            step = graphed_update(build_om2p(hidden, batch_size, bf16), batch)
            row[f"cuda_graph_{precision}"] = cuda_time_ms(step, repeats)
        except Exception as error:  # a capture failure is a finding, not the end of the check
            row[f"cuda_graph_{precision}"] = {"error": f"{type(error).__name__}: {error}"}
    torch.manual_seed(0)
    reference = ReferenceStyleOM2P(hidden, torch.device("cuda"))
    row["reference_structure_eager_fp32"] = cuda_time_ms(
        lambda: reference.update(batch), max(1, repeats // 4)
    )
    for timing in row.values():
        if isinstance(timing, dict) and "ms" in timing:
            timing["steps_per_s"] = 1e3 / timing["ms"]
    row["speedups"] = _ratios(row)
    return row


def _ratios(row: dict[str, Any]) -> dict[str, float]:
    def ms(key: str) -> float | None:
        value = row.get(key)
        return value["ms"] if isinstance(value, dict) and "ms" in value else None

    pairs = {
        "cuda_graph_vs_eager_fp32": ("eager_fp32", "cuda_graph_fp32"),
        "cuda_graph_vs_eager_bf16": ("eager_bf16_autocast", "cuda_graph_bf16_autocast"),
        "agent_batched_vs_reference_structure_eager": ("reference_structure_eager_fp32", "eager_fp32"),
        "graphed_vs_reference_structure": ("reference_structure_eager_fp32", "cuda_graph_fp32"),
    }
    return {name: ms(slow) / ms(fast) for name, (slow, fast) in pairs.items() if ms(slow) and ms(fast)}


def training_run_section(workdir: Path, steps: int, device: str = "cuda") -> dict[str, Any]:
    """The trainer end to end on a fresh expert dataset, eager and (on CUDA) with the step as a CUDA graph:
    same seed and data, one evaluation of 50 episodes at the end, so the wall times compare the steps."""
    from training.config import TrainConfig
    from training.data.collect import collect
    from training.trainer import train

    started = time.perf_counter()
    dataset = collect("cooperative_navigation", "expert", 25_000, seed=0, progress=False)
    result: dict[str, Any] = {
        "dataset_transitions": dataset.transitions,
        "collect_s": time.perf_counter() - started,
        "steps": steps,
    }
    modes = {"eager": False, "cuda_graph": True} if device.startswith("cuda") else {"eager": False}
    for mode, cuda_graphs in modes.items():
        config = TrainConfig(
            env="cooperative_navigation", steps=steps, device=device, cuda_graphs=cuda_graphs, eval_every=0
        )
        started = time.perf_counter()
        evaluation = train(config, workdir / mode, dataset=dataset, progress=False).evaluation or {}
        wall_s = time.perf_counter() - started
        result[mode] = {
            "run_dir": str(workdir / mode),
            "wall_s": wall_s,
            "steps_per_s_including_one_evaluation": steps / wall_s,
            "final_evaluation": {k: v for k, v in evaluation.items() if isinstance(v, (int, float, str))},
        }
    result["config"] = {
        k: config.to_dict()[k] for k in ("actor_hidden", "batch_size", "alpha", "eval_episodes")
    }
    return result


def serving_section(run_dir: Path, repeats: int, device: str = "cuda") -> dict[str, Any]:
    import numpy as np

    from server.backends.torch import TorchBackend

    backend, spec = TorchBackend.load(run_dir, device=device, max_batch_rows=1024)
    policy, device = backend.policy, backend.device
    results: dict[str, Any] = {"backend": backend.description, "rows": {}}
    rng = np.random.default_rng(0)
    for rows in (1, 8, 64, 256, 1024):
        obs = rng.standard_normal((rows, spec.n_agents, spec.obs_dim)).astype(np.float32)
        noise = np.zeros((rows, spec.n_agents, spec.act_dim), dtype=np.float32)

        def eager(obs=obs, noise=noise) -> np.ndarray:
            with torch.inference_mode():
                actions = policy(torch.from_numpy(obs).to(device), torch.from_numpy(noise).to(device))
                return actions.cpu().numpy()

        graphed_out, eager_out = backend.run(obs, noise), eager()
        graphed = _wall_us(lambda o=obs, n=noise: backend.run(o, n), repeats)
        plain = _wall_us(eager, repeats)
        results["rows"][str(rows)] = {
            "graph_us": graphed,
            "eager_us": plain,
            "graph_speedup": plain / graphed,
            "graph_rows_per_s": rows / graphed * 1e6,
            "max_abs_diff_graph_vs_eager": float(np.abs(graphed_out - eager_out).max()),
        }
    backend.close()
    return results


def _wall_us(fn: Callable[[], Any], repeats: int) -> float:
    """Host-side microseconds per call, host-to-device copy and result download included (what a server
    pays); the fastest of five rounds."""
    fn()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        best = min(best, (time.perf_counter() - start) / repeats)
    return best * 1e6


def markdown(report: dict[str, Any]) -> list[str]:
    """The GPU section of docs/benchmarks.md, from a gpu_check.json (`make bench` shows the newest)."""
    device = report.get("device", {})
    rates = device.get("matmul_tflop_s", {})
    lines = [
        "## GPU: training step, short run, torch serving backend (`make gpu-check`)",
        "",
        f"`python -m benchmarks.gpu_check` ({report['created_at']}) on one **{device.get('gpu', '?')}** "
        f"(compute capability {device.get('capability', '?')}, torch {device.get('torch', '?')}, CUDA "
        f"{device.get('cuda', '?')}); matmul rate measured in the same run: fp32 {rates.get('fp32', 0):.0f}, "
        f"TF32 {rates.get('tf32', 0):.0f}, bf16 {rates.get('bf16', 0):.0f} TFLOP/s. Times are CUDA-event "
        "minima over five rounds; one joint update of 3 agents' critics, actors and targets.",
        "",
        "| size | eager fp32 | CUDA graph fp32 | eager bf16 | CUDA graph bf16 | reference structure (eager) "
        "| graph vs eager (fp32) | agent-batched vs reference (eager) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report.get("train_step", {}).values():
        if not isinstance(row, dict) or "speedups" not in row:
            continue

        def cell(key: str, row: dict = row) -> str:
            value = row.get(key, {})
            return f"{value['ms']:.2f} ms" if "ms" in value else "failed"

        speedups = row["speedups"]
        lines.append(
            f"| {'x'.join(map(str, {len(row['hidden'])}))}x{row['hidden'][0]}, batch {row['batch']} "
            f"| {cell('eager_fp32')} | {cell('cuda_graph_fp32')} | {cell('eager_bf16_autocast')} "
            f"| {cell('cuda_graph_bf16_autocast')} | {cell('reference_structure_eager_fp32')} "
            f"| {speedups.get('cuda_graph_vs_eager_fp32', 0):.1f}x "
            f"| {speedups.get('agent_batched_vs_reference_structure_eager', 0):.1f}x |"
        )
    run = report.get("training_run", {})
    if "eager" in run and "cuda_graph" in run:
        eager, graph = run["eager"], run["cuda_graph"]
        lines += [
            "",
            f"- **Short training run** (`training.trainer.train`, cooperative_navigation expert, "
            f"{run['dataset_transitions']:,} transitions, {run['steps']:,} steps, 2x256, batch 256, one "
            f"evaluation of 50 episodes at the end): eager {eager['wall_s']:.1f} s, the step as a replayed "
            f"CUDA graph (the trainer's default on CUDA) {graph['wall_s']:.1f} s, "
            f"**{eager['wall_s'] / graph['wall_s']:.1f}x**. Normalised score: eager "
            f"{eager['final_evaluation'].get('normalised_score', float('nan')):.2f}, graphed "
            f"{graph['final_evaluation'].get('normalised_score', float('nan')):.2f} (same seed, same data).",
        ]
    forward = report.get("agent_batched_forward", [])
    if isinstance(forward, list) and forward:
        lines.append(
            "- Agent-batched actor forward vs a loop over per-agent networks (4x512): "
            + ", ".join(f"{b['speedup']:.1f}x at batch {b['batch']}" for b in forward)
            + "."
        )
    serving = report.get("serving", {})
    if "rows" in serving:
        lines.append(
            f"- **Torch serving backend** ({serving['backend']}), host-side time per call including the copies: "
            + ", ".join(
                f"{rows} rows {r['graph_us']:.0f} us ({r['graph_speedup']:.1f}x eager)"
                for rows, r in serving["rows"].items()
            )
            + "."
        )
    return [*lines, ""]


def run_section(name: str, report: dict[str, Any], fn: Callable[[], Any]) -> None:
    started = time.perf_counter()
    print(f"gpu-check: {name} ...", flush=True)
    try:
        report[name] = fn()
    except Exception as error:
        report[name] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
        print(f"gpu-check: {name} failed: {type(error).__name__}: {error}", flush=True)
    report.setdefault("section_seconds", {})[name] = round(time.perf_counter() - started, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(RESULTS), help="where the JSON report goes")
    parser.add_argument("--train-steps", type=int, default=3000, help="steps of the short training run")
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per round")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(f"gpu-check: skipped: torch {torch.__version__} sees no CUDA device on this machine")
        return 0

    report: dict[str, Any] = {
        "benchmark": "gpu_check",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sizes": {"agents": N_AGENTS, "obs_dim": OBS_DIM, "act_dim": ACT_DIM},
    }
    run_section("device", report, device_section)
    run_section("train_step", report, lambda: train_step_section(args.repeats))
    run_section(
        "agent_batched_forward",
        report,
        lambda: [batched_vs_loop([512] * 4, b, torch.device("cuda"), repeats=200) for b in (1, 256, 4096)],
    )
    with tempfile.TemporaryDirectory(prefix="om2p-gpu-check-") as tmp:
        run_section("training_run", report, lambda: training_run_section(Path(tmp), args.train_steps))
        if "error" not in report["training_run"]:
            run_section("serving", report, lambda: serving_section(Path(tmp) / "cuda_graph", args.repeats))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "training_run"}, indent=1, default=str)[:6000])
    print(f"gpu-check: written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

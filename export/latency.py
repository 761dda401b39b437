"""How actor width trades against ONNX Runtime latency: `python -m export.latency [--env ENV]`.

Each candidate actor is exported (fresh weights: latency does not depend on their values) and timed through
ONNX Runtime on the CPU at batch 1 (one control step of one team) and batch 1024 (a full server batch),
side by side in one run, so the numbers are comparable with each other and nothing else.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

CANDIDATES = ([512, 512, 512, 512], [512, 512], [256, 256, 256], [256, 256], [128, 128])


def time_calls(run, obs: np.ndarray, noise: np.ndarray, min_seconds: float = 1.0) -> float:
    """Median wall time of one call, in milliseconds, over at least `min_seconds` of calls."""
    for _ in range(3):
        run(obs, noise)  # warm-up: allocations, thread pool
    samples: list[float] = []
    deadline = time.perf_counter() + min_seconds
    while time.perf_counter() < deadline or len(samples) < 5:
        start = time.perf_counter()
        run(obs, noise)
        samples.append(time.perf_counter() - start)
    return 1e3 * float(np.median(samples))


def measure(
    env: str, candidates, batches=(1, 1024), min_seconds: float = 1.0, threads: int = 1, rounds: int = 3
) -> list[dict]:
    """Export every candidate, then time them in interleaved rounds and keep each cell's best round: the
    machine is shared, and interleaving spreads other load evenly over the candidates."""
    from export.exporter import ExportOptions, export_checkpoint
    from export.parity import onnxruntime_runner
    from export.testing import write_checkpoint

    rows, runners = [], []
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as scratch:
        for hidden in tqdm(candidates, desc="export"):
            label = "x".join(map(str, hidden))
            step_dir = write_checkpoint(Path(scratch) / label, env, actor_hidden=list(hidden))
            options = ExportOptions(name=f"w{label}", exporter="torchscript", tensorrt="off", eval_episodes=0)
            manifest = export_checkpoint(step_dir, Path(scratch) / "models", options).manifest
            version_dir = Path(scratch) / "models" / manifest.name / str(manifest.version)
            runners.append(onnxruntime_runner(version_dir / "model.onnx", threads=threads))
            row = {"actor": label, "parameters": manifest.config_summary["parameters"]}
            rows.append({**row, "onnx_bytes": manifest.files[0].bytes})
        inputs = {
            batch: (
                rng.standard_normal((batch, manifest.n_agents, manifest.obs_dim)).astype(np.float32),
                rng.standard_normal((batch, manifest.n_agents, manifest.act_dim)).astype(np.float32),
            )
            for batch in batches
        }
        with tqdm(total=rounds * len(rows) * len(batches), desc="timing") as bar:
            for _ in range(rounds):
                for row, run in zip(rows, runners, strict=True):
                    for batch, (obs, noise) in inputs.items():
                        ms = time_calls(run, obs, noise, min_seconds)
                        row[f"ms@{batch}"] = min(ms, row.get(f"ms@{batch}", float("inf")))
                        bar.update(1)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", default="cooperative_navigation")
    parser.add_argument("--seconds", type=float, default=0.5, help="timing per (width, batch, round)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best is kept")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="onnxruntime intra-op threads (1: the server's default; 0: all)",
    )
    parser.add_argument("--plot", type=Path, help="also write a PNG bar chart of the latencies here")
    args = parser.parse_args(argv)
    rows = measure(args.env, CANDIDATES, min_seconds=args.seconds, threads=args.threads, rounds=args.rounds)
    print(
        f"onnxruntime CPU, {args.threads or 'all'} intra-op thread(s), best of {args.rounds} rounds of >= {args.seconds:g} s"
    )
    base = rows[0]
    print(
        f"{'actor':>16} {'params':>9} {'ONNX MB':>8} {'ms@1':>7} {'ms@1024':>8} {'vs first @1':>11} {'@1024':>6}"
    )
    for row in rows:
        print(
            f"{row['actor']:>16} {row['parameters']:>9} {row['onnx_bytes'] / 1e6:>8.2f} {row['ms@1']:>7.3f} "
            f"{row['ms@1024']:>8.2f} {row['ms@1'] / base['ms@1']:>11.2f} {row['ms@1024'] / base['ms@1024']:>6.2f}"
        )
    if args.plot:
        plot(rows, args.plot, f"ONNX Runtime CPU, {args.threads or 'all'} thread(s), {args.env}")
        print(f"wrote {args.plot}")
    return 0


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    labels = [row["actor"] for row in rows]
    for ax, batch in zip(axes, (1, 1024), strict=True):
        ax.bar(labels, [row[f"ms@{batch}"] for row in rows], color="tab:blue")
        ax.set_title(f"batch {batch}")
        ax.set_ylabel("ms per call (median)")
        ax.tick_params(axis="x", labelrotation=20)
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    raise SystemExit(main())

"""`make bench`: inference and serving benchmarks in one run; writes `benchmarks/results/*.json`,
PNG plots under `docs/img/` and `docs/benchmarks.md`. Every ratio is taken from timings of this run."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path

from benchmarks import gpu_check, inference, overload, ray_peer, serving, soak, train_step

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
IMAGES = ROOT / "docs" / "img"
BUNDLED = ROOT / "server" / "bundled" / "cooperative_navigation"


def _plot_inference(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for axis, backend in zip(axes, ("onnxruntime_us", "pytorch_us"), strict=True):
        for sampler in inference.SAMPLERS:
            points = [r for r in rows if r["sampler"] == sampler]
            axis.plot([r["batch"] for r in points], [r[backend] / 1e3 for r in points], "o-", label=sampler)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("batch (environments)")
        axis.set_title(backend.replace("_us", ""))
        axis.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("ms per action batch")
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _plot_serving(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = {
        "raw ASGI const": results["raw_app"]["ours"]["throughput_rps"],
        "FastAPI const": results["fastapi_app"]["ours"]["throughput_rps"],
        "/act binary": results["protocols"]["binary"]["throughput_rps"],
        "/act JSON": results["protocols"]["json"]["throughput_rps"],
        "/act WebSocket": results["protocols"]["websocket"]["throughput_rps"],
    }
    for key, entry in results.items():
        if key.startswith("batching_"):
            name = key.removeprefix("batching_")
            bars[f"{name} batch on"] = entry["on"]["throughput_rps"]
            bars[f"{name} batch off"] = entry["off"]["throughput_rps"]
    figure, axis = plt.subplots(figsize=(8, 4.5))
    axis.barh(list(bars), list(bars.values()), color="tab:blue")
    axis.set_xlabel(f"requests/s, {results['clients']} closed-loop clients")
    axis.invert_yaxis()
    axis.grid(True, axis="x", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _peer_markdown(peer: dict, serve: dict) -> list[str]:
    """Ours vs Ray Serve: same model (2x256), same JSON body, same load generator, same machine."""
    if "skipped" in peer:
        return [peer["skipped"]]
    ray, ours = peer["ray"], peer["ours"]
    config = peer["ray_config"]
    lines = [
        f"Ray Serve {peer['ray_version']} (throwaway venv, not a project dependency) serving the same 2x256 "
        f"`model.onnx` with `@serve.batch(max_batch_size={config['max_batch_size']}, "
        f"batch_wait_timeout_s={config['batch_wait_timeout_s']:g})`, one replica, "
        f"`max_ongoing_requests={config['max_ongoing_requests']}`, one ONNX Runtime session with one intra-op "
        "thread and one `session.run` per batch, access log off. Both servers get the same JSON `/act` body "
        f"from our load generator, one after the other, {peer['duration_s']:g} s per point.",
        "",
        f"| server | req/s, {peer['clients']} clients | p50 ms | p99 ms | errors | "
        f"p50 ms at {peer['equal_load_rps']:,.0f} req/s | p99 ms at {peer['equal_load_rps']:,.0f} req/s | "
        "errors (open loop) |",
        "|---|---:|---:|---:|---|---:|---:|---|",
    ]
    for label, entry in (("om2p serve", ours), ("Ray Serve", ray)):
        closed, opened = entry["closed"], entry["open"]
        lines.append(
            f"| {label} | {_fmt(closed['throughput_rps'])} | {_fmt(closed['latency_ms']['p50'], 2)} | "
            f"{_fmt(closed['latency_ms']['p99'], 2)} | {closed['errors'] or 'none'} | "
            f"{_fmt(opened['latency_ms']['p50'], 2)} | {_fmt(opened['latency_ms']['p99'], 2)} | "
            f"{opened['errors'] or 'none'} |"
        )
    met = "met" if peer["target"]["met"] else "**not met**"
    ours_p99 = ours["closed"]["latency_ms"]["p99"]
    ray_p99 = ray["closed"]["latency_ms"]["p99"]
    lines += [
        "",
        f"- Throughput at {peer['clients']} clients: **{peer['throughput_ratio']:.1f}x** Ray Serve's, at a "
        f"{'lower' if ours_p99 < ray_p99 else 'higher'} p99 ({ours_p99:.1f} vs {ray_p99:.1f} ms). Target: at "
        f"least {peer['target']['throughput_ratio']:g}x with a lower p99: {met}.",
        f"- p99 at equal load (open loop, {peer['equal_load_rps']:,.0f} req/s = "
        f"{peer['equal_load_rps'] / max(ray['closed']['throughput_rps'], 1e-9):.0%} of Ray's closed-loop rate): "
        f"{_fmt(ours['open']['latency_ms']['p99'], 2)} ms ours vs {_fmt(ray['open']['latency_ms']['p99'], 2)} ms "
        "Ray Serve.",
    ]
    best = ours["at_ray_p99"]
    if best is not None:
        lines.append(
            f"- Throughput at equal p99: with its p99 at or under Ray Serve's {ray_p99:.1f} ms, om2p serve "
            f"answers {_fmt(best['throughput_rps'])} req/s ({best['concurrency']} clients, p99 "
            f"{best['latency_ms']['p99']:.1f} ms): **{best['throughput_rps'] / ray['closed']['throughput_rps']:.1f}x**."
        )
    json_row = serve.get("protocols", {}).get("json")
    if json_row:
        lines.append(
            f"- For reference, the Serving table's `/act 2x256 JSON` row (same server and model, measured "
            f"earlier in this run): {_fmt(json_row['throughput_rps'])} req/s, p99 "
            f"{_fmt(json_row['latency_ms']['p99'], 2)} ms."
        )
    return lines


def _one_connection_lines(overhead: dict) -> list[str]:
    """Latency at one connection: wrk's back-to-back requests (the server's own time) and our generator's
    low open-loop rate (which also pays the client's wake-ups on an otherwise idle machine)."""
    lines = []
    one = overhead.get("wrk_one_connection")
    if one and one.get("p50_ms") is not None:
        lines.append(
            f"- One connection, back to back (wrk `-c1`): `/act` p50 **{one['p50_ms'] * 1e3:.0f} us**, p99 "
            f"{one['p99_ms'] * 1e3:.0f} us, {one['throughput_rps']:,.0f} req/s (target: p50 at most 300 us); "
            f"the raw ONNX Runtime call alone takes {overhead['raw_onnxruntime_us']:.0f} us."
        )
    lines.append(
        f"- Our generator at 50 req/s open loop (binary): p50 {overhead['act_p50_low_load_us']:.0f} us, which "
        "includes the Python client's own scheduling and wake-ups between sparse requests."
    )
    return lines


def _vs_official_markdown(report: dict) -> list[str]:
    """Ours, lever by lever, against the official JAX code, both sizes and thread counts, from one run."""
    section = report["vs_official"]
    official = report.get("official")
    rates = section["matmul_gflop_s"]
    where = (
        f"the official code (github.com/lizr16/OM2P at {official['commit'][:10]}, `agents/fql_meanfield.py` at "
        f"its defaults with `is_autograd=0`, its finite-difference mode; JAX {official['versions']['jax']}, flax "
        f"{official['versions']['flax']}, optax {official['versions']['optax']}, in a throwaway venv, one agent "
        "object per agent updated in turn as its `main.py` does)"
        if official
        else f"the official code (not run here: {report.get('official_unavailable')})"
    )
    lines = [
        f"`python -m benchmarks.train_step` ({report['created_at']}, {report.get('cpus', '?')} CPUs, torch "
        f"{report['torch']}; AVX512-BF16: {'yes' if report['cpu_has_avx512_bf16'] else 'no'}, AMX: "
        f"{'yes' if report.get('cpu_has_amx') else 'no'}): ours against {where}. One joint update of 3 agents "
        "(critics, actors, targets), `fd`. Interleaved round by round in one run, median of "
        f"{section['rounds']} rounds; one thread: both pinned to one core (XLA's intra-op threads off), two threads: both cores. "
        "`first step` is our first update (for compiled levers: tracing and the C++ build) or the official "
        "code's jit compilation. Matmul rates measured in the same run: "
        + "; ".join(
            f"{threads} thread(s) fp32 {r['fp32']:.0f}, bf16 {r['bf16']:.0f} GFLOP/s"
            for threads, r in rates.items()
        )
        + ".",
        "",
        *train_step.comparison_lines(report),
        "",
    ]
    for size, entry in section["sizes"].items():
        for threads, result in entry["threads"].items():
            rows = result["configurations"]
            if "official" not in rows:
                continue
            name, best = max(
                ((n, r) for n, r in rows.items() if n != "official"), key=lambda x: x[1]["steps_per_s"]
            )
            verdict = "met" if best["vs_official"] >= 1.5 else "not met"
            lines.append(
                f"- {size}, {threads} thread(s) available: best of ours `{name}` {best['ms_per_step']:.1f} ms against "
                f"the official code's {rows['official']['ms_per_step']:.1f} ms: **{best['vs_official']:.2f}x** its "
                f"steps/s (target 1.5x: {verdict})."
            )
    lines.append("")
    return lines


def _train_step_markdown(report: dict) -> list[str]:
    """The training-step section, from `benchmarks/results/train_step.json` (its own run, its own ratios)."""
    lines = ["## Training step: one joint OM2P update", ""]
    if report.get("vs_official"):
        lines += _vs_official_markdown(report)
    if "configurations" not in report:
        return lines
    sizes, summary, configs = report["sizes"], report["summary"], report["configurations"]
    memory_key = "peak_gpu_memory_mb" if report["device"] == "cuda" else "peak_rss_increase_mb"
    rates = report["matmul_gflop_s"]
    lines += [
        "### fd, jvp, zero, bf16 and the reference's structure re-created in PyTorch",
        "",
        f"`python -m benchmarks.train_step` ({report['created_at']}, {report['device']}, {report['threads']} "
        f"thread(s), torch {report['torch']}; AVX512-BF16: {'yes' if report['cpu_has_avx512_bf16'] else 'no'}). "
        f"{sizes['agents']} agents, batch {sizes['batch']}, actors and critics {'x'.join(map(str, sizes['hidden']))}"
        " (GELU, LayerNorm critics). Critics, actors and Polyak targets of all agents, timed interleaved in one "
        "process, minimum over rounds; peak memory per configuration in a fresh process. Matmul rate measured "
        f"in the same run: fp32 {rates['fp32']:.0f} GFLOP/s, bf16 {rates['bf16']:.0f} GFLOP/s.",
        "",
        "| configuration | ms / step | steps / s | matmul GFLOP / step | GFLOP/s | share of its dtype's matmul rate | peak memory |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in configs.items():
        share = r.get("fraction_of_own_dtype_matmul_rate", r["fraction_of_fp32_matmul_rate"])
        lines.append(
            f"| {name} | {r['ms_per_step']:.1f} | {r['steps_per_s']:.2f} | {r['matmul_gflop_per_step']:.1f} | "
            f"{r['achieved_gflop_s']:.1f} | {share:.0%} | +{r[memory_key]:.0f} MB |"
        )
    reference = configs["reference_structure_fd_fp32"]
    best = min(configs.values(), key=lambda r: r["ms_per_step"])
    lines += [
        "",
        f"- `fd` vs `jvp`: **{summary['fd_vs_jvp_speedup']:.2f}x** faster, **{summary['fd_vs_jvp_memory_ratio']:.2f}x** "
        "less peak memory. The paper's up to 10.8x / 3.8x are against its JAX full-batch Jacobian "
        "(O(B^2) memory), not a per-sample forward-mode JVP like ours.",
        f"- bf16 autocast vs fp32 (`fd`): **{summary['bf16_autocast_vs_fp32_speedup']:.2f}x**.",
        "- Against the public reference's update structure (re-created in PyTorch: one agent object per agent "
        "updated in turn, unfused passes, an extra actor pass per step for logging), measured side by side: "
        f"fp32 **{summary['vs_reference_structure_speedup']:.2f}x**, bf16 autocast "
        f"**{summary.get('bf16_vs_reference_structure_speedup', float('nan')):.2f}x** its steps/s (target: 2x). "
        f"Best configuration: {best['steps_per_s']:.1f} steps/s against the reference structure's "
        f"{reference['steps_per_s']:.1f}. The official JAX code itself is measured in the table above.",
        "- Agent-batched vs a loop over per-agent networks (actor forward): "
        + ", ".join(
            f"{speedup:.2f}x at batch {batch}"
            for batch, speedup in summary["agent_batched_vs_loop_forward_speedup"].items()
        )
        + ".",
        "",
    ]
    return lines


def _markdown(
    meta: dict,
    rows: list[dict],
    serve: dict,
    peer: dict,
    train_report: dict | None = None,
    soak_report: dict | None = None,
    overload_report: dict | None = None,
    gpu_report: dict | None = None,
) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"Measured by `make bench` on {meta['when']} ({meta['machine']}, {meta['cpus']} CPUs; load average at "
        f"start: {meta['load_average']}). Every ratio compares numbers measured side by side in one run (the "
        "training-step section names the run it comes from). The load generators run on the same cores as "
        "the server, so absolute rates are lower than a separate client machine would see.",
        "",
        *(_train_step_markdown(train_report) if train_report else []),
        "## Inference: one-step OM2P vs multi-step samplers",
        "",
        "Each sampler is its algorithm's real deployable policy (2x256 networks, 3 agents, obs 18, act 5, fresh "
        "weights: latency does not depend on them), exported to one ONNX graph with its K steps unrolled; one "
        "thread per backend. `cost vs one-step` divides by OM2P's time at the same batch and backend.",
        "",
        "| sampler | batch | ONNX Runtime (us) | PyTorch (us) | ORT speed-up vs PyTorch | cost vs one-step (ORT) | cost vs one-step (PyTorch) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['sampler']} | {r['batch']} | {_fmt(r['onnxruntime_us'])} | {_fmt(r['pytorch_us'])} | "
            f"{r['onnxruntime_speedup_vs_pytorch']:.2f}x | {r['om2p_speedup_onnxruntime']:.1f}x | "
            f"{r['om2p_speedup_pytorch']:.1f}x |"
        )
    lines += ["", "![inference](img/bench_inference.png)", "", "## Serving", ""]
    lines += [
        f"Closed loop, {serve['clients']} clients, {serve['duration_s']:g} s per point, our load generator "
        "(raw asyncio HTTP/1.1 keep-alive) unless marked wrk. `om2p serve` defaults (ONNX Runtime CPU).",
        "",
        "| server | req/s | p50 ms | p99 ms | errors | wrk req/s | wrk p99 ms | wrk non-2xx |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]

    def row(label: str, summary: dict, wrk: dict | None = None) -> str:
        latency = summary["latency_ms"]
        wrk = wrk or {}
        return (
            f"| {label} | {_fmt(summary['throughput_rps'])} | {_fmt(latency['p50'], 2)} | "
            f"{_fmt(latency['p99'], 2)} | {summary['errors'] or 'none'} | {_fmt(wrk.get('throughput_rps'))} | "
            f"{_fmt(wrk.get('p99_ms'), 2)} | {wrk.get('non_2xx', '-') if wrk else '-'} |"
        )

    lines.append(row("raw ASGI constant", serve["raw_app"]["ours"], serve["raw_app"]["wrk"]))
    lines.append(row("FastAPI constant route", serve["fastapi_app"]["ours"], serve["fastapi_app"]["wrk"]))
    protocols = serve["protocols"]
    lines.append(row("/act 2x256 JSON", protocols["json"], protocols["wrk_json"]))
    lines.append(row("/act 2x256 binary", protocols["binary"]))
    lines.append(row("/act 2x256 WebSocket (JSON messages)", protocols["websocket"]))
    lines += [
        "",
        f"- `/act` (JSON, 2x256, real inference) reaches **{serve['act_vs_raw_asgi']:.0%}** of the raw ASGI "
        "request rate with our generator"
        + (
            f" and **{serve['act_vs_raw_asgi_wrk']:.0%}** with wrk"
            if serve.get("act_vs_raw_asgi_wrk") is not None
            else ""
        )
        + f" (same JSON body on both sides; target: at least 50%), and **{serve['act_vs_fastapi_constant']:.2f}x** "
        "the FastAPI constant route.",
        *_one_connection_lines(serve["overhead"]),
        "",
        "### Batching on vs off (`--max-batch-rows 1`)",
        "",
        "| model | on req/s | off req/s | ratio | on p99 ms | off p99 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, entry in serve.items():
        if key.startswith("batching_"):
            lines.append(
                f"| {key.removeprefix('batching_')} | {_fmt(entry['on']['throughput_rps'])} | "
                f"{_fmt(entry['off']['throughput_rps'])} | **{entry['ratio']:.2f}x** | "
                f"{_fmt(entry['on']['latency_ms']['p99'], 2)} | {_fmt(entry['off']['latency_ms']['p99'], 2)} |"
            )
    lines += [
        "",
        "Target: at least 3x for the 4x512 actor with 64 clients.",
        "",
        "![serving](img/bench_serving.png)",
        "",
        "## The peer: Ray Serve",
        "",
        *_peer_markdown(peer, serve),
        "",
        "Raw results: `benchmarks/results/inference.json`, `benchmarks/results/serving.json` (the peer under "
        "`ray_serve`), `benchmarks/results/overload.json`.",
        "",
        *(overload.markdown(overload_report) if overload_report else []),
        *(soak.markdown(soak_report) if soak_report else []),
        *(gpu_check.markdown(gpu_report) if gpu_report else []),
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class Budget:
    """How long each stage measures: the real run, or a smoke run whose numbers mean nothing."""

    train_step_args: tuple[str, ...] = ()
    inference_s: float = 0.4
    point_s: float = 3.0
    overload_s: float = 5.0  # per offered load
    overload_factors: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)


QUICK = Budget(
    train_step_args=("--hidden", "64,64", "--steps", "1", "--rounds", "1", "--sizes", ""),
    inference_s=0.02,
    point_s=1.5,
    overload_s=0.5,
    overload_factors=(4.0,),
)


def run_bench(budget: Budget, results: Path, images: Path, markdown: Path, reuse_train_step: bool) -> tuple:
    """Every stage, its raw JSON under `results`, plots under `images`, the page at `markdown`."""
    results.mkdir(parents=True, exist_ok=True)
    images.mkdir(parents=True, exist_ok=True)
    meta = {
        "when": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average": ", ".join(f"{v:.1f}" for v in os.getloadavg()),
    }
    bundled = BUNDLED if any(BUNDLED.glob("*/manifest.json")) else None
    train_json = results / "train_step.json"
    if not (reuse_train_step and train_json.is_file()):
        train_step.main(["--out", str(train_json), *budget.train_step_args])
    train_report = json.loads(train_json.read_text()) if train_json.is_file() else None
    with tempfile.TemporaryDirectory(prefix="om2p-bench-") as work:
        rows = inference.run(Path(work) / "inference", budget_s=budget.inference_s)
        serve = serving.run(Path(work), bundled, duration_s=budget.point_s)
        peer = ray_peer.run(Path(work) / "m256", duration_s=budget.point_s)
        # Capacity, then 4x it against a small queue, both in this run (benchmarks/overload.py).
        over = overload.measure(
            bundled or Path(work) / "m256",
            duration_s=budget.overload_s,
            capacity_s=budget.point_s,
            factors=budget.overload_factors,
        )
    (results / "inference.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (results / "serving.json").write_text(json.dumps({"meta": meta, **serve, "ray_serve": peer}, indent=2))
    _plot_inference(rows, images / "bench_inference.png")
    _plot_serving(serve, images / "bench_serving.png")
    overload.write(over, results / "overload.json", images / "overload.png")
    # The soak takes ten minutes: `make soak` runs it, and the page shows its newest result.
    soak_json = RESULTS / "soak.json"
    soak_report = json.loads(soak_json.read_text()) if soak_json.is_file() else None
    # The GPU check needs a CUDA machine: `make gpu-check` runs it there, and the page shows its newest result.
    gpu_json = RESULTS / "gpu_check.json"
    gpu_report = json.loads(gpu_json.read_text()) if gpu_json.is_file() else None
    markdown.write_text(_markdown(meta, rows, serve, peer, train_report, soak_report, over, gpu_report))
    return serve, peer, over


def _print_summary(serve: dict, peer: dict, over: dict) -> None:
    print(f"/act vs raw ASGI: {serve['act_vs_raw_asgi']:.0%}")
    print(overload.summary_line(over))
    for key, entry in serve.items():
        if key.startswith("batching_"):
            print(f"batching on/off {key.removeprefix('batching_')}: {entry['ratio']:.2f}x")
    if "skipped" in peer:
        print(peer["skipped"])
    else:
        closed = {side: peer[side]["closed"] for side in ("ours", "ray")}
        print(
            f"om2p vs Ray Serve ({peer['clients']} clients, JSON): {peer['throughput_ratio']:.1f}x req/s, "
            f"p99 {closed['ours']['latency_ms']['p99']:.1f} vs {closed['ray']['latency_ms']['p99']:.1f} ms"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="make bench: training step, inference, serving, the peer")
    parser.add_argument(
        "--skip-train-step", action="store_true", help="reuse benchmarks/results/train_step.json if present"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run of the whole pipeline (short points, small training step) into a temp dir",
    )
    args = parser.parse_args(argv)
    if args.quick:
        with tempfile.TemporaryDirectory(prefix="om2p-bench-quick-") as work:
            out = Path(work)
            serve, peer, over = run_bench(QUICK, out, out, out / "benchmarks.md", reuse_train_step=False)
        print("quick bench ok (numbers meaningless):")
        _print_summary(serve, peer, over)
        return 0
    serve, peer, over = run_bench(
        Budget(), RESULTS, IMAGES, ROOT / "docs" / "benchmarks.md", args.skip_train_step
    )
    print(f"wrote {RESULTS}/inference.json, serving.json, overload.json, docs/benchmarks.md")
    _print_summary(serve, peer, over)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

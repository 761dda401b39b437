"""Training-step benchmark: one joint update of all agents (critics + actors + targets), measured side by side.

    python -m benchmarks.train_step [--peer-repo PATH | --no-peer] [--sizes paper,grid] [--peer-threads 1,2]
                                    [--skip-estimators] [--device cpu|cuda] [--hidden ...] [--batch 256]

1. Ours against the official OM2P code (JAX, github.com/lizr16/OM2P; `benchmarks/peer_om2p.py` fetches it
   into a throwaway folder and venv outside the project and runs it in a child process), at the paper's size
   (4x512, batch 256) and the results grid's (2x128, batch 128), with one thread (both pinned to one core)
   and with both cores. Ours is timed lever by lever: fp32 eager (the step before #16), bf16 autocast,
   torch.compile of the losses, and both. Interleaved round by round in one run, medians reported, with the
   share of the matmul rate measured in the same run and the first step's time (compilation). When the
   official code cannot run on a machine the table says why and ours is still timed.
2. At `--hidden`/`--batch`/`--threads`, eager: `fd` vs `jvp` vs `zero` (step time, peak memory per
   configuration in a fresh process), bf16 vs fp32, our update vs the reference's structure re-created in
   PyTorch (one agent object per agent updated in turn, unfused passes, a logged action MSE per step), and
   agent-batched vs per-agent forward passes.
Results: benchmarks/results/train_step.json (and the training-step section of docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from benchmarks import peer_om2p

RESULTS = Path(__file__).resolve().parent / "results" / "train_step.json"
N_AGENTS, OBS_DIM, ACT_DIM = 3, 18, 5  # cooperative navigation


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    raise KeyError(field)


def _reset_peak_rss() -> float:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS and return that RSS, so the next peak
    is the peak of what follows, not of the imports before it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_mb("VmRSS")
    except OSError:  # not Linux: fall back to the lifetime peak
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _peak_rss_mb() -> float:
    try:
        return _status_mb("VmHWM")
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _batch(batch_size: int, device: torch.device):
    from training.algos import Batch

    g = torch.Generator().manual_seed(0)
    n, o, a = N_AGENTS, OBS_DIM, ACT_DIM
    return Batch(
        torch.randn(batch_size, n, o, generator=g).to(device),
        (torch.rand(batch_size, n, a, generator=g) * 2 - 1).to(device),
        torch.randn(batch_size, n, generator=g).to(device),
        torch.randn(batch_size, n, o, generator=g).to(device),
        torch.zeros(batch_size, n, device=device),
    )


class ReferenceStyleOM2P:
    """The public reference's update structure, in PyTorch, for a like-for-like comparison on this machine:
    one independent agent (actor, two-member critic ensemble, target, two Adams) per agent, updated in
    turn; the finite difference's second evaluation and the one-step actions are separate passes; actions
    are recomputed every step for a logged MSE. Same sizes, same math otherwise (and e - u, not u)."""

    def __init__(self, hidden: list[int], device: torch.device, delta: float = 5e-3) -> None:
        def mlp(inp: int, out: int, layer_norm: bool) -> nn.Sequential:
            layers: list[nn.Module] = []
            for width in hidden:
                layers += (
                    [nn.Linear(inp, width)] + ([nn.LayerNorm(width)] if layer_norm else []) + [nn.GELU()]
                )
                inp = width
            return nn.Sequential(*layers, nn.Linear(inp, out)).to(device)

        self.delta = delta
        self.agents = []
        for _ in range(N_AGENTS):
            actor = mlp(OBS_DIM + ACT_DIM + 2, ACT_DIM, False)
            critics = nn.ModuleList([mlp(OBS_DIM + ACT_DIM, 1, True) for _ in range(2)])
            target = copy.deepcopy(critics).requires_grad_(False)
            self.agents.append(
                {
                    "actor": actor,
                    "critics": critics,
                    "target": target,
                    "actor_opt": torch.optim.Adam(actor.parameters(), lr=3e-4),
                    "critic_opt": torch.optim.Adam(critics.parameters(), lr=3e-4),
                }
            )

    @staticmethod
    def _u(actor, obs, z, r, t):
        return actor(torch.cat([obs, z, t, t - r], dim=-1))

    def update(self, batch) -> None:
        for i, agent in enumerate(self.agents):
            obs, next_obs, x = batch.observations[:, i], batch.next_observations[:, i], batch.actions[:, i]
            reward, done = batch.rewards[:, i : i + 1], batch.dones[:, i : i + 1]
            b = obs.shape[0]
            zeros, ones = torch.zeros(b, 1, device=obs.device), torch.ones(b, 1, device=obs.device)
            actor, critics = agent["actor"], agent["critics"]
            with torch.no_grad():
                e_next = torch.randn_like(x)
                next_a = (e_next - self._u(actor, next_obs, e_next, zeros, ones)).clamp(-1, 1)
                nq = torch.stack([c(torch.cat([next_obs, next_a], -1)) for c in agent["target"]]).mean(0)
                y = reward + 0.99 * (1 - done) * nq
            q = torch.stack([c(torch.cat([obs, x], -1)) for c in critics])
            loss = (q - y).square().mean()
            agent["critic_opt"].zero_grad()
            loss.backward()
            agent["critic_opt"].step()

            e = torch.randn_like(x)
            t = torch.rand(b, 1, device=obs.device)
            r = t * torch.rand(b, 1, device=obs.device)
            z, v = (1 - t) * x + t * e, e - x
            u = self._u(actor, obs, z, r, t)
            with torch.no_grad():
                before = self._u(actor, obs, z - self.delta * v, r, t - self.delta)
            target = v - (t - r) * (u.detach() - before) / self.delta
            e_pi = torch.randn_like(x)
            a_pi = (e_pi - self._u(actor, obs, e_pi, zeros, ones)).clamp(-1, 1)
            q_pi = torch.stack([c(torch.cat([obs, a_pi], -1)) for c in critics]).mean(0)
            loss = (u - target).square().sum(-1).mean() - 0.03 * q_pi.mean() / q_pi.detach().abs().mean()
            agent["actor_opt"].zero_grad()
            loss.backward()
            agent["actor_opt"].step()
            with torch.no_grad():  # the reference logs an action MSE every step: one more actor pass
                e_log = torch.randn_like(x)
                _ = (
                    ((e_log - self._u(actor, obs, e_log, zeros, ones)).clamp(-1, 1) - x)
                    .square()
                    .mean()
                    .item()
                )
                for tp, p in zip(agent["target"].parameters(), critics.parameters(), strict=True):
                    tp.lerp_(p, 0.005)


def _build(spec: dict, device: torch.device):
    """The update function of one configuration."""
    torch.manual_seed(0)
    if spec["kind"] == "reference":
        return ReferenceStyleOM2P(spec["hidden"], device).update
    from training.algos.om2p import OM2P
    from training.config import TrainConfig
    from training.envs import env_spec

    config = TrainConfig(
        du_dt=spec["du_dt"],
        actor_hidden=spec["hidden"],
        critic_hidden=spec["hidden"],
        batch_size=spec["batch"],
        bf16_autocast=spec["bf16"],
        compile_update=spec.get("compile", False),
        device=spec["device"],
    )
    obs_mean, obs_std = torch.zeros(N_AGENTS, OBS_DIM), torch.ones(N_AGENTS, OBS_DIM)
    return OM2P(env_spec("cooperative_navigation"), config, obs_mean, obs_std).to(device).update


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _child(spec: dict) -> dict:
    """Peak memory of one configuration in a fresh process: two steps after one warm-up step, above the
    resident memory after warm-up (weights, optimizer state)."""
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    batch = _batch(spec["batch"], device)
    step = _build(spec, device)
    step(batch)  # optimizer state exists from here on: the peak that follows is the step's own memory
    _sync(device)
    baseline_rss = _reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        allocated_before = torch.cuda.memory_allocated(device)
    for _ in range(2):
        step(batch)
    _sync(device)
    result = {"peak_rss_increase_mb": _peak_rss_mb() - baseline_rss}
    if device.type == "cuda":
        result["peak_gpu_memory_mb"] = (torch.cuda.max_memory_allocated(device) - allocated_before) / 2**20
    return result


def time_configurations(
    configs: dict[str, dict], device: torch.device, batch_size: int, steps: int, rounds: int
):
    """Per-step time of every configuration, interleaved round by round in this process; the minimum over
    rounds is reported (on a shared machine, other load only ever adds time)."""
    from torch.utils.flop_counter import FlopCounterMode
    from tqdm import tqdm

    batch = _batch(batch_size, device)
    updates = {name: _build(spec, device) for name, spec in configs.items()}
    flops = {}
    for name, step in updates.items():
        step(batch)  # warm-up
        counter = FlopCounterMode(display=False)
        with counter:
            step(batch)
        flops[name] = counter.get_total_flops()
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in tqdm(range(rounds), desc="timing rounds"):
        for name, step in updates.items():
            _sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                step(batch)
            _sync(device)
            times[name].append((time.perf_counter() - start) / steps)
    results = {}
    for name in configs:
        seconds = min(times[name])
        results[name] = {
            "ms_per_step": seconds * 1e3,
            "ms_per_step_median": sorted(times[name])[len(times[name]) // 2] * 1e3,
            "steps_per_s": 1.0 / seconds,
            "matmul_gflop_per_step": flops[name] / 1e9,
            "achieved_gflop_s": flops[name] / seconds / 1e9,
        }
    return results


def _run_child(spec: dict) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.train_step", "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child {spec} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def matmul_rate(device: torch.device, dtype: torch.dtype, size: int = 1024, repeats: int = 10) -> float:
    """GFLOP/s of a square matmul at this precision, measured now (the roofline for the ratios)."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def batched_vs_loop(hidden: list[int], batch: int, device: torch.device, repeats: int = 20) -> dict:
    """Actor forward for all agents: one GroupedMLP pass vs N per-agent nn.Sequential passes."""
    from training.networks import GroupedMLP

    grouped = GroupedMLP(N_AGENTS, OBS_DIM + ACT_DIM + 2, hidden, ACT_DIM).to(device)
    loop = [
        GroupedMLP(1, OBS_DIM + ACT_DIM + 2, hidden, ACT_DIM).to(device) for _ in range(N_AGENTS)
    ]  # same kernels per agent, N launches per layer
    x = torch.randn(N_AGENTS, batch, OBS_DIM + ACT_DIM + 2, device=device)

    def timed(fn) -> float:
        with torch.no_grad():
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            for _ in range(repeats):
                fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        return (time.perf_counter() - start) / repeats * 1e3

    batched_ms = timed(lambda: grouped(x))
    loop_ms = timed(lambda: [net(x[i : i + 1]) for i, net in enumerate(loop)])
    return {"batch": batch, "batched_ms": batched_ms, "loop_ms": loop_ms, "speedup": loop_ms / batched_ms}


SIZES = {"paper": ([512, 512, 512, 512], 256), "grid": ([128, 128], 128)}
"""The paper's networks and batch, and the results grid's."""

LEVERS = {
    "fp32": {"bf16": False, "compile": False},
    "bf16_autocast": {"bf16": True, "compile": False},
    "compiled_fp32": {"bf16": False, "compile": True},
    "compiled_bf16_autocast": {"bf16": True, "compile": True},
}
"""Our update with each speed lever on its own and both together (`fd`, the default estimator)."""


def _pin(cores: set[int]) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)


def vs_peer(
    sizes: list[str],
    thread_counts: list[int],
    rounds: int,
    round_s: float,
    peer: dict | None,
    log=print,
    unavailable: str | None = None,
) -> dict:
    """Ours (each lever) and the official code at each size and thread count, interleaved round by round
    in one run; the median over rounds is reported. One thread: both pinned to one core (XLA's intra-op
    threading off); two threads: both cores."""
    from torch.utils.flop_counter import FlopCounterMode

    device = torch.device("cpu")
    all_cores = (
        os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    )
    out: dict = {"sizes": {}, "matmul_gflop_s": {}, "rounds": rounds}
    for threads in thread_counts:
        _pin(set(sorted(all_cores)[:threads]))
        torch.set_num_threads(threads)
        out["matmul_gflop_s"][str(threads)] = {
            "fp32": matmul_rate(device, torch.float32),
            "bf16": matmul_rate(device, torch.bfloat16),
        }
    for size in sizes:
        hidden, batch_size = SIZES[size]
        batch = _batch(batch_size, device)
        _pin(set(sorted(all_cores)[:1]))
        torch.set_num_threads(1)
        updates, warmup_s, flops = {}, {}, {}
        for lever, flags in LEVERS.items():
            spec = {
                "kind": "om2p",
                "du_dt": "fd",
                "hidden": hidden,
                "batch": batch_size,
                "device": "cpu",
                **flags,
            }
            updates[lever] = _build(spec, device)
            start = time.perf_counter()
            updates[lever](batch)  # for compiled levers: tracing and inductor's C++ build
            warmup_s[lever] = time.perf_counter() - start
            log(f"{size}: {lever} first step {warmup_s[lever]:.1f} s")
        counter = FlopCounterMode(display=False)
        with counter:
            _build(
                {
                    "kind": "om2p",
                    "du_dt": "fd",
                    "hidden": hidden,
                    "batch": batch_size,
                    "device": "cpu",
                    "bf16": False,
                },
                device,
            )(batch)
        flops = (
            counter.get_total_flops()
        )  # the first step's, which is every step's (no optimizer-state FLOPs counted)
        per_threads = {}
        for threads in thread_counts:
            cores = set(sorted(all_cores)[:threads])
            _pin(cores)
            torch.set_num_threads(threads)
            peer_step, peer_setup = None, None
            peer_error = None if peer is not None else unavailable
            if peer is not None:
                try:
                    peer_step = peer_om2p.PeerStep(
                        peer, hidden, batch_size, N_AGENTS, OBS_DIM, ACT_DIM, cores
                    )
                    peer_setup = peer_step.setup
                    log(f"{size}, {threads} thread(s): peer jit compile {peer_setup['compile_s']:.1f} s")
                except peer_om2p.PeerUnavailable as error:
                    peer_error = str(error)
            contenders: dict = dict(updates)
            if threads > 1:
                # The thread-setting lever: both cores available, one intra-op thread (small kernels do not
                # split well, and OpenMP barriers stall when another process holds the second core).
                best = "compiled_bf16_autocast"

                def one_thread(batch, step=updates[best], threads=threads):
                    torch.set_num_threads(1)
                    try:
                        return step(batch)
                    finally:
                        torch.set_num_threads(threads)

                contenders[f"{best}_1_thread"] = one_thread
                warmup_s[f"{best}_1_thread"] = warmup_s[best]
            estimates = {}
            for name, step in contenders.items():
                start = time.perf_counter()
                step(batch)
                estimates[name] = time.perf_counter() - start
            if peer_step is not None:
                estimates["official"] = peer_step.time(1)
            steps = {name: max(1, round(round_s / max(seconds, 1e-4))) for name, seconds in estimates.items()}
            times: dict[str, list[float]] = {name: [] for name in estimates}
            for _ in range(rounds):
                for name in estimates:
                    if name == "official":
                        times[name].append(peer_step.time(steps[name]))
                        continue
                    start = time.perf_counter()
                    for _ in range(steps[name]):
                        contenders[name](batch)
                    times[name].append((time.perf_counter() - start) / steps[name])
            if peer_step is not None:
                peer_step.close()
            rates = out["matmul_gflop_s"][str(threads)]
            rows = {}
            for name, samples in times.items():
                seconds = sorted(samples)[len(samples) // 2]
                row = {
                    "ms_per_step": seconds * 1e3,
                    "steps_per_s": 1.0 / seconds,
                    "rounds_ms": [x * 1e3 for x in samples],
                }
                if name != "official":
                    row["achieved_gflop_s"] = flops / seconds / 1e9
                    row["share_of_fp32_matmul_rate"] = row["achieved_gflop_s"] / rates["fp32"]
                    row["share_of_bf16_matmul_rate"] = row["achieved_gflop_s"] / rates["bf16"]
                    row["first_step_s"] = warmup_s[name]
                rows[name] = row
            if "official" in rows:
                for row in rows.values():
                    row["vs_official"] = row["steps_per_s"] / rows["official"]["steps_per_s"]
            per_threads[str(threads)] = {
                "configurations": rows,
                "steps_per_round": steps,
                "official_setup": peer_setup,
                "official_unavailable": peer_error,
            }
            log(
                f"{size}, {threads} thread(s): "
                + ", ".join(f"{name} {row['ms_per_step']:.1f} ms" for name, row in rows.items())
            )
        out["sizes"][size] = {
            "hidden": hidden,
            "batch": batch_size,
            "matmul_gflop_per_step": flops / 1e9,
            "threads": per_threads,
        }
    _pin(all_cores)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (minimum reported)")
    parser.add_argument("--hidden", default="512,512,512,512", help="hidden widths of actors and critics")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: the machine is shared)")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument(
        "--peer-repo",
        help="lizr16/OM2P git dir or work tree (default: $OM2P_PEER_REPO, then the local mirror)",
    )
    parser.add_argument("--no-peer", action="store_true", help="time ours only")
    parser.add_argument(
        "--sizes", default="paper,grid", help="sizes of the comparison with the official code"
    )
    parser.add_argument("--peer-threads", default="1,2", help="thread counts of the comparison")
    parser.add_argument("--peer-rounds", type=int, default=5, help="interleaved rounds (median reported)")
    parser.add_argument("--round-s", type=float, default=1.0, help="seconds per configuration and round")
    parser.add_argument(
        "--skip-estimators", action="store_true", help="only the comparison with the official code"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return 0

    device = torch.device(args.device)
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    report = {
        "benchmark": "train_step",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": args.device,
        "cpu_has_avx512_bf16": "avx512_bf16" in flags,
        "cpu_has_amx": "amx_bf16" in flags,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "threads": args.threads,
    }
    if device.type == "cpu" and args.sizes:
        peer = None
        if args.no_peer:
            report["official_unavailable"] = "--no-peer"
        else:
            try:
                peer = peer_om2p.prepare(args.peer_repo)
                report["official"] = peer
            except (peer_om2p.PeerUnavailable, OSError, subprocess.CalledProcessError) as error:
                report["official_unavailable"] = str(error)
                print(f"the official OM2P code cannot run here ({error}); timing ours only")
        report["vs_official"] = vs_peer(
            args.sizes.split(","),
            [int(x) for x in args.peer_threads.split(",")],
            args.peer_rounds,
            args.round_s,
            peer,
            unavailable=report.get("official_unavailable"),
        )
        torch.set_num_threads(args.threads)
    if not args.skip_estimators:
        report.update(estimators_section(args, device))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print("\n".join(comparison_lines(report)))
    for name, r in report.get("configurations", {}).items():
        print(
            f"{name:<30} {r['ms_per_step']:9.1f} ms/step  {r['steps_per_s']:6.2f} steps/s  "
            f"{r['achieved_gflop_s']:6.1f} GFLOP/s ({100 * r['fraction_of_fp32_matmul_rate']:4.0f}% of fp32 matmul)"
        )
    print(f"written to {out}")
    return 0


def comparison_lines(report: dict) -> list[str]:
    """The side-by-side table of ours (per lever) and the official code, as markdown."""
    section = report.get("vs_official")
    if not section:
        return []
    lines = [
        "| size | threads | configuration | ms / step | steps / s | vs official | GFLOP/s (share of fp32 / bf16 matmul) | first step s |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for size, entry in section["sizes"].items():
        label = f"{size} ({'x'.join(map(str, entry['hidden']))}, batch {entry['batch']})"
        for threads, result in entry["threads"].items():
            for name, row in result["configurations"].items():
                rate = (
                    f"{row['achieved_gflop_s']:.1f} ({row['share_of_fp32_matmul_rate']:.0%} / "
                    f"{row['share_of_bf16_matmul_rate']:.0%})"
                    if "achieved_gflop_s" in row
                    else "-"
                )
                first = (
                    f"{row['first_step_s']:.1f}"
                    if "first_step_s" in row
                    else (
                        f"{result['official_setup']['compile_s']:.1f}"
                        if result.get("official_setup")
                        else "-"
                    )
                )
                versus = f"{row['vs_official']:.2f}x" if "vs_official" in row else "-"
                lines.append(
                    f"| {label} | {threads} | {name} | {row['ms_per_step']:.1f} | {row['steps_per_s']:.2f} | "
                    f"{versus} | {rate} | {first} |"
                )
            if result.get("official_unavailable"):
                lines.append(
                    f"| {label} | {threads} | official: not run ({result['official_unavailable']}) | | | | | |"
                )
    return lines


def estimators_section(args, device: torch.device) -> dict:
    """`fd` vs `jvp` vs `zero`, bf16, the PyTorch re-creation of the reference's structure, agent batching:
    at `--hidden`/`--batch`, `--threads`, eager."""
    from tqdm import tqdm

    hidden = [int(x) for x in args.hidden.split(",")]
    torch.set_num_threads(args.threads)
    common = {"hidden": hidden, "batch": args.batch, "steps": args.steps, "device": args.device}
    common["threads"] = args.threads
    configs = {
        "om2p_fd_fp32": {"kind": "om2p", "du_dt": "fd", "bf16": False},
        "om2p_jvp_fp32": {"kind": "om2p", "du_dt": "jvp", "bf16": False},
        "om2p_zero_fp32": {"kind": "om2p", "du_dt": "zero", "bf16": False},
        "om2p_fd_bf16_autocast": {"kind": "om2p", "du_dt": "fd", "bf16": True},
        "reference_structure_fd_fp32": {"kind": "reference"},
    }
    rates = {
        "fp32": matmul_rate(device, torch.float32),
        "bf16": matmul_rate(device, torch.bfloat16),
    }
    full = {name: {**common, **spec} for name, spec in configs.items()}
    results = time_configurations(full, device, args.batch, args.steps, args.rounds)
    for name in tqdm(configs, desc="peak memory (one process each)"):
        results[name].update(_run_child(full[name]))
        results[name]["fraction_of_fp32_matmul_rate"] = results[name]["achieved_gflop_s"] / rates["fp32"]
        # Against the rate of the dtype the step's matmuls actually ran in.
        own_rate = rates["bf16"] if full[name].get("bf16") else rates["fp32"]
        results[name]["fraction_of_own_dtype_matmul_rate"] = results[name]["achieved_gflop_s"] / own_rate
    # Measured again after the children, to expose drift from other load on a shared machine.
    rates_after = {"fp32": matmul_rate(device, torch.float32), "bf16": matmul_rate(device, torch.bfloat16)}
    batching = [batched_vs_loop(hidden, b, device) for b in (1, 32, args.batch)]

    fd, jvp, ref = results["om2p_fd_fp32"], results["om2p_jvp_fp32"], results["reference_structure_fd_fp32"]
    memory_key = "peak_gpu_memory_mb" if device.type == "cuda" else "peak_rss_increase_mb"
    summary = {
        "fd_vs_jvp_speedup": jvp["ms_per_step"] / fd["ms_per_step"],
        "fd_vs_jvp_memory_ratio": jvp[memory_key] / max(fd[memory_key], 1e-9),
        "bf16_autocast_vs_fp32_speedup": fd["ms_per_step"] / results["om2p_fd_bf16_autocast"]["ms_per_step"],
        "vs_reference_structure_speedup": ref["ms_per_step"] / fd["ms_per_step"],
        "bf16_vs_reference_structure_speedup": ref["ms_per_step"]
        / results["om2p_fd_bf16_autocast"]["ms_per_step"],
        "agent_batched_vs_loop_forward_speedup": {str(b["batch"]): b["speedup"] for b in batching},
    }
    return {
        "sizes": {
            "agents": N_AGENTS,
            "obs_dim": OBS_DIM,
            "act_dim": ACT_DIM,
            "hidden": hidden,
            "batch": args.batch,
        },
        "matmul_gflop_s": rates,
        "matmul_gflop_s_after": rates_after,
        "configurations": results,
        "agent_batched_forward": batching,
        "summary": summary,
    }


if __name__ == "__main__":
    sys.exit(main())

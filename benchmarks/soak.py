"""Soak: `om2p serve` under open-loop load at a fraction of its capacity for a long time, with the errors
the server counted and the errors the load generator saw side by side, and the server's RSS over time.

    python -m benchmarks.soak                        # 10 minutes at 30% of the capacity measured first
    python -m benchmarks.soak --duration 60 --keep-alive-s 5 --plot soak.png

Capacity is the closed-loop throughput of 64 clients measured in the same run, so the load is a ratio, not
an absolute rate (this machine's rates move 2-3x between days). The run is split into windows that share
one connection pool, so idle pooled connections age as they would in one long run (the keep-alive race).
Capacity is that of 64 closed-loop clients, whose requests the batcher merges; an open-loop generator costs
more per request and shares the same two cores here, so 70% of it overloaded this machine (2026-12-02: the
warm-up window answered 3,830 of 4,916 req/s offered, then the queue filled). 30% (about 2,000 req/s, above
the 1,500 req/s of the soak that first showed the keep-alive race) is the default.
An extra first window at the same rate warms the server up (connections, allocator arenas): RSS growth is
counted from its end, errors on both sides from its start.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
from pathlib import Path

import numpy as np

from clients.loadgen import ConnectionPool, LoadResult, model_observations, run_load
from server.process import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "server" / "bundled" / "cooperative_navigation"
OUTCOMES = ("ok", "invalid", "rejected", "timeout", "cancelled", "error")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS")


def server_outcomes(url: str) -> dict[str, float]:
    """`om2p_requests_total` by outcome, read from the server's own /metrics."""
    import httpx

    counts = dict.fromkeys(OUTCOMES, 0.0)
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("om2p_requests_total{"):
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            counts[outcome] = counts.get(outcome, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


async def soak(
    server: ServerProcess,
    observations: np.ndarray,
    rate: float,
    duration_s: float,
    window_s: float,
    binary: bool,
) -> list[dict]:
    from tqdm import tqdm

    assert server.process is not None
    pool = ConnectionPool("127.0.0.1", server.port)
    windows: list[dict] = []
    n_windows = 1 + max(1, round(duration_s / window_s))  # the first one is the warm-up
    try:
        for index in tqdm(range(n_windows), desc=f"soak at {rate:.0f} req/s", unit="window"):
            result: LoadResult = await run_load(
                server.url,
                observations,
                window_s,
                rate=rate,
                binary=binary,
                warmup_s=0,
                seed=index,
                pool=pool,
            )
            summary = result.summary()
            windows.append(
                {
                    "window": index,
                    "warmup": index == 0,
                    "ok": summary["ok"],
                    "errors": summary["errors"],
                    "stale_dropped": summary["stale_dropped"],
                    "reconnects": summary["reconnects"],
                    "throughput_rps": summary["throughput_rps"],
                    "p50_ms": summary["latency_ms"]["p50"],
                    "p99_ms": summary["latency_ms"]["p99"],
                    "rss_mb": rss_mb(server.process.pid),
                }
            )
    finally:
        pool.close()
    return windows


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    windows = report["windows"]
    minutes = [w["window"] * report["window_s"] / 60 for w in windows]  # 0: the end of the warm-up
    figure, (rate_axis, rss_axis) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True)
    rate_axis.plot(minutes, [w["throughput_rps"] for w in windows], "o-", label="ok req/s")
    rate_axis.axhline(report["rate"], color="grey", linestyle="--", label="offered req/s")
    errors = [sum(w["errors"].values()) for w in windows]
    rate_axis.bar(minutes, errors, width=report["window_s"] / 90, color="tab:red", label="client errors")
    rate_axis.set_ylabel("requests/s, errors per window")
    rate_axis.legend(loc="lower right")
    rate_axis.grid(alpha=0.3)
    rss_axis.plot(minutes, [w["rss_mb"] for w in windows], "s-", color="tab:green")
    rss_axis.set_ylabel("server RSS (MB)")
    rss_axis.set_xlabel("minutes")
    rss_axis.grid(alpha=0.3)
    figure.suptitle(f"soak: {report['load_fraction']:.0%} of capacity, keep-alive {report['keep_alive_s']} s")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def markdown(report: dict) -> list[str]:
    """The soak section of docs/benchmarks.md (`make bench` includes the newest `soak.json`)."""
    client, server, rss = report["client"], report["server"], report["rss_mb"]

    def errors(counts: dict) -> str:
        return f"{sum(counts.values()):,}" + (
            f" ({', '.join(f'{k} {v}' for k, v in counts.items())})" if counts else ""
        )

    return [
        "## Soak: errors on both sides, memory",
        "",
        f"`python -m benchmarks.soak` ({report['date']}, {report['machine']}; load average at the end "
        f"{', '.join(f'{v:.1f}' for v in report['load_average_at_end'])}): `om2p serve` on the bundled policy, "
        f"keep-alive {report['keep_alive_s']:g} s, open loop ({report['protocol']}, Poisson arrivals) at "
        f"{report['rate']:,.0f} req/s = {report['load_fraction']:.0%} of the {report['capacity_rps']:,.0f} req/s "
        f"that 64 closed-loop clients reached just before, for {report['duration_s'] / 60:g} minutes after a "
        f"{report['window_s']:g} s warm-up window.",
        "",
        "| side | ok | errors |",
        "|---|---:|---:|",
        f"| server (`om2p_requests_total`) | {server['ok']:,} | {errors(server['errors'])} |",
        f"| load generator | {client['ok']:,} | {errors(client['errors'])} |",
        "",
        f"- Idle keep-alive connections the server closed: {client['stale_dropped']:,} dropped from the "
        f"generator's pool before reuse, {client['reconnects']:,} requests re-sent on a fresh connection "
        "because the server closed theirs as they went out. Neither is an error (docs/clients.md).",
        f"- Server RSS {rss['start']:.1f} MB after the warm-up window, {rss['end']:.1f} MB at the end: "
        f"**{rss['growth_pct']:+.1f}%** ({rss['before_warmup']:.1f} MB before the warm-up). Target: under 5%.",
        "",
        "![soak](img/soak.png)",
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=BUNDLED, help="model to serve [bundled policy]")
    parser.add_argument("--duration", type=float, default=600.0, help="soak length in seconds [600]")
    parser.add_argument("--load-fraction", type=float, default=0.3, help="offered load / capacity [0.3]")
    parser.add_argument("--capacity-s", type=float, default=5.0, help="closed-loop capacity run [5 s]")
    parser.add_argument("--window", type=float, default=30.0, help="seconds per recorded window [30]")
    parser.add_argument(
        "--keep-alive-s", type=float, default=None, help="server keep-alive timeout [the server's default]"
    )
    parser.add_argument("--binary", action="store_true", help="float32 bodies instead of JSON")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "soak.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "img" / "soak.png")
    args = parser.parse_args(argv)
    if not 0 < args.load_fraction <= 1 or args.duration <= 0 or args.window <= 0:
        parser.error("--load-fraction must be in (0, 1]; --duration and --window must be > 0")

    options = {} if args.keep_alive_s is None else {"keep_alive_s": args.keep_alive_s}
    try:
        server = ServerProcess(args.model, **options).start()
    except (RuntimeError, TimeoutError) as error:  # the server's own one-line reason ends its log
        lines = str(error).strip().splitlines()
        parser.exit(2, f"benchmarks.soak: the server did not start: {lines[-1] if lines else error}\n")
    try:
        assert server.process is not None
        observations = model_observations(server.url)
        capacity = asyncio.run(
            run_load(server.url, observations, args.capacity_s, concurrency=64, binary=args.binary)
        ).summary()
        rate = args.load_fraction * capacity["throughput_rps"]
        before, rss_before_warmup = server_outcomes(server.url), rss_mb(server.process.pid)
        windows = asyncio.run(soak(server, observations, rate, args.duration, args.window, args.binary))
        after = server_outcomes(server.url)
    finally:
        server.stop()

    served = {outcome: int(after[outcome] - before.get(outcome, 0.0)) for outcome in after}
    client_errors: dict[str, int] = {}
    for window in windows:
        for kind, count in window["errors"].items():
            client_errors[kind] = client_errors.get(kind, 0) + count
    rss_start, rss_end = windows[0]["rss_mb"], windows[-1]["rss_mb"]
    from server.settings import ServerSettings

    report = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_average_at_end": list(os.getloadavg()),
        "protocol": "binary" if args.binary else "json",
        "keep_alive_s": args.keep_alive_s or ServerSettings.model_fields["keep_alive_s"].default,
        "capacity_rps": capacity["throughput_rps"],
        "load_fraction": args.load_fraction,
        "rate": rate,
        "duration_s": args.duration,
        "window_s": args.window,
        "client": {
            "ok": sum(w["ok"] for w in windows),
            "errors": client_errors,
            "stale_dropped": sum(w["stale_dropped"] for w in windows),
            "reconnects": sum(w["reconnects"] for w in windows),
        },
        "server": {"ok": served.get("ok", 0), "errors": {k: v for k, v in served.items() if k != "ok" and v}},
        "rss_mb": {
            "before_warmup": rss_before_warmup,
            "start": rss_start,
            "end": rss_end,
            "growth_pct": 100 * (rss_end - rss_start) / rss_start,
        },
        "windows": windows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    plot(report, args.plot)
    client, server_side, rss = report["client"], report["server"], report["rss_mb"]
    print(
        f"soak {args.duration:.0f} s at {rate:.0f} req/s ({args.load_fraction:.0%} of {capacity['throughput_rps']:.0f})"
        f", keep-alive {report['keep_alive_s']} s\n"
        f"  server: ok {server_side['ok']}, errors {sum(server_side['errors'].values())} {server_side['errors']}\n"
        f"  client: ok {client['ok']}, errors {sum(client['errors'].values())} {client['errors']}; "
        f"idle connections the server closed: {client['stale_dropped']} dropped, {client['reconnects']} re-sent\n"
        f"  server RSS {rss['start']:.1f} MB after the warm-up window -> {rss['end']:.1f} MB at the end "
        f"({rss['growth_pct']:+.1f}%; {rss['before_warmup']:.1f} MB before it)\n"
        f"  wrote {args.json} and {args.plot}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

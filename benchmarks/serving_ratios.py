"""The two serving speed targets as ratios, on a noisy machine: interleaved wrk rounds against the raw ASGI
constant, several `om2p serve` source trees side by side (e.g. before and after a change), medians of the
per-round ratios. Needs wrk.

    python -m benchmarks.serving_ratios now=. before=/tmp/om2p-before --rounds 7

Each round runs, for every server, 2 s at 64 connections and 2 s at one connection, right after the raw
constant's own 2 s, so every ratio compares measurements taken seconds apart.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.serving import N_AGENTS, OBS_DIM
from server.process import REPOSITORY_ROOT, free_port
from server.synthetic import write_synthetic_repository

BODY = '{"observations": [' + ",".join(["[" + ",".join(["0.1"] * OBS_DIM) + "]"] * N_AGENTS) + "]}"


def wrk(url: str, connections: int, seconds: int, script: str) -> tuple[float, float]:
    """(requests/s, p50 us) of wrk posting the JSON /act body."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script, url + "/act"]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)\b", out)
    assert p50 is not None, out
    return rate, float(p50.group(1)) * {"us": 1.0, "ms": 1e3, "s": 1e6}[p50.group(2)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs="+", metavar="NAME=DIR", help="om2p source trees to serve from")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=int, default=2)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("serving_ratios: error: needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    trees = dict(tree.split("=", 1) for tree in args.trees)
    work = Path(tempfile.mkdtemp(prefix="om2p-ratios-"))
    model = write_synthetic_repository(work / "models", hidden=(256, 256))
    script = work / "act.lua"
    script.write_text(
        f"wrk.method = 'POST'\nwrk.body = '{BODY}'\nwrk.headers['Content-Type'] = 'application/json'\n"
    )
    processes, urls = [], {}

    def start(command: list[str], cwd: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(Path(cwd).resolve())}
        processes.append(subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL))

    try:
        raw_port = free_port()
        start([sys.executable, "-m", "uvicorn", "benchmarks.ceilings:raw_app", "--port", str(raw_port),
               "--log-level", "warning", "--no-access-log"], str(REPOSITORY_ROOT))  # fmt: skip
        for name, tree in trees.items():
            port = free_port()
            urls[name] = f"http://127.0.0.1:{port}"
            start([sys.executable, "-m", "om2p", "serve", "--model", str(model), "--port", str(port),
                   "--log-level", "warning"], tree)  # fmt: skip
        time.sleep(8)  # imports, model load and warm-up
        raw = f"http://127.0.0.1:{raw_port}"
        rates: dict[str, list[float]] = {name: [] for name in trees}
        p50s: dict[str, list[float]] = {name: [] for name in trees}
        raw_rates, raw_p50s = [], []
        for _ in range(args.rounds):
            raw_rate, _ = wrk(raw, 64, args.seconds, str(script))
            raw_rates.append(raw_rate)
            for name, url in urls.items():
                rates[name].append(wrk(url, 64, args.seconds, str(script))[0] / raw_rate)
            _, raw_p50 = wrk(raw, 1, args.seconds, str(script))
            raw_p50s.append(raw_p50)
            for name, url in urls.items():
                p50s[name].append(wrk(url, 1, args.seconds, str(script))[1] / raw_p50)
    finally:
        for process in processes:
            process.terminate()
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"raw ASGI constant: {statistics.median(raw_rates):.0f} req/s at 64 connections, "
        f"p50 {statistics.median(raw_p50s):.0f} us at one ({args.rounds} rounds)"
    )
    for name in trees:
        print(
            f"{name}: 64 connections {statistics.median(rates[name]):.2f} of the raw rate "
            f"(rounds {[round(r, 2) for r in rates[name]]}); one connection p50 "
            f"{statistics.median(p50s[name]):.2f}x the raw p50 (rounds {[round(r, 2) for r in p50s[name]]})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

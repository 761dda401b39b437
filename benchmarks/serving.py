"""Server overhead and throughput, all measured in one run on this machine with the same load generator:
/act vs a raw ASGI constant and a FastAPI constant; batching on vs off; JSON vs binary vs WebSocket;
wrk beside our generator; /act p50 at low load minus the raw ONNX Runtime call."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from clients.loadgen import run_load
from server.process import REPOSITORY_ROOT, ServerProcess, free_port
from server.synthetic import write_synthetic_repository

CLIENTS = 64
N_AGENTS, OBS_DIM = 3, 18


@contextlib.contextmanager
def ceiling_server(app: str) -> Iterator[str]:
    """`uvicorn benchmarks.ceilings:<app>` on loopback, single process like `om2p serve`."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", f"benchmarks.ceilings:{app}", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--log-level", "warning", "--no-access-log"]
    process = subprocess.Popen(command, cwd=REPOSITORY_ROOT)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(15)


@contextlib.contextmanager
def om2p_server(model: Path, **options: object) -> Iterator[str]:
    server = ServerProcess(model, **options).start()
    try:
        yield server.url
    finally:
        server.stop()


def closed(url: str, duration_s: float, binary: bool = True, clients: int = CLIENTS) -> dict:
    obs = np.random.default_rng(0).normal(size=(N_AGENTS, OBS_DIM)).astype(np.float32)
    return asyncio.run(run_load(url, obs, duration_s, concurrency=clients, binary=binary)).summary()


def low_load(url: str, duration_s: float, rate: float = 50.0) -> dict:
    obs = np.random.default_rng(0).normal(size=(N_AGENTS, OBS_DIM)).astype(np.float32)
    return asyncio.run(run_load(url, obs, duration_s, rate=rate, binary=True)).summary()


async def _websocket_load(url: str, duration_s: float, clients: int) -> dict:
    from websockets.asyncio.client import connect

    body = json.dumps({"observations": np.zeros((N_AGENTS, OBS_DIM)).tolist()})
    latencies: list[float] = []
    errors = 0
    end = time.perf_counter() + duration_s

    async def client() -> None:
        nonlocal errors
        async with connect(url.replace("http://", "ws://") + "/act/ws") as socket_:
            while time.perf_counter() < end:
                started = time.perf_counter()
                await socket_.send(body)
                answer = await socket_.recv()
                if '"error"' in answer:
                    errors += 1
                else:
                    latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(client() for _ in range(clients)))
    latency_ms = np.asarray(latencies) * 1e3
    return {
        "protocol": "websocket",
        "concurrency": clients,
        "ok": len(latencies),
        "errors": {"error": errors} if errors else {},
        "throughput_rps": len(latencies) / duration_s,
        "latency_ms": {
            key: float(np.percentile(latency_ms, q))
            for key, q in (("p50", 50), ("p90", 90), ("p99", 99), ("p99_9", 99.9))
        },
    }


def websocket_closed(url: str, duration_s: float) -> dict:
    return asyncio.run(_websocket_load(url, duration_s, CLIENTS))


def wrk(url: str, duration_s: float, clients: int = CLIENTS) -> dict | None:
    """wrk (Debian's, C, independent of our generator) posting the JSON /act body; None when absent."""
    binary = shutil.which("wrk")
    if binary is None:
        return None
    body = json.dumps({"observations": np.zeros((N_AGENTS, OBS_DIM)).tolist()})
    script = f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\nwrk.headers["Content-Type"] = "application/json"\n'
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    command = [
        binary,
        "-t1",
        f"-c{clients}",
        f"-d{max(1, round(duration_s))}s",
        "--latency",
        "-s",
        handle.name,
    ]
    output = subprocess.run([*command, url + "/act"], capture_output=True, text=True, check=False).stdout
    Path(handle.name).unlink(missing_ok=True)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", output)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", output)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    return {
        "throughput_rps": float(rate.group(1)) if rate else None,
        "p50_ms": float(p50.group(1)) * scale[p50.group(2)] if p50 else None,
        "p99_ms": float(p99.group(1)) * scale[p99.group(2)] if p99 else None,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
    }


def raw_onnx_call_us(model: Path, calls: int = 2000) -> float:
    """Median of single-row ONNX Runtime calls on the served model, the floor of `/act`'s latency."""
    from export.session import open_session

    session = open_session(model / "model.onnx")
    obs = np.zeros((1, N_AGENTS, OBS_DIM), np.float32)
    noise = np.zeros((1, N_AGENTS, 5), np.float32)
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        session.run(["actions"], {"obs": obs, "noise": noise})
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1e6)


def ratio(numerator: float, denominator: float) -> float:
    """A throughput ratio; NaN (printed as such) when the denominator served nothing in its window."""
    return numerator / denominator if denominator > 0 else float("nan")


def run(work_dir: Path, bundled: Path | None, duration_s: float = 3.0) -> dict:
    from tqdm import tqdm

    models = {
        "2x256": write_synthetic_repository(work_dir / "m256", name="mlp2x256", hidden=(256, 256)),
        "4x512": write_synthetic_repository(work_dir / "m512", name="mlp4x512", hidden=(512,) * 4),
    }
    if bundled is not None:
        models["bundled"] = bundled
    steps = ["ceilings", *[f"batching {name}" for name in models], "protocols", "overhead"]
    results: dict = {"clients": CLIENTS, "duration_s": duration_s}
    progress = tqdm(steps, desc="serving", unit="step")
    for step in progress:
        progress.set_postfix_str(step)
        if step == "ceilings":
            for app in ("raw_app", "fastapi_app"):
                with ceiling_server(app) as url:
                    results[app] = {
                        "ours": closed(url, duration_s, binary=False),
                        "wrk": wrk(url, duration_s),
                        # the denominator of /act's one-connection p50 target
                        "wrk_one_connection": wrk(url, duration_s, clients=1),
                    }
        elif step.startswith("batching"):
            name = step.split()[1]
            entry = {}
            for label, options in (("on", {}), ("off", {"max_batch_rows": 1})):
                with om2p_server(models[name], **options) as url:
                    entry[label] = closed(url, duration_s)
            entry["ratio"] = ratio(entry["on"]["throughput_rps"], entry["off"]["throughput_rps"])
            results[f"batching_{name}"] = entry
        elif step == "protocols":
            with om2p_server(models["2x256"]) as url:
                results["protocols"] = {
                    "json": closed(url, duration_s, binary=False),
                    "binary": closed(url, duration_s, binary=True),
                    "websocket": websocket_closed(url, duration_s),
                    "wrk_json": wrk(url, duration_s),
                }
        elif step == "overhead":
            with om2p_server(models["2x256"]) as url:
                low = low_load(url, duration_s)
                # Back-to-back requests on one keep-alive connection: the server's own latency, without
                # our Python client's wake-ups at a low open-loop rate.
                one_connection = wrk(url, duration_s, clients=1)
            raw_us = raw_onnx_call_us(models["2x256"])
            results["overhead"] = {
                "act_p50_low_load_us": low["latency_ms"]["p50"] * 1e3,
                "raw_onnxruntime_us": raw_us,
                "server_overhead_us": low["latency_ms"]["p50"] * 1e3 - raw_us,
                "low_load": low,
                "wrk_one_connection": one_connection,
            }
    # Same request bytes on both sides: the JSON /act body, from our generator and from wrk.
    act = results["protocols"]["json"]["throughput_rps"]
    results["act_vs_raw_asgi"] = ratio(act, results["raw_app"]["ours"]["throughput_rps"])
    results["act_vs_fastapi_constant"] = ratio(act, results["fastapi_app"]["ours"]["throughput_rps"])
    wrk_act, wrk_raw = results["protocols"]["wrk_json"], results["raw_app"]["wrk"]
    if wrk_act and wrk_raw and wrk_act["throughput_rps"] and wrk_raw["throughput_rps"]:
        results["act_vs_raw_asgi_wrk"] = ratio(wrk_act["throughput_rps"], wrk_raw["throughput_rps"])
    # Target: /act's p50 on one connection at most 3x the raw ASGI constant's, measured in this run.
    act_one, raw_one = results["overhead"]["wrk_one_connection"], results["raw_app"]["wrk_one_connection"]
    if act_one and raw_one and act_one["p50_ms"] and raw_one["p50_ms"]:
        results["act_p50_vs_raw_asgi_one_connection"] = ratio(act_one["p50_ms"], raw_one["p50_ms"])
    return results

"""The peer: the same ONNX model behind Ray Serve with `@serve.batch`, the same load generator, the same
machine, measured right after (never beside) `om2p serve`.

Ray is never a project dependency: it lives in a throwaway venv, `benchmarks/.ray-venv` (git-ignored),
created on first use with `python -m venv` + `pip install "ray[serve]" onnxruntime numpy`, or in an
existing interpreter named by `OM2P_RAY_PYTHON`. When neither works the peer is skipped, with the reason
returned and printed: `make bench` never fails because of Ray.

Reported: both servers at the same closed-loop concurrency (req/s, p50, p99), p99 at equal load (open loop
at a rate both sustain, a fraction of Ray's closed-loop rate) and our throughput at Ray's p99 (the best of
a few closed-loop points whose p99 stays at or under Ray's).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np

from benchmarks.serving import CLIENTS, N_AGENTS, OBS_DIM, closed, om2p_server, ratio
from clients.loadgen import run_load
from export.manifest import resolve_version_dir
from server.process import REPOSITORY_ROOT, free_port

VENV = REPOSITORY_ROOT / "benchmarks" / ".ray-venv"
APP = Path(__file__).resolve().with_name("ray_app.py")
REQUIREMENTS = ("ray[serve]==2.60.0", "onnxruntime", "numpy")
INSTALL_TIMEOUT_S = 1800.0
READY_TIMEOUT_S = 120.0  # Ray starts a GCS, a raylet, a controller, a proxy and a replica: slow on 2 cores
STOP_TIMEOUT_S = 30.0
# Ray's batching knobs. 64 = the client count, so one batch can hold every in-flight request. The wait is
# Ray's default: on this machine it beat 0 s and 5 ms (309 vs 242 and 275 req/s at 64 clients).
MAX_BATCH_SIZE = 64
BATCH_WAIT_TIMEOUT_S = 0.01
MAX_ONGOING_REQUESTS = 256  # Ray's default, 5, would cap every batch at 5 requests
# Of Ray's closed-loop rate: a load both servers sustain. Not 0.8: on this shared machine Ray's capacity
# moves by a third between points, and at 80% its open-loop p50 once reached 150 ms (queueing, not latency).
EQUAL_LOAD_FRACTION = 0.5
P99_SWEEP_CLIENTS = (CLIENTS, 256)  # our closed-loop points for "throughput at Ray's p99"
TARGET_RATIO = 20.0


class PeerUnavailable(Exception):
    """Ray Serve cannot be measured here; the message says why."""


def run(model: Path, duration_s: float = 3.0) -> dict:
    """Measure Ray Serve and `om2p serve` on `model`; `{"skipped": reason}` when Ray is unavailable."""
    try:
        return _measure(model, duration_s)
    except PeerUnavailable as error:
        return {"skipped": f"Ray Serve not measured: {error}"}
    except Exception as error:  # the peer is optional: any failure is recorded, never raised into make bench
        return {"skipped": f"Ray Serve not measured: {type(error).__name__}: {error}"}


def _measure(model: Path, duration_s: float) -> dict:
    version_dir = resolve_version_dir(model)
    python = ray_python()
    ray_version = _ray_version(python)
    if ray_version is None:
        raise PeerUnavailable(f"{python} cannot import ray.serve, onnxruntime and numpy")
    _log(f"ray peer: starting Ray Serve {ray_version} on {version_dir}")
    with ray_server(python, version_dir) as url:
        ray_closed = closed(url, duration_s, binary=False)
        rate = max(1.0, round(EQUAL_LOAD_FRACTION * ray_closed["throughput_rps"]))
        ray_open = open_loop(url, duration_s, rate)
    _log("ray peer: measuring om2p serve on the same model")
    with om2p_server(version_dir) as url:
        ours_closed = closed(url, duration_s, binary=False)
        ours_open = open_loop(url, duration_s, rate)
        sweep = [ours_closed] + [
            closed(url, duration_s, binary=False, clients=c) for c in P99_SWEEP_CLIENTS[1:]
        ]
    ray_p99 = ray_closed["latency_ms"]["p99"]
    throughput_ratio = ratio(ours_closed["throughput_rps"], ray_closed["throughput_rps"])
    lower_p99 = ours_closed["latency_ms"]["p99"] < ray_p99
    return {
        "ray_version": ray_version,
        "python": str(python),
        "model": str(version_dir),
        "protocol": "json",
        "clients": CLIENTS,
        "duration_s": duration_s,
        "ray_config": {
            "max_batch_size": MAX_BATCH_SIZE,
            "batch_wait_timeout_s": BATCH_WAIT_TIMEOUT_S,
            "max_ongoing_requests": MAX_ONGOING_REQUESTS,
            "num_replicas": 1,
            "intra_op_threads": 1,
        },
        "ray": {"closed": ray_closed, "open": ray_open},
        "ours": {
            "closed": ours_closed,
            "open": ours_open,
            "sweep": sweep,
            "at_ray_p99": at_p99(sweep, ray_p99),
        },
        "equal_load_rps": rate,
        "throughput_ratio": throughput_ratio,
        "p99_ratio": ratio(ray_p99, ours_closed["latency_ms"]["p99"]),
        "target": {
            "throughput_ratio": TARGET_RATIO,
            "lower_p99": True,
            "met": throughput_ratio >= TARGET_RATIO and lower_p99,
        },
    }


def open_loop(url: str, duration_s: float, rate: float) -> dict:
    """Poisson arrivals at `rate` with the JSON body, as `closed` sends it."""
    obs = np.random.default_rng(0).normal(size=(N_AGENTS, OBS_DIM)).astype(np.float32)
    return asyncio.run(run_load(url, obs, duration_s, rate=rate, binary=False)).summary()


def at_p99(sweep: list[dict], p99_ms: float) -> dict | None:
    """The highest-throughput error-free point whose p99 is at most `p99_ms` (None when none is)."""
    fitting = [s for s in sweep if not s["errors"] and (s["latency_ms"]["p99"] or float("inf")) <= p99_ms]
    return max(fitting, key=lambda s: s["throughput_rps"], default=None)


# --- the throwaway Ray interpreter ----------------------------------------------------------------------


def ray_python() -> Path:
    """`OM2P_RAY_PYTHON`, else `benchmarks/.ray-venv/bin/python`, created and installed on first use."""
    named = os.environ.get("OM2P_RAY_PYTHON")
    if named:
        if not Path(named).exists():
            raise PeerUnavailable(f"OM2P_RAY_PYTHON={named} does not exist")
        return Path(named)
    python = VENV / "bin" / "python"
    if not python.exists() or _ray_version(python) is None:
        _install(python)
    return python


def _ray_version(python: Path) -> str | None:
    probe = "import numpy, onnxruntime, ray, ray.serve; print(ray.__version__)"
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=False)
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def _install(python: Path) -> None:
    _log(f"ray peer: installing {' '.join(REQUIREMENTS)} into {VENV} (first use only, about 600 MB)")
    steps = [
        [sys.executable, "-m", "venv", str(VENV)],
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *REQUIREMENTS],
    ]
    for command in steps:
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired:
            raise PeerUnavailable(f"`{' '.join(command[:4])}` took over {INSTALL_TIMEOUT_S:g} s") from None
        if done.returncode != 0:
            raise PeerUnavailable(f"`{' '.join(command[:4])}` failed: {_last_error_line(done.stderr)}")


def _last_error_line(stderr: str) -> str:
    """pip's last ERROR line (its WARNING lines about extra indexes say nothing about the failure)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    return (errors or lines or ["no output"])[-1]


# --- the peer process -----------------------------------------------------------------------------------


@contextlib.contextmanager
def ray_server(python: Path, version_dir: Path) -> Iterator[str]:
    """`ray_app.py` on a free loopback port, in its own session; yields its URL once `POST /act` answers."""
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="om2p-ray-")  # Ray's session dir: short (unix socket paths), ours
    command = [str(python), str(APP), str(version_dir), "--port", str(port), "--temp-dir", temp_dir]
    command += ["--max-batch-size", str(MAX_BATCH_SIZE), "--batch-wait-timeout-s", str(BATCH_WAIT_TIMEOUT_S)]
    command += ["--max-ongoing-requests", str(MAX_ONGOING_REQUESTS)]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(
            command,
            cwd=REPOSITORY_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_ready(process, url, log)
            yield url
        finally:
            _stop(process)
            shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_ready(process: subprocess.Popen, url: str, log: IO[str]) -> None:
    body = json.dumps({"observations": np.zeros((N_AGENTS, OBS_DIM)).tolist()}).encode()
    request = urllib.request.Request(url + "/act", body, {"Content-Type": "application/json"})
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PeerUnavailable(f"ray_app.py exited with {process.returncode}: {_tail(log)}")
        with contextlib.suppress(OSError), urllib.request.urlopen(request, timeout=5) as response:
            if response.status == 200:  # URLError and HTTPError (503 while deploying) are OSErrors
                return
        time.sleep(0.5)
    raise PeerUnavailable(f"POST /act not 200 after {READY_TIMEOUT_S:g} s: {_tail(log)}")


def _tail(log: IO[str], lines: int = 3) -> str:
    log.flush()
    log.seek(0)
    kept = [line.strip() for line in log.read().splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) or "no output"


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM (the app shuts Serve and Ray down), then SIGKILL whatever is left of its session."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(STOP_TIMEOUT_S)
    # Ray's actors run in process groups of their own but stay in the session we started, so the session
    # id finds exactly the processes this peer started, and nothing else.
    for pid in _session_members(process.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    if process.poll() is None:
        process.wait(5)


def _session_members(session: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.getsid(int(entry)) == session:
                    members.append(int(entry))
    return members


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)

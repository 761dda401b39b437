"""Operations against a real `om2p serve`: readiness, overload, deadlines, disconnects, SIGTERM, reloads,
the CLI's refusals, and the torch-free serving path."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from server.process import REPOSITORY_ROOT, ServerProcess, free_port, run_cli
from server.settings import BUNDLED_MODEL_DIR
from server.synthetic import reference_policy, write_synthetic_repository

N_AGENTS, OBS_DIM, ACT_DIM = 3, 18, 5
ONE = {"observations": [[0.1] * OBS_DIM] * N_AGENTS, "deterministic": True}


def metric(url: str, sample: str) -> float:
    """One sample's value from /metrics (0 when absent)."""
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


async def post_many(url: str, bodies: list[dict], timeout: float = 30) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as http:
        return await asyncio.gather(*(http.post("/act", json=body) for body in bodies))


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory) -> Path:
    """A 3 x 1024 actor: slow enough on CPU that warm-up and queues can be watched."""
    return write_synthetic_repository(tmp_path_factory.mktemp("slow"), hidden=(1024, 1024, 1024))


def test_not_ready_until_warmed_up(slow_model):
    server = ServerProcess(slow_model, max_batch_rows=256, warmup_runs=6)
    try:
        server.start(wait_ready=False).wait_for("/healthz")
        readiness = httpx.get(f"{server.url}/readyz")  # alive, but still warming up every batch bucket
        early_act = httpx.post(f"{server.url}/act", json=ONE)
        server.wait_for("/readyz")
        assert readiness.status_code == 503 and readiness.json()["ready"] is False
        assert "warming up" in readiness.json()["reason"]
        assert early_act.status_code == 503 and "retry-after" in early_act.headers
        assert httpx.post(f"{server.url}/act", json=ONE).status_code == 200
    finally:
        server.stop()


def test_overload_answers_503_with_retry_after_at_once(slow_model):
    # One row computing and one waiting at most: a burst of 120 must overflow on any machine.
    server = ServerProcess(slow_model, max_batch_rows=1, max_queue_rows=1, request_timeout_ms=20000)
    try:
        server.start()
        answers = asyncio.run(post_many(server.url, [ONE] * 120))
        statuses = [answer.status_code for answer in answers]
        assert set(statuses) == {200, 503}, statuses  # refused at once, never left to time out
        refused = [answer for answer in answers if answer.status_code == 503]
        assert all(
            int(answer.headers["retry-after"]) >= 1 and "queue full" in answer.json()["error"]
            for answer in refused
        )
        assert metric(server.url, 'om2p_requests_total{outcome="rejected"}') == len(refused)
        assert metric(server.url, "om2p_queue_capacity_rows") == 1
    finally:
        server.stop()


def test_deadline_504_and_disconnected_client_dropped_before_compute(model_repository):
    # Batches wait up to 300 ms to fill; deadlines are 100 ms: a lone request times out while waiting.
    server = ServerProcess(model_repository, max_delay_us=300_000, request_timeout_ms=100)
    try:
        server.start()
        late = httpx.post(f"{server.url}/act", json=ONE)
        assert late.status_code == 504 and "deadline" in late.json()["error"]
        assert metric(server.url, 'om2p_requests_total{outcome="timeout"}') == 1
        rows_before = metric(server.url, "om2p_batch_rows_sum")
        with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes its connection
            httpx.post(f"{server.url}/act", json={"observations": [ONE["observations"]] * 5}, timeout=0.03)
        deadline = time.monotonic() + 5
        while (
            metric(server.url, 'om2p_requests_total{outcome="cancelled"}') < 1 and time.monotonic() < deadline
        ):
            time.sleep(0.02)
        assert metric(server.url, 'om2p_requests_total{outcome="cancelled"}') == 1
        time.sleep(0.4)  # past the batch delay: the 5 rows would have been computed by now
        assert metric(server.url, "om2p_batch_rows_sum") == rows_before
    finally:
        server.stop()


def test_sigterm_turns_not_ready_and_loses_no_accepted_request(model_repository):
    # Requests sit up to 5 s in the batcher (SIGTERM flushes them); 1 s of grace between not-ready and
    # closing the listener.
    server = ServerProcess(
        model_repository, max_delay_us=5_000_000, drain_grace_s=1.0, request_timeout_ms=20000
    )
    results: list[list[httpx.Response]] = []
    try:
        server.start()
        sender = threading.Thread(
            target=lambda: results.append(asyncio.run(post_many(server.url, [ONE] * 30)))
        )
        sender.start()
        deadline = time.monotonic() + 10
        while metric(server.url, "om2p_inflight_requests") < 30 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert metric(server.url, "om2p_inflight_requests") == 30
        server.terminate()
        time.sleep(0.1)
        readiness = httpx.get(f"{server.url}/readyz")
        alive = httpx.get(f"{server.url}/healthz")
        exit_code = server.wait(30)
        sender.join(30)
        assert readiness.status_code == 503 and readiness.json()["reason"] == "draining"
        assert alive.status_code == 200
        assert [answer.status_code for answer in results[0]] == [200] * 30
        assert exit_code == 0, server.log()
        assert server.status("/healthz") is None  # gone
    finally:
        server.stop()


def test_reload_swaps_versions_without_dropping_requests_and_keeps_the_old_on_failure(tmp_path):
    root = tmp_path / "models"
    write_synthetic_repository(root, hidden=(64, 64), seed=1)
    server = ServerProcess(root / "synthetic")
    stop = threading.Event()
    statuses: list[int] = []

    def hammer() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            while not stop.is_set():
                statuses.append(http.post("/act", json=ONE).status_code)

    try:
        server.start()
        load = threading.Thread(target=hammer)
        load.start()
        same = httpx.post(f"{server.url}/admin/reload").json()
        assert same["reloaded"] is False and same["model"]["version"] == 1

        broken = write_synthetic_repository(root, hidden=(64, 64), seed=2, version=2)
        (broken / "model.onnx").write_bytes(b"not an onnx graph")  # no longer matches its sha256
        failed = httpx.post(f"{server.url}/admin/reload")
        assert failed.status_code == 409 and "sha256" in failed.json()["error"], failed.text
        assert httpx.post(f"{server.url}/act", json=ONE).json()["version"] == 1

        shutil.rmtree(broken)
        good = write_synthetic_repository(root, hidden=(32, 32), seed=3, version=3)
        swapped = httpx.post(f"{server.url}/admin/reload")
        assert swapped.status_code == 200 and swapped.json()["previous_version"] == 1
        answer = httpx.post(f"{server.url}/act", json=ONE).json()
        stop.set()
        load.join(10)
        assert answer["version"] == 3
        obs = np.asarray(ONE["observations"], np.float32)[None]
        expected = reference_policy(good)(obs, np.zeros((1, N_AGENTS, ACT_DIM), np.float32))[0]
        np.testing.assert_allclose(answer["actions"], expected, atol=1e-5)
        assert (
            metric(
                server.url,
                'om2p_model_info{act_dim="5",agents="3",backend="onnxruntime",name="synthetic",obs_dim="18",version="3"}',
            )
            == 1
        )
        assert len(statuses) > 0 and set(statuses) == {200}  # nothing dropped across the swaps
    finally:
        stop.set()
        server.stop()


def test_watched_model_directory_loads_a_new_version(tmp_path):
    root = tmp_path / "models"
    write_synthetic_repository(root, hidden=(32, 32))
    server = ServerProcess(root, watch_interval_s=0.2)
    try:
        server.start()
        write_synthetic_repository(root, hidden=(32, 32), seed=5, version=2)
        deadline = time.monotonic() + 20
        while httpx.get(f"{server.url}/v1/models").json()["models"][0]["version"] != 2:
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)
        assert httpx.post(f"{server.url}/act", json=ONE).json()["version"] == 2
    finally:
        server.stop()


def test_cli_refuses_bad_models_and_unaggregated_workers_in_one_line(model_repository, tmp_path):
    missing = run_cli("serve", "--model", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "nowhere" in missing.stderr and "Traceback" not in missing.stderr
    corrupt = tmp_path / "corrupt"
    shutil.copytree(model_repository, corrupt)
    (corrupt / "1" / "model.onnx").write_bytes(b"tampered")
    tampered = run_cli("serve", "--model", str(corrupt))
    assert (
        tampered.returncode == 2
        and "sha256" in tampered.stderr
        and len(tampered.stderr.strip().splitlines()) == 1
    )
    unloadable = tmp_path / "unloadable"
    write_synthetic_repository(unloadable, hidden=(8,))
    version_dir = unloadable / "synthetic" / "1"
    (version_dir / "model.onnx").write_bytes(
        b"not a graph"
    )  # with a matching hash: it passes the manifest check
    manifest = json.loads((version_dir / "manifest.json").read_text())
    manifest["files"][0].update(sha256=hashlib.sha256(b"not a graph").hexdigest(), bytes=11)
    (version_dir / "manifest.json").write_text(json.dumps(manifest))
    failed = run_cli("serve", "--model", str(version_dir), "--port", str(free_port()))
    assert failed.returncode == 2 and "cannot load the model" in failed.stderr.splitlines()[-1]
    bad_option = run_cli("serve", "--model", str(model_repository), "--max-batch-rows", "0")
    assert bad_option.returncode == 2 and "--max-batch-rows" in bad_option.stderr
    env = {"PROMETHEUS_MULTIPROC_DIR": ""}
    workers = run_cli("serve", "--model", str(model_repository), "--workers", "2", env=env)
    assert workers.returncode == 2 and "PROMETHEUS_MULTIPROC_DIR" in workers.stderr
    from_env = run_cli("serve", "--model", str(model_repository), env={"OM2P_MAX_QUEUE_ROWS": "-5"})
    assert from_env.returncode == 2 and "OM2P_MAX_QUEUE_ROWS" in from_env.stderr


def test_serve_without_model_uses_the_bundled_policy_or_says_how_to_get_one():
    if not BUNDLED_MODEL_DIR.is_dir():
        result = run_cli("serve", "--port", "1")
        assert result.returncode == 2 and "bundled" in result.stderr and "--model" in result.stderr
        return
    server = ServerProcess(None)
    try:
        server.start()
        model = httpx.get(f"{server.url}/v1/models").json()["models"][0]
        assert model["env"] == "cooperative_navigation"
    finally:
        server.stop()


def test_serving_path_never_imports_torch(model_repository):
    program = f"""
import asyncio, sys
from om2p.cli import build_parser
build_parser()
from server.app import create_app
from server.settings import ServerSettings
app = create_app(ServerSettings(model={str(model_repository)!r}))
async def main():
    await app.service.start()
    runtime = app.service.runtime
    pending = app.service.submit(runtime, __import__("numpy").zeros((1, 3, 18), "float32"), __import__("server.validation").validation.ActOptions(True))
    await pending.future
    await app.service.stop()
asyncio.run(main())
print("torch" in sys.modules)
"""
    result = subprocess.run(
        [sys.executable, "-c", program], cwd=REPOSITORY_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"
    assert re.search(r"\btorch\b", (REPOSITORY_ROOT / "server" / "app.py").read_text()) is None


def test_several_workers_aggregate_their_metrics(model_repository, tmp_path):
    directory = tmp_path / "prometheus"
    directory.mkdir()
    server = ServerProcess(model_repository, workers=2, env={"PROMETHEUS_MULTIPROC_DIR": str(directory)})
    try:
        server.start()
        answers = asyncio.run(post_many(server.url, [ONE] * 40))
        assert [answer.status_code for answer in answers] == [200] * 40
        # Whichever worker answers the scrape, the counts are those of both workers together.
        scrapes = [metric(server.url, 'om2p_requests_total{outcome="ok"}') for _ in range(6)]
        assert scrapes == [40.0] * 6
        assert metric(server.url, "om2p_queue_capacity_rows") == 2 * 4096
    finally:
        server.stop()

"""Shared pieces of the deployment tests: a real `om2p serve` on a synthetic policy, a bounded load generator,
external binaries (promtool, prometheus, chromium) and a minimal DevTools-protocol client for headless
Chromium."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS_DIR = REPOSITORY_ROOT / "test-artifacts"

# Chromium without anything that reaches out of the machine (updates, sync, QUIC probes, first-run pages).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)


def require_binary(name: str) -> str:
    """The binary's path, or skip: CI installs it with apt (`.ci/run`), a bare laptop may not have it."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"`{name}` is not installed (Debian package installed by .ci/run)")
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return require_binary("promtool")


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    return require_binary("prometheus")


# --- a real server under load ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def synthetic_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from server.synthetic import write_synthetic_repository

    return write_synthetic_repository(tmp_path_factory.mktemp("models"), name="synthetic", hidden=(64, 64))


@pytest.fixture(scope="session")
def om2p_server(synthetic_model: Path) -> Iterator[str]:
    """One real `om2p serve` shared by the live tests; yields its base URL."""
    from server.process import run_server

    with run_server(synthetic_model) as url:
        yield url


@dataclass
class ActLoad:
    """Closed-loop /act traffic from a few threads, bounded in time, with a sprinkle of invalid requests so
    that the non-ok outcome series exist. Stops by itself after `max_seconds`."""

    url: str
    n_agents: int = 3
    obs_dim: int = 18
    workers: int = 4
    max_seconds: float = 90.0
    invalid_every: int = 25
    sent: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _worker(self, index: int) -> None:
        rng = np.random.default_rng(index)
        deadline = time.monotonic() + self.max_seconds
        with httpx.Client(base_url=self.url, timeout=10.0) as client:
            for count in itertools.count():
                if self._stop.is_set() or time.monotonic() > deadline:
                    return
                if count % self.invalid_every == self.invalid_every - 1:
                    body = {"observations": [[0.0] * (self.obs_dim + 1)] * self.n_agents}  # wrong obs_dim
                else:
                    # Some requests carry a batch of environments, so the batcher sees varied row counts.
                    batch = int(rng.integers(1, 5))
                    body = {"observations": rng.normal(size=(batch, self.n_agents, self.obs_dim)).tolist()}
                try:
                    if count % 2 and "observations" in body:  # every other request on the binary protocol
                        observations = np.asarray(body["observations"], dtype="<f4")
                        response = client.post(
                            "/act",
                            content=observations.tobytes(),
                            headers={
                                "Content-Type": "application/octet-stream",
                                "X-Shape": ",".join(map(str, observations.shape)),
                            },
                        )
                    else:
                        response = client.post("/act", json=body)
                    if response.status_code >= 500:
                        self.failures.append(f"{response.status_code} {response.text[:200]}")
                except httpx.HTTPError as error:
                    self.failures.append(repr(error))
                with self._lock:
                    self.sent += 1

    def __enter__(self) -> ActLoad:
        for index in range(self.workers):
            thread = threading.Thread(target=self._worker, args=(index,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """`test-artifacts/` at the repository root (gitignored): screenshots people look at after a run."""
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    return ARTIFACTS_DIR


@pytest.fixture(scope="session")
def act_load(om2p_server: str):
    """`act_load(**options)` makes an `ActLoad` against the shared server; use it as a context manager."""
    return lambda **options: ActLoad(om2p_server, **options)


@pytest.fixture(scope="session")
def poll_until():
    """`poll_until(predicate, timeout_s, what=...)`: see `wait_for`."""
    return wait_for


def wait_for(predicate, timeout_s: float, interval_s: float = 0.25, what: str = "condition"):
    """Poll `predicate()` until it returns something truthy; return it, or fail naming `what`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


# --- headless Chromium over the DevTools protocol -------------------------------------------------------


class DevToolsPage:
    """One page of a headless Chromium, driven over the DevTools protocol with `websockets`."""

    def __init__(self, websocket_url: str):
        from websockets.sync.client import connect

        self._connection = contextlib.ExitStack()
        self._socket = self._connection.enter_context(
            connect(websocket_url, max_size=64 * 2**20, open_timeout=20)
        )
        self._ids = itertools.count(1)
        self.console: list[str] = []
        self.exceptions: list[str] = []
        self.requests: list[str] = []  # URLs the page asked for, once the Network domain is enabled

    def call(self, method: str, timeout_s: float = 30.0, **params: object) -> dict:
        message_id = next(self._ids)
        self._socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout_s
        while True:
            message = json.loads(self._socket.recv(timeout=max(deadline - time.monotonic(), 0.01)))
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self._on_event(message)

    def _on_event(self, message: dict) -> None:
        method = message.get("method")
        if method == "Network.requestWillBeSent":
            self.requests.append(message["params"]["request"]["url"])
        elif method == "Runtime.consoleAPICalled":
            args = message["params"].get("args", [])
            self.console.append(" ".join(str(arg.get("value", arg.get("description", ""))) for arg in args))
        elif method == "Runtime.exceptionThrown":
            details = message["params"]["exceptionDetails"]
            self.exceptions.append(details.get("exception", {}).get("description", details.get("text", "")))

    def evaluate(self, expression: str) -> object:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        self._connection.close()


@pytest.fixture()
def browser_page(chromium: subprocess.Popen) -> Iterator[DevToolsPage]:
    """A fresh page of a headless Chromium, driven over the DevTools protocol."""
    page = open_page(chromium)
    try:
        yield page
    finally:
        page.close()


@pytest.fixture()
def chromium() -> Iterator[subprocess.Popen]:
    """A headless Chromium with a DevTools port on loopback, its own throw-away profile."""
    binary = require_binary("chromium")
    profile = Path(tempfile.mkdtemp(prefix="om2p-chromium-"))
    process = subprocess.Popen(
        [
            binary,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "--window-size=1280,900",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "HOME": str(profile)},
    )
    process.profile = profile  # type: ignore[attr-defined]
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(profile, ignore_errors=True)


def open_page(chromium: subprocess.Popen) -> DevToolsPage:
    """Attach to the browser's first page; the DevTools port is read from the profile (port 0 = any free)."""
    port_file = chromium.profile / "DevToolsActivePort"  # type: ignore[attr-defined]
    port = wait_for(
        lambda: port_file.exists() and port_file.read_text().split("\n")[0].strip(),
        timeout_s=30,
        what="Chromium's DevTools port",
    )

    def page_url() -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as response:
                targets = json.load(response)
        except OSError:
            return None
        return next((t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page"), None)

    page = DevToolsPage(wait_for(page_url, timeout_s=30, what="a Chromium page target"))
    page.call("Runtime.enable")
    page.call("Page.enable")
    page.call("Network.enable")
    return page

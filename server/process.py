"""Real `om2p serve` processes for tests and benchmarks: `ServerProcess` (start, wait until ready, SIGTERM,
log) and `run_server`, a context manager yielding the base URL.

    with run_server(version_dir, max_delay_us=500) as url:                 # real uvicorn on 127.0.0.1
        httpx.post(f"{url}/act", json={"observations": [[0.0] * 18] * 3})
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess:
    """`python -m om2p ARGS` from the repository root, output captured: how tests and benchmarks meet the CLI
    the way a user does (exit status, one-line errors)."""
    return subprocess.run(
        [sys.executable, "-m", "om2p", *args],
        cwd=REPOSITORY_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`om2p serve` in a subprocess on 127.0.0.1; `start()` returns once `/readyz` answers 200.

    Options are `om2p serve` flags with underscores: `ServerProcess(model, max_delay_us=500, api_key="k")`;
    `True` passes a bare flag. `env` adds environment variables (e.g. `OM2P_*`). The log is in `log_path`.
    """

    def __init__(self, model: Path | str | None, env: dict[str, str] | None = None, **options: object):
        self.port = int(options.pop("port", 0)) or free_port()  # type: ignore[call-overload]
        self.workers = int(options.get("workers") or 1)  # type: ignore[call-overload]
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [
            sys.executable,
            "-m",
            "om2p",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        if model is not None:
            self.command += ["--model", str(model)]
        for key, value in options.items():
            flag = "--" + key.replace("_", "-")
            if value is True:
                self.command.append(flag)
            elif value is not None and value is not False:
                self.command += [flag, str(value)]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.process: subprocess.Popen | None = None
        # Kept open for the life of the server process (its stdout and stderr); closed in stop().
        self._log = tempfile.NamedTemporaryFile(prefix="om2p-serve-", suffix=".log", delete=False)  # noqa: SIM115
        self.log_path = Path(self._log.name)

    def start(self, timeout_s: float = 60.0, wait_ready: bool = True) -> ServerProcess:
        """Start the process; with `wait_ready`, return once `/readyz` answers 200."""
        self.process = subprocess.Popen(
            self.command, cwd=REPOSITORY_ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )
        if wait_ready:
            # Each probe is a new connection, which any worker may accept: with several workers, one 200
            # can come from the first worker up while another still loads its model and answers 503.
            consecutive = 1 if self.workers == 1 else 20 * self.workers
            self.wait_for("/readyz", timeout_s, consecutive=consecutive)
            if self.workers > 1:
                self._wait_for_every_worker(timeout_s)
        return self

    def _wait_for_every_worker(self, timeout_s: float) -> None:
        """A run of 200s can all come from the first worker up (a worker still importing accepts nothing),
        so also wait for each worker's "serving ..." line, logged once its model is loaded and warm. Skipped
        when the log level hides it."""
        level = (
            self.command[self.command.index("--log-level") + 1] if "--log-level" in self.command else "info"
        )
        if level not in ("info", "debug", "trace"):
            return
        deadline = time.monotonic() + timeout_s
        while len(re.findall(r"^(?:\w+:\s+)?serving ", self.log(), re.MULTILINE)) < self.workers:
            if time.monotonic() > deadline or self.process is None or self.process.poll() is not None:
                log = self.log()
                self.stop()
                raise TimeoutError(
                    f"om2p serve: fewer than {self.workers} workers loaded their model:\n{log}"
                )
            time.sleep(0.05)

    def wait_for(self, path: str = "/readyz", timeout_s: float = 60.0, consecutive: int = 1) -> ServerProcess:
        """Poll `GET path` until it answers 200 `consecutive` times in a row; raises with the server's log if
        it exits or times out."""
        assert self.process is not None, "start() first"
        deadline = time.monotonic() + timeout_s
        streak = 0
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"om2p serve exited with {self.process.returncode}:\n{self.log()}")
            streak = streak + 1 if self.status(path) == 200 else 0
            if streak >= consecutive:
                return self
            if streak == 0:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"om2p serve: {path} not 200 after {timeout_s} s:\n{self.log()}")

    def status(self, path: str) -> int | None:
        """HTTP status of `GET path`, or None when nothing answers."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=2) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code
        except OSError:
            return None

    def terminate(self) -> None:
        """SIGTERM: the server turns not-ready, drains accepted requests and exits."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float = 30.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout_s)

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.process is None:
            return
        self.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()
        self.log_path.unlink(missing_ok=True)

    def log(self) -> str:
        """The server's output so far (empty once stopped: the log is removed then)."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextlib.contextmanager
def run_server(
    model: Path | str | None, env: dict[str, str] | None = None, **options: object
) -> Iterator[str]:
    """A real `om2p serve` on a free loopback port for the duration of the block; yields its base URL."""
    server = ServerProcess(model, env=env, **options)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()

"""Schemathesis against a real `om2p serve`, following the OpenAPI schema the server publishes (with the
served model's shapes): every check (server errors, schema conformance of the answers, documented status
codes and content types, schema-valid requests accepted, schema-violating requests refused) passes, and the
generated requests include successful inferences, not only refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from server.process import ServerProcess

pytest.importorskip("schemathesis", reason="schemathesis is a dev dependency (pip install -e '.[dev]')")

API_KEY = "schemathesis-key"
# A bounded run: 25 examples per operation and phase, one fixed seed (about 800 requests, seconds on 2 cores).
EXAMPLES, SEED = 25, 0


def outcome_count(url: str, outcome: str) -> float:
    sample = f'om2p_requests_total{{outcome="{outcome}"}} '
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(sample):
            return float(line.split()[-1])
    return 0.0


def test_schemathesis_finds_no_server_error_and_no_schema_violation(model_repository: Path, tmp_path: Path):
    server = ServerProcess(model_repository, api_key=API_KEY, max_batch_rows=64)
    try:
        server.start()
        command = [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{server.url}/openapi.json",
            "--header",
            f"X-API-Key: {API_KEY}",
            "--checks",
            "all",
            "--max-examples",
            str(EXAMPLES),
            "--seed",
            str(SEED),
            "--generation-database",
            "none",
        ]
        # cwd: schemathesis writes a cache directory where it runs
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
        assert "No issues found" in result.stdout
        assert outcome_count(server.url, "ok") > 0  # the schema lets a generator build real inferences
        assert outcome_count(server.url, "error") == 0
        assert "Traceback" not in server.log()
    finally:
        server.stop()

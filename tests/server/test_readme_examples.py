"""The README's curl examples for `/act` and KServe v2 run as printed against the bundled policy, with the
README's one `PORT` variable set to the test server's port; no other example hard-codes a port."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from server.process import REPOSITORY_ROOT, ServerProcess

README = REPOSITORY_ROOT / "README.md"


def readme_curls() -> dict[str, str]:
    """`{path: command}` of every `curl -s localhost:$PORT/...` block in the README (up to the closing `'`)."""
    commands = re.findall(
        r"^(curl -s localhost:\$PORT(/\S+) .*?}'\s*)$", README.read_text(), flags=re.M | re.S
    )
    return {path: command for command, path in commands}


@pytest.fixture(scope="module")
def bundled_server():
    process = ServerProcess(None)  # the bundled cooperative_navigation policy
    process.start()
    yield process
    process.stop()


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
@pytest.mark.parametrize("path", ["/act", "/v2/models/cooperative_navigation/infer"])
def test_readme_curl_works_as_printed(bundled_server, path):
    env = {**os.environ, "PORT": str(bundled_server.port)}
    answer = subprocess.run(
        ["bash", "-c", readme_curls()[path]], env=env, capture_output=True, text=True, timeout=30, check=True
    )
    body = json.loads(answer.stdout)
    actions = body["actions"] if path == "/act" else body["outputs"][0]["data"]
    assert len(actions) == (3 if path == "/act" else 15), body


def test_readme_examples_share_one_port_variable():
    """Outside the docker compose section (whose ports the compose file publishes), every example that
    talks to the server uses `$PORT`, which the README sets once."""
    text = README.read_text()
    before_deploy = text.split("## Deploy and monitor")[0]
    hard_coded = re.findall(r"(?:localhost|127\.0\.0\.1):\d+", before_deploy)
    assert hard_coded == [], hard_coded
    assert len(re.findall(r"^export PORT=\d+$", text, flags=re.M)) == 1
    assert "make serve PORT=$PORT" in text


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_serve_passes_port():
    plan = subprocess.run(
        ["make", "-n", "serve", "PORT=9123"], cwd=REPOSITORY_ROOT, capture_output=True, text=True, check=True
    )
    serve_line = [line for line in plan.stdout.splitlines() if " serve " in line][-1]
    assert "--port 9123" in serve_line

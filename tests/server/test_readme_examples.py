"""The README's curl examples for `/act` and KServe v2 run as printed against the bundled policy."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from server.process import REPOSITORY_ROOT, ServerProcess

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")


def readme_curls() -> dict[str, str]:
    """`{path: command}` of every `curl -s localhost:8000/...` block in the README (up to the closing `'`)."""
    text = (REPOSITORY_ROOT / "README.md").read_text()
    commands = re.findall(r"^(curl -s localhost:8000(/\S+) .*?}'\s*)$", text, flags=re.M | re.S)
    return {path: command for command, path in commands}


@pytest.fixture(scope="module")
def bundled_server():
    process = ServerProcess(None)  # the bundled cooperative_navigation policy
    process.start()
    yield process
    process.stop()


@pytest.mark.parametrize("path", ["/act", "/v2/models/cooperative_navigation/infer"])
def test_readme_curl_works_as_printed(bundled_server, path):
    command = readme_curls()[path].replace("localhost:8000", f"127.0.0.1:{bundled_server.port}")
    answer = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30, check=True)
    body = json.loads(answer.stdout)
    actions = body["actions"] if path == "/act" else body["outputs"][0]["data"]
    assert len(actions) == (3 if path == "/act" else 15), body

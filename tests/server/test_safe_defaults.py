"""Safe defaults against a real `om2p serve`: /admin beyond loopback needs the API key, keys are never empty
and compare as bytes (non-ASCII keys work), reload errors name no directory entries, and a port in use is
one line."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from server.process import ServerProcess, run_cli
from server.settings import ServerSettings

KEY = "clé-ключ-鍵"  # non-ASCII on purpose: clients send its UTF-8 bytes
OBS = {"observations": [[0.1] * 18] * 3, "deterministic": True}


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def keyed_server(model_repository: Path):
    process = ServerProcess(model_repository, api_key=KEY)
    process.start()
    yield process
    process.stop()


def test_beyond_loopback_without_a_key_refuses_to_start(model_repository):
    line = one_line_error(
        run_cli("serve", "--model", str(model_repository), "--host", "0.0.0.0", "--port", "0")
    )
    assert "--api-key" in line and "OM2P_API_KEY" in line and "--no-admin" in line and "0.0.0.0" in line
    from_env = run_cli("serve", "--model", str(model_repository), env={"OM2P_HOST": "::", "OM2P_PORT": "0"})
    assert "--api-key" in one_line_error(from_env)
    # What may start: a key, or no /admin at all; loopback stays open for local use.
    assert ServerSettings(host="0.0.0.0", api_key="k").exposure_problem() is None
    assert ServerSettings(host="0.0.0.0", admin=False).exposure_problem() is None
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert ServerSettings(host=host).exposure_problem() is None
    assert ServerSettings(host="my-host.example").exposure_problem() is not None  # a name may be anything


@pytest.mark.parametrize("key", ["", "   "], ids=["empty", "blank"])
def test_empty_keys_are_refused_at_start_up(model_repository, key):
    line = one_line_error(run_cli("serve", "--model", str(model_repository), "--api-key", key))
    assert "--api-key" in line and "empty" in line
    from_env = one_line_error(run_cli("serve", "--model", str(model_repository), env={"OM2P_API_KEY": key}))
    assert "OM2P_API_KEY" in from_env


def test_non_ascii_key_matches_as_utf8_bytes_everywhere(keyed_server):
    url, utf8 = keyed_server.url, KEY.encode()
    assert httpx.post(f"{url}/act", json=OBS, headers={"X-API-Key": utf8}).status_code == 200
    bearer = httpx.post(f"{url}/act", json=OBS, headers={"Authorization": b"Bearer " + utf8})
    assert bearer.status_code == 200
    infer = {"inputs": [{"name": "obs", "shape": [3, 18], "datatype": "FP32", "data": [0.1] * 54}]}
    v2 = httpx.post(f"{url}/v2/models/synthetic/infer", json=infer, headers={"X-API-Key": utf8})
    assert v2.status_code == 200, v2.text
    for wrong in (b"", b"cl\xe9", utf8[:-1], utf8 + b"x"):
        answer = httpx.post(f"{url}/act", json=OBS, headers={"X-API-Key": wrong})
        assert answer.status_code == 401 and answer.json()["field"] == "X-API-Key"
    assert httpx.post(f"{url}/act", json=OBS).status_code == 401
    assert httpx.post(f"{url}/admin/reload", headers={"X-API-Key": b"nope"}).status_code == 401


def test_websocket_takes_the_non_ascii_key_from_the_query(keyed_server):
    """Browsers cannot set WebSocket headers, so the key may come percent-encoded (UTF-8) in the query;
    the header path is the same function as HTTP's (`websockets` refuses non-ASCII header values)."""
    from urllib.parse import quote

    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    ws_url = f"ws://127.0.0.1:{keyed_server.port}/act/ws"
    with connect(f"{ws_url}?api_key={quote(KEY)}") as ws:
        ws.send('{"observations": ' + str(OBS["observations"]) + "}")
        assert "actions" in ws.recv(timeout=10)
    with pytest.raises(InvalidStatus), connect(f"{ws_url}?api_key={quote(KEY[:-1])}"):
        pass


def test_reload_errors_never_list_directories(keyed_server, tmp_path):
    for name in ("secret_alpha", "secret_beta"):
        (tmp_path / name).mkdir()
    headers = {"X-API-Key": KEY.encode()}
    for model in ("/", str(tmp_path), str(tmp_path / "nowhere")):
        answer = httpx.post(f"{keyed_server.url}/admin/reload", json={"model": model}, headers=headers)
        assert answer.status_code == 409, answer.text
        message = answer.json()["error"]
        assert answer.json()["field"] == "model" and model in message
        for listed in ("secret_alpha", "secret_beta", "'usr'", "'etc'", "found ["):
            assert listed not in message, message
    # ... and the server still serves the version it had.
    assert httpx.post(f"{keyed_server.url}/act", json=OBS, headers=headers).status_code == 200


def test_no_admin_serves_without_the_admin_routes(model_repository):
    process = ServerProcess(model_repository, no_admin=True)
    try:
        process.start()
        assert httpx.post(f"{process.url}/admin/reload").status_code == 404
        assert httpx.post(f"{process.url}/act", json=OBS).status_code == 200
        assert "/admin/reload" not in httpx.get(f"{process.url}/openapi.json").json()["paths"]
    finally:
        process.stop()


def test_port_in_use_is_one_line(model_repository):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line_error(run_cli("serve", "--model", str(model_repository), "--port", str(port)))
    assert f"--port {port}" in line and "already in use" in line

"""`POST /act` answered from the HTTP parser (server/protocols.py), past the ASGI request cycle, on a real
uvicorn on loopback: plain keep-alive requests take it, everything else takes the ASGI route, and both give
the same answers; pipelined requests are answered once each, in order, with their own actions; errors keep
their statuses and fields; `Connection: close` is honoured."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from server import act, protocols
from server.app import Om2pApp, create_app
from server.process import free_port
from server.settings import ServerSettings
from server.synthetic import write_synthetic_repository

OBS = [[0.1] * 18] * 3


class CountingApp:
    """The server's app, with the calls of its direct `/act` entry counted."""

    def __init__(self, app: Om2pApp) -> None:
        self.app, self.direct_calls = app, 0

    async def __call__(self, scope, receive, send) -> None:
        await self.app(scope, receive, send)

    def __getattr__(self, name: str):  # shed, refused_read_pause_s, ...
        return getattr(self.app, name)

    def direct_act(self, headers, body, hook, answer, only_connection=False) -> None:
        self.direct_calls += 1
        self.app.direct_act(headers, body, hook, answer, only_connection)


class QuietProtocol(protocols.BoundedHttpToolsProtocol):
    """As under `om2p serve`, without an access log: uvicorn logs a request when its access logger has a
    handler, and pytest's log capture gives it one (a logged request takes the ASGI route)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.access_log = False


@contextlib.contextmanager
def running(settings: ServerSettings, keep_alive_s: float = 5.0) -> Iterator[tuple[str, int, CountingApp]]:
    """A real uvicorn on loopback, in a thread, serving `settings` with our protocol classes."""
    app = CountingApp(create_app(settings))
    port = free_port()
    config = uvicorn.Config(
        app,
        port=port,
        http=QuietProtocol,
        lifespan="on",
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        timeout_keep_alive=keep_alive_s,
    )
    uvicorn_server = uvicorn.Server(config)
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    else:
        raise RuntimeError("the server did not become ready")
    try:
        yield url, port, app
    finally:
        uvicorn_server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_synthetic_repository(tmp_path_factory.mktemp("direct") / "models")


@pytest.fixture(scope="module")
def server(model) -> Iterator[tuple[str, int, CountingApp]]:
    with running(ServerSettings(model=str(model))) as served:
        yield served


def request(body: bytes, *extra: str) -> bytes:
    head = ["POST /act HTTP/1.1", "Host: test", "Content-Type: application/json", *extra]
    if not any(line.lower().startswith("transfer-encoding") for line in extra):
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def read_responses(sock: socket.socket, count: int) -> list[tuple[int, dict[str, str], dict]]:
    """`count` HTTP/1.1 responses with Content-Length bodies: (status, headers, JSON body)."""
    buffer, answers = b"", []
    while len(answers) < count:
        while b"\r\n\r\n" not in buffer:
            chunk = sock.recv(65536)
            assert chunk, "the server closed the connection"
            buffer += chunk
        head, buffer = buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:])
        length = int(headers["content-length"])
        while len(buffer) < length:
            buffer += sock.recv(65536)
        body, buffer = buffer[:length], buffer[length:]
        answers.append((int(lines[0].split()[1]), headers, json.loads(body)))
    return answers


def body_of(**fields) -> bytes:
    return json.dumps({"observations": OBS, "deterministic": True, **fields}).encode()


def test_plain_requests_are_answered_directly_and_equal_the_asgi_route(server):
    _, port, app = server
    before = app.direct_calls
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request(body_of(request_id="direct")))
        ((status, headers, direct),) = read_responses(sock, 1)
        assert app.direct_calls == before + 1
        # A chunked body takes the ASGI route, on the same connection.
        payload = body_of(request_id="asgi")
        chunked = f"{len(payload):x}\r\n".encode() + payload + b"\r\n0\r\n\r\n"
        sock.sendall(request(chunked, "Transfer-Encoding: chunked"))
        ((asgi_status, asgi_headers, asgi),) = read_responses(sock, 1)
    assert app.direct_calls == before + 1
    assert status == asgi_status == 200
    assert headers["content-type"] == asgi_headers["content-type"] == "application/json"
    assert "date" in headers and "date" in asgi_headers
    assert direct["actions"] == asgi["actions"]
    assert (direct["request_id"], asgi["request_id"]) == ("direct", "asgi")


def test_pipelined_requests_are_answered_once_each_in_order(server):
    _, port, _ = server
    ids = [f"req-{i}" for i in range(5)]
    bodies = [
        json.dumps({"observations": [[0.1 * i] * 18] * 3, "deterministic": True, "request_id": rid}).encode()
        for i, rid in enumerate(ids)
    ]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"".join(request(body) for body in bodies))  # one write: all pipelined
        answers = read_responses(sock, len(ids))
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(1)  # nothing more: each request was answered exactly once
    assert [answer["request_id"] for _, _, answer in answers] == ids
    assert all(status == 200 for status, _, _ in answers)
    assert answers[0][2]["actions"] != answers[1][2]["actions"]  # each its own observations


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b"{not json", 400, "body"),
        (json.dumps({"observations": [[0.1] * 17] * 3}).encode(), 422, "observations"),
        (json.dumps({"observations": OBS, "seed": -1}).encode(), 422, "seed"),
    ],
)
def test_bad_input_on_the_direct_path_keeps_its_status_and_field(server, body, status, field):
    _, port, app = server
    before = app.direct_calls
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request(body))
        ((got, headers, answer),) = read_responses(sock, 1)
        sock.sendall(request(body_of()))  # the connection still serves
        ((after, _, _),) = read_responses(sock, 1)
    assert (got, answer["field"], after) == (status, field, 200)
    assert headers["content-type"] == "application/json"
    assert app.direct_calls == before + 2


def test_an_answer_that_cannot_be_encoded_is_still_answered_once_with_a_500(server, monkeypatch):
    """The callback-driven path has no task to catch a failure: the last line of defence answers 500,
    once, and the connection goes on serving."""
    _, port, _ = server
    encode = act._encode
    failures = []

    def encode_failing_once(kind, reply):
        if not failures:
            failures.append(kind)
            raise RuntimeError("cannot encode")
        return encode(kind, reply)

    monkeypatch.setattr(act, "_encode", encode_failing_once)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request(body_of()))
        ((status, _, answer),) = read_responses(sock, 1)
        sock.sendall(request(body_of()))
        ((after, _, _),) = read_responses(sock, 1)
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(1)  # nothing more: one answer per request
    assert (status, answer["error"], after, failures) == (500, "internal error", 200, ["json"])


def test_connection_close_is_honoured(server):
    _, port, _ = server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request(body_of(), "Connection: close"))
        ((status, headers, _),) = read_responses(sock, 1)
        assert sock.recv(1) == b""  # closed by the server
    assert status == 200
    assert headers["connection"] == "close"


def test_expect_continue_and_http_1_0_take_the_asgi_route(server):
    url, port, app = server
    before = app.direct_calls
    answer = httpx.post(url + "/act", json={"observations": OBS}, headers={"Expect": "100-continue"})
    assert answer.status_code == 200
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        body = body_of()
        sock.sendall(
            b"POST /act HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        ((status, _, _),) = read_responses(sock, 1)
    assert status == 200
    assert app.direct_calls == before


def test_a_client_that_leaves_while_queued_has_its_rows_dropped_before_compute(model):
    # Batches wait up to 300 ms to fill: the request is still queued when its client closes the connection.
    with running(ServerSettings(model=str(model), max_delay_us=300_000)) as (url, port, app):
        before = app.direct_calls
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(request(json.dumps({"observations": [OBS] * 5}).encode()))
            time.sleep(0.05)
        time.sleep(0.5)  # past the batch delay: the 5 rows would have been computed by now
        metrics = httpx.get(url + "/metrics").text
    assert app.direct_calls == before + 1
    assert 'om2p_requests_total{outcome="cancelled"} 1.0' in metrics
    assert "om2p_batch_rows_sum 0.0" in metrics


def test_the_keep_alive_timeout_closes_idle_connections_only(model):
    """The keep-alive timer is armed once per idle spell: a connection that sends a request every 0.2 s
    outlives several 1 s timeouts, and one left idle is closed after about 1 s, as with uvicorn's own."""
    with (
        running(ServerSettings(model=str(model)), keep_alive_s=1.0) as (_, port, _),
        socket.create_connection(("127.0.0.1", port), timeout=10) as busy,
        socket.create_connection(("127.0.0.1", port), timeout=10) as idle,
    ):
        idle.sendall(request(body_of()))
        read_responses(idle, 1)
        idle_from, idle_closed_after = time.monotonic(), None
        idle.setblocking(False)
        for _ in range(16):  # 3.2 s: three timeouts' worth
            busy.sendall(request(body_of()))
            ((status, _, _),) = read_responses(busy, 1)
            assert status == 200
            time.sleep(0.2)
            if idle_closed_after is None:
                with contextlib.suppress(BlockingIOError):
                    assert idle.recv(1) == b""  # closed by the server
                    idle_closed_after = time.monotonic() - idle_from
    assert idle_closed_after is not None and 0.9 < idle_closed_after < 2.0

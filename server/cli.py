"""`om2p serve`: every option is generated from `ServerSettings`, so it is also an `OM2P_*` variable."""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import signal
import socket
import sys
import threading
import typing
from pathlib import Path

from om2p.errors import CommandError
from server.limits import MAX_HEADER_BYTES
from server.settings import ServerSettings

DESCRIPTION = """Serve a policy over HTTP: POST /act (JSON, msgpack, float32 octet-stream), WebSocket
/act/ws, KServe v2 under /v2, /healthz, /readyz, /metrics, /v1/models, POST /admin/reload. Every option can
also be set as an environment variable OM2P_<OPTION> (e.g. OM2P_MAX_BATCH_ROWS=512); flags win. With no
--model the bundled cooperative_navigation policy is served on ONNX Runtime."""


def _arg_type(annotation: object):
    """argparse type and choices for a settings field annotation."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    base = args[0]
    if typing.get_origin(base) is typing.Literal:
        return str, list(typing.get_args(base))
    if typing.get_origin(annotation) is typing.Literal:
        return str, list(typing.get_args(annotation))
    if base is bool:
        return None, None
    return base, None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve a policy over HTTP (dynamic batching, metrics)", description=DESCRIPTION
    )
    for name, field in ServerSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env = f"OM2P_{name.upper()}"
        default = field.default
        help_text = f"{field.description or name} [env {env}; default {default}]"
        kind, choices = _arg_type(field.annotation)
        if kind is None:  # booleans
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            parser.add_argument(flag, dest=name, type=kind, choices=choices, default=None, help=help_text)
    parser.set_defaults(handler=_serve)


def _settings(args: argparse.Namespace) -> ServerSettings:
    overrides = {
        name: getattr(args, name)
        for name in ServerSettings.model_fields
        if getattr(args, name, None) is not None
    }
    from pydantic import ValidationError

    try:
        return ServerSettings(**overrides)
    except ValidationError as error:
        first = error.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "settings"
        raise ValueError(f"--{name.replace('_', '-')} (or OM2P_{name.upper()}): {first['msg']}") from None


def _check_model(settings: ServerSettings) -> None:
    """Fail before binding a port, in one line, when the model cannot be served."""
    model_path = settings.model_path()
    if settings.backend == "torch":
        return
    from export.manifest import load_manifest, resolve_version_dir

    load_manifest(resolve_version_dir(model_path))


def _check_port(settings: ServerSettings) -> None:
    """Bind and release the address first, so a port in use is one line before the model loads (uvicorn
    would log it after loading, and exit 1). Same socket options as uvicorn's bind."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((settings.host, settings.port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise CommandError(
                    f"--port {settings.port}: address {settings.host}:{settings.port} is already in use "
                    "(another server?); choose another --port (OM2P_PORT) or stop the other process"
                ) from None
            reason = error.strerror or str(error)
            raise CommandError(
                f"--host {settings.host} --port {settings.port}: cannot bind: {reason}"
            ) from None


def _serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    problem = settings.exposure_problem()
    if problem is not None:
        raise CommandError(problem)
    _check_model(settings)
    _check_port(settings)
    import uvicorn

    loop = "uvloop" if _has("uvloop") else "asyncio"
    from server import protocols

    # Our subclasses bound request headers and answer bad WebSocket frames (server/protocols.py).
    http = protocols.BoundedHttpToolsProtocol if _has("httptools") else "h11"
    common = dict(
        host=settings.host,
        port=settings.port,
        loop=loop,
        http=http,
        lifespan="on",
        access_log=settings.access_log,
        log_level=settings.log_level,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
        timeout_keep_alive=settings.keep_alive_s,
        backlog=4096,
        ws_max_size=settings.max_body_bytes,
        ws=protocols.Utf8CheckingWebSocketProtocol,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        log_config=_log_config(settings.log_level),
        # Per-request work nobody reads: client address rewriting and the Server header.
        proxy_headers=False,
        server_header=False,
    )
    if settings.workers > 1:
        from server.metrics import multiprocess_dir

        directory = multiprocess_dir()
        if directory is None or not Path(directory).is_dir():
            raise CommandError(
                f"--workers {settings.workers}: each worker keeps its own metrics, so /metrics would show one "
                "worker at random; set PROMETHEUS_MULTIPROC_DIR to an empty directory (they aggregate there), "
                "or run one worker per container and let Prometheus aggregate"
            )
        # Files of an earlier run would be added to this one's counters (prometheus_client's advice: wipe).
        for stale in Path(directory).glob("*.db"):
            stale.unlink()
        # Workers are fresh processes: they read the settings back from OM2P_* variables.
        for name, value in settings.model_dump(exclude_none=True).items():
            os.environ[f"OM2P_{name.upper()}"] = str(value)
        os.environ["OM2P_MODEL"] = str(settings.model_path())
        uvicorn.run("server.app:app_from_env", factory=True, workers=settings.workers, **common)
        return 0

    from server.app import create_app

    fatal = threading.Event()
    server_box: list[uvicorn.Server] = []

    def on_fatal() -> None:
        fatal.set()
        if server_box:
            server_box[0].should_exit = True

    app = create_app(settings, on_fatal)
    server = DrainingServer(uvicorn.Config(app, **common), app.service, settings.drain_grace_s)
    server_box.append(server)
    # uvicorn re-raises the signal it caught once it has drained: exit 0 then, not "killed by SIGTERM".
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.run()
    if fatal.is_set():
        raise CommandError(f"cannot load the model: {app.service.load_error}")
    return 0


def _log_config(level: str) -> dict:
    """uvicorn's logging set-up plus the `om2p` loggers, so worker processes log the same way."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["om2p"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _draining_server_class():
    import uvicorn

    class _DrainingServer(uvicorn.Server):
        """SIGTERM: /readyz fails at once; after `grace_s` uvicorn stops accepting and drains in-flight
        requests, then the lifespan drains the batcher queue (Triton issues 6230, 6939)."""

        def __init__(self, config: uvicorn.Config, service, grace_s: float) -> None:
            super().__init__(config)
            self.service, self.grace_s, self._grace_started = service, grace_s, False

        def handle_exit(self, sig: int, frame) -> None:
            # A signal handler interrupts the event loop between bytecodes: hand the state change to the
            # loop instead of touching asyncio objects from here.
            try:
                asyncio.get_running_loop().call_soon_threadsafe(self.service.begin_drain)
            except RuntimeError:  # no loop running (yet)
                self.service.begin_drain()
            if self.grace_s > 0 and not self._grace_started:
                self._grace_started = True
                threading.Timer(self.grace_s, uvicorn.Server.handle_exit, (self, sig, frame)).start()
                return
            super().handle_exit(sig, frame)

    return _DrainingServer


def DrainingServer(config, service, grace_s: float):  # a class built lazily (uvicorn import)
    return _draining_server_class()(config, service, grace_s)

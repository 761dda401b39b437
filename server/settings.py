"""Server settings: every `om2p serve` option is also an `OM2P_*` environment variable."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

BUNDLED_MODEL_DIR = Path(__file__).resolve().parent / "bundled" / "cooperative_navigation"
Backend = Literal["onnxruntime", "tensorrt", "torch"]


class ServerSettings(BaseSettings):
    """Defaults favour latency at low load and batching under load (see docs/serving.md)."""

    model_config = SettingsConfigDict(env_prefix="OM2P_", extra="ignore")

    model: Path | None = Field(
        None,
        description="model version dir, model dir (newest version) or repository with one model; "
        "default: the bundled cooperative_navigation policy. For --backend torch: a training checkpoint dir",
    )
    backend: Backend = Field("onnxruntime", description="inference backend")
    host: str = Field("127.0.0.1", description="interface to bind (0.0.0.0 in containers)")
    port: int = Field(8000, ge=0, le=65535, description="TCP port")
    workers: int = Field(1, ge=1, description="uvicorn worker processes (>1 needs PROMETHEUS_MULTIPROC_DIR)")
    max_batch_rows: int = Field(256, ge=1, description="most rows (environments) in one forward pass")
    max_delay_us: int = Field(
        0, ge=0, description="longest wait for a batch to fill; 0 = run as soon as the compute thread is free"
    )
    max_queue_rows: int = Field(4096, ge=1, description="rows waiting before requests get 503 + Retry-After")
    refused_read_pause_ms: int = Field(
        100,
        ge=0,
        le=10_000,
        description="after a 503 for a full queue, the connection's next request waits this long before it is "
        "read (0 = at once): clients that resend at once cannot starve the batcher",
    )
    request_timeout_ms: int = Field(
        1000, ge=1, description="deadline from arrival; past it a request gets 504"
    )
    max_body_bytes: int = Field(4 << 20, ge=1024, description="larger request bodies get 413")
    api_key: str | None = Field(
        None,
        description="if set, /act, /v2 infer and /admin need it in X-API-Key (or Authorization: Bearer); "
        "required to serve /admin beyond loopback",
    )
    admin: bool = Field(True, description="serve POST /admin/reload (beyond loopback only with --api-key)")
    intra_op_threads: int = Field(
        1, ge=0, description="ONNX Runtime threads per forward pass (0 = all cores)"
    )
    warmup_runs: int = Field(3, ge=1, description="forward passes per batch-size bucket before ready")
    drain_grace_s: float = Field(
        0.0, ge=0, description="after SIGTERM: seconds to keep serving while /readyz fails, before draining"
    )
    keep_alive_s: float = Field(
        75.0,
        gt=0,
        description="close a keep-alive connection idle this long; keep it above the idle timeout of "
        "the load balancer or client pool in front (AWS ALB and nginx: 60 s), so they close first",
    )
    shutdown_timeout_s: float = Field(30.0, gt=0, description="longest drain of in-flight requests")
    watch_interval_s: float = Field(
        0.0, ge=0, description="poll the model directory for a new version every N s (0 = off)"
    )
    device: str = Field("auto", description="torch backend device: auto, cpu or cuda[:i]")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="log verbosity"
    )
    access_log: bool = Field(False, description="log every request (costs throughput)")

    @field_validator("api_key")
    @classmethod
    def _key_not_blank(cls, value: str | None) -> str | None:
        # An empty key would let an empty (or absent-but-defaulted) header through: refuse it outright.
        if value is not None and not value.strip():
            raise ValueError("an empty API key protects nothing; set a non-empty key or leave it unset")
        return value

    def loopback_only(self) -> bool:
        """Whether `host` accepts connections from this machine alone (a name other than localhost may
        resolve to anything, so it counts as reachable)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def exposure_problem(self) -> str | None:
        """Why these settings must not start (one line naming what to set), or None. /admin/reload loads
        any path the server can read: beyond loopback it needs the API key."""
        if self.admin and self.api_key is None and not self.loopback_only():
            return (
                f"--host {self.host} listens beyond loopback, where POST /admin/reload must not be open: "
                "set --api-key (OM2P_API_KEY), or --no-admin (OM2P_ADMIN=false) to serve without /admin"
            )
        return None

    def model_path(self) -> Path:
        """The configured model path, or the bundled default; a clear error when neither exists."""
        if self.model is not None:
            if not self.model.exists():
                raise FileNotFoundError(f"--model {self.model}: no such file or directory")
            return self.model
        if not BUNDLED_MODEL_DIR.is_dir():
            raise FileNotFoundError(
                f"no --model given and no bundled policy in {BUNDLED_MODEL_DIR} "
                "(export one with `om2p export ... --out server/bundled`, or pass --model DIR)"
            )
        return BUNDLED_MODEL_DIR

"""The Ray Serve peer of `om2p serve`: the same model.onnx behind a `@serve.batch` deployment.

Run by `benchmarks/ray_peer.py` with the throwaway Ray venv's python (no om2p package there: the manifest
is read with plain json, the model opened with onnxruntime directly):

    python benchmarks/ray_app.py VERSION_DIR --port 8123

`POST /act` takes our JSON body (`{"observations": [N, obs_dim] or [B, N, obs_dim], "deterministic": bool}`)
and answers `{"actions": ...}`; the batch handler stacks the requests' rows and makes ONE `session.run` per
batch, with one intra-op thread like ours. Prints a `RAY_PEER_READY` line once serving; SIGTERM shuts down.
"""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import sys
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

READY = "RAY_PEER_READY"


def onnx_path(version_dir: Path) -> tuple[Path, int]:
    """(model.onnx path, act_dim) from the version dir's manifest.json, the contract export writes."""
    manifest = json.loads((version_dir / "manifest.json").read_text())
    onnx = next(f for f in manifest["files"] if f["format"] == "onnx" and f["precision"] == "fp32")
    return version_dir / onnx["path"], int(manifest["act_dim"])


def _json(payload: dict, status: int = 200) -> Response:
    return Response(json.dumps(payload), status_code=status, media_type="application/json")


@serve.deployment
class Policy:
    def __init__(self, model: str, act_dim: int, max_batch_size: int, batch_wait_timeout_s: float) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # like `om2p serve --intra-op-threads 1` (its default)
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.act_dim = act_dim
        self.rng = np.random.default_rng()
        self.act.set_max_batch_size(max_batch_size)
        self.act.set_batch_wait_timeout_s(batch_wait_timeout_s)

    async def __call__(self, request: Request) -> Response:
        if request.method != "POST" or request.url.path.rstrip("/") != "/act":
            return _json({"error": "not found"}, 404)
        try:
            body = await request.json()
            obs = np.asarray(body["observations"], dtype=np.float32)
            if obs.ndim not in (2, 3):
                raise ValueError(f"observations must be [N, obs_dim] or [B, N, obs_dim], got {obs.shape}")
        except (ValueError, KeyError, TypeError) as error:
            return _json({"error": str(error)}, 422)
        batched = obs.ndim == 3
        actions = await self.act((obs if batched else obs[None], bool(body.get("deterministic"))))
        return _json({"actions": (actions if batched else actions[0]).tolist()})

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.01)  # both reset from the CLI in __init__
    async def act(self, items: list[tuple[np.ndarray, bool]]) -> list[np.ndarray]:
        obs = np.concatenate([o for o, _ in items])
        noise = self.rng.standard_normal((*obs.shape[:2], self.act_dim), dtype=np.float32)
        spans = list(itertools.pairwise(np.cumsum([0, *(o.shape[0] for o, _ in items)])))
        for (_, deterministic), (start, stop) in zip(items, spans, strict=True):
            if deterministic:
                noise[start:stop] = 0.0  # the deterministic action is the flow from zero noise
        actions = self.session.run(["actions"], {"obs": obs, "noise": noise})[0]
        return [actions[start:stop] for start, stop in spans]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("version_dir", type=Path)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--batch-wait-timeout-s", type=float, default=0.01)
    parser.add_argument("--max-ongoing-requests", type=int, default=256)
    parser.add_argument("--temp-dir", default=None, help="Ray's session dir (default /tmp/ray)")
    args = parser.parse_args()
    model, act_dim = onnx_path(args.version_dir.resolve())

    # A small object store: the peer passes no large objects, and the default takes 30% of RAM. Loopback
    # only: Ray otherwise binds its node services to the machine's address.
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=100 * 1024 * 1024,
        _node_ip_address="127.0.0.1",
        _temp_dir=args.temp_dir,
        log_to_driver=False,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # after ray.init, which installs its own SIGTERM handler
        signal.signal(sig, lambda *_: stop.set())
    try:
        # No access log on either side: `om2p serve` logs no requests by default either.
        logging = {"enable_access_log": False, "log_level": "WARNING"}
        serve.start(http_options={"host": "127.0.0.1", "port": args.port}, logging_config=logging)
        # max_ongoing_requests >= max_batch_size, else the replica never sees enough requests to batch
        # (Ray's default of 5 would cap every batch at 5).
        deployment = Policy.options(
            num_replicas=1,
            max_ongoing_requests=args.max_ongoing_requests,
            ray_actor_options={"num_cpus": 1},
            logging_config=logging,
        )
        app = deployment.bind(str(model), act_dim, args.max_batch_size, args.batch_wait_timeout_s)
        serve.run(app, name="om2p_peer", route_prefix="/")
        print(f"{READY} http://127.0.0.1:{args.port} ray {ray.__version__}", flush=True)
        while not stop.wait(0.5):  # a timed wait lets the signal handler run promptly
            pass
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

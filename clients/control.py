"""`om2p control`: run the real environment with actions from the server, and the same policy in-process
(ONNX Runtime on the same model file, same seeds, deterministic), to show that serving changes nothing."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clients.client import Om2pClient, Om2pError
from om2p.errors import CommandError


@dataclass
class ControlReport:
    env: str
    seeds: list[int]
    served_returns: list[float]
    local_returns: list[float] | None
    tick_latency_ms: dict[str, float]
    ticks: int
    protocol: str

    def to_dict(self) -> dict:
        served, local = np.asarray(self.served_returns), self.local_returns
        return {
            "env": self.env,
            "seeds": self.seeds,
            "protocol": self.protocol,
            "served_returns": self.served_returns,
            "served_mean_return": float(served.mean()),
            "local_returns": local,
            "local_mean_return": float(np.mean(local)) if local is not None else None,
            "max_abs_return_difference": (
                float(np.max(np.abs(served - np.asarray(local)))) if local is not None else None
            ),
            "ticks": self.ticks,
            "tick_latency_ms": self.tick_latency_ms,
        }


def onnx_policy(model_path: Path | str):
    """Deterministic (zero-noise) in-process policy: `obs [B, N, obs_dim] -> actions [B, N, act_dim]`."""
    from export.manifest import load_manifest, resolve_version_dir
    from export.session import open_session

    version_dir = resolve_version_dir(Path(model_path))
    manifest = load_manifest(version_dir)
    onnx_file = manifest.file("onnx", "fp32")
    if onnx_file is None:
        raise ValueError(f"{version_dir / 'manifest.json'}: files: no fp32 ONNX model listed")
    session = open_session(version_dir / onnx_file.path)
    act_dim = manifest.act_dim

    def act(observations: np.ndarray) -> np.ndarray:
        obs = np.asarray(observations, dtype=np.float32)
        noise = np.zeros((*obs.shape[:-1], act_dim), dtype=np.float32)
        return session.run(["actions"], {"obs": obs, "noise": noise})[0]

    return act, manifest


def served_model(url: str) -> dict:
    """The served model's description (`/v1/models`); one-line `CommandError`s when there is none."""
    import httpx

    try:
        with Om2pClient(url) as client:
            models = client.models().get("models") or []
    except httpx.HTTPError as error:
        raise CommandError(
            f"--url {url}: cannot reach the server ({type(error).__name__}: {error})"
        ) from None
    except Om2pError as error:
        raise CommandError(f"--url {url}: {error}") from None
    if not models:
        raise CommandError(f"--url {url}: the server has no model loaded yet (see {url}/readyz)")
    return models[0]


def check_environment(env: str, model: dict) -> None:
    """The environment's dims must be the served model's, or every tick would be a 422."""
    from training.envs import env_spec

    spec = env_spec(env)  # an unknown name is a one-line ValueError
    wanted = (spec.n_agents, spec.obs_dim, spec.act_dim)
    served = (len(model["agents"]), model["obs_dim"], model["act_dim"])
    if wanted != served:
        raise CommandError(
            f"--env {env}: {wanted[0]} agents, obs {wanted[1]}, act {wanted[2]}, but the server's model "
            f"{model['name']!r} (env {model.get('env')!r}) takes {served[0]} agents, obs {served[1]}, "
            f"act {served[2]}; pass the environment the model was trained on"
        )


def run_control(
    url: str,
    env: str,
    episodes: int,
    seed: int = 0,
    n_envs: int = 1,
    model: Path | str | None = None,
    compare: bool = True,
    websocket: bool = False,
) -> ControlReport:
    from training.envs import evaluate_policy

    model_description = served_model(url)
    check_environment(env, model_description)
    seeds = [seed + index for index in range(episodes)]
    latencies: list[float] = []
    if websocket:
        from clients.websocket import WebSocketPolicyClient

        remote = WebSocketPolicyClient(url)
    else:
        remote = Om2pClient(url, binary=True)

    def served(observations: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        actions = remote.act(observations, deterministic=True).actions
        latencies.append(time.perf_counter() - started)
        return actions

    try:
        served_result = evaluate_policy(env, served, seeds, n_envs=n_envs)
    except Om2pError as error:  # the server went away or refused a tick mid-run
        raise CommandError(f"--url {url}: {error}") from None
    finally:
        remote.close()
    local_returns = None
    if compare:
        source = model_description.get("source")
        model_path = Path(model) if model is not None else Path(source) if source else None
        if model_path is None or not model_path.exists():
            raise ValueError("--model: the served model's files are not on this machine; pass --model DIR")
        local, _ = onnx_policy(model_path)
        local_returns = [float(r) for r in evaluate_policy(env, local, seeds, n_envs=n_envs).returns]
    latency_ms = np.asarray(latencies) * 1e3
    return ControlReport(
        env=env,
        seeds=seeds,
        served_returns=[float(r) for r in served_result.returns],
        local_returns=local_returns,
        tick_latency_ms={
            key: float(np.percentile(latency_ms, q))
            for key, q in (("p50", 50), ("p90", 90), ("p99", 99), ("p99_9", 99.9))
        },
        ticks=len(latencies),
        protocol="websocket" if websocket else "binary",
    )


def format_report(report: ControlReport) -> str:
    data = report.to_dict()
    lines = [f"{report.env}: {len(report.seeds)} episodes, seeds {report.seeds[0]}..{report.seeds[-1]}"]
    lines.append(f"  served ({report.protocol})  mean return {data['served_mean_return']:.3f}")
    if report.local_returns is not None:
        lines.append(f"  in-process (ONNX Runtime) mean return {data['local_mean_return']:.3f}")
        lines.append(f"  largest per-episode difference {data['max_abs_return_difference']:.2e}")
    latency = report.tick_latency_ms
    lines.append(
        f"  per-tick latency ms over {report.ticks} ticks: p50 {latency['p50']:.2f}  p90 {latency['p90']:.2f}"
        f"  p99 {latency['p99']:.2f}  p99.9 {latency['p99_9']:.2f}"
    )
    return "\n".join(lines)

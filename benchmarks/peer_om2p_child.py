"""Runs inside the peer's throwaway venv (JAX, no torch, nothing of om2p): builds the official OM2P agents
(lizr16/OM2P `agents/fql_meanfield.py`) at their published defaults in their finite-difference mode, one
agent object per agent as its `main.py` does, and times their jitted updates on request.

Protocol (one JSON object per line): the parent writes {"hidden": [...], "batch": B, "agents": N, "obs_dim": O,
"act_dim": A} once, then {"steps": K} any number of times; this answers each line with one JSON line
(setup: {"ready": ..., "compile_s": ...}; timing: {"ms_per_step": ...}). Stdin closing ends it.
"""

from __future__ import annotations

import json
import sys
import time
import types
from pathlib import Path


def _import_agent(source: Path):
    sys.path.insert(0, str(source))
    # Load agents/fql_meanfield.py without agents/__init__.py, which imports every other agent of the repo.
    package = types.ModuleType("agents")
    package.__path__ = [str(source / "agents")]
    sys.modules["agents"] = package
    from agents.fql_meanfield import FQLAgent_MeanField, get_config

    return FQLAgent_MeanField, get_config


def main() -> int:
    source = Path(sys.argv[1])
    agent_class, get_config = _import_agent(source)
    import jax
    import numpy as np

    spec = json.loads(sys.stdin.readline())
    n, b, o, a = spec["agents"], spec["batch"], spec["obs_dim"], spec["act_dim"]
    config = get_config()
    config["actor_hidden_dims"] = tuple(spec["hidden"])
    config["value_hidden_dims"] = tuple(spec["hidden"])
    config["batch_size"] = b
    config["is_autograd"] = 0  # the finite-difference ("nograd_delta") mode; everything else at its default
    rng = np.random.default_rng(0)
    batches = [
        {
            "observations": rng.standard_normal((b, o), dtype=np.float32),
            "actions": rng.uniform(-1, 1, (b, a)).astype(np.float32),
            "rewards": rng.standard_normal(b, dtype=np.float32),
            "next_observations": rng.standard_normal((b, o), dtype=np.float32),
            "dones": np.zeros(b, dtype=np.float32),
            "masks": np.ones(b, dtype=np.float32),
        }
        for _ in range(n)
    ]
    agents = [
        agent_class.create(0, batches[i]["observations"][:1], batches[i]["actions"][:1], dict(config))
        for i in range(n)
    ]

    def step() -> None:
        # main.py's offline loop: every agent object updated in turn on its own slice of the joint batch.
        for i in range(n):
            agents[i], info = agents[i].update(batches[i])
        jax.block_until_ready((agents[-1].network.params, info))

    start = time.perf_counter()
    step()  # jit compilation
    compile_s = time.perf_counter() - start
    step()
    print(
        json.dumps(
            {"ready": True, "compile_s": compile_s, "jax": jax.__version__, "devices": str(jax.devices())}
        ),
        flush=True,
    )
    for line in sys.stdin:
        steps = json.loads(line)["steps"]
        start = time.perf_counter()
        for _ in range(steps):
            step()
        print(json.dumps({"ms_per_step": (time.perf_counter() - start) / steps * 1e3}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

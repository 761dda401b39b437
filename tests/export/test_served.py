"""End to end: a real `om2p serve` (uvicorn on loopback, ONNX Runtime, no torch on its path) serving an
export answers with the actions the checkpoint computes."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import torch

from server.process import ServerProcess
from training.checkpoint import load_policy


def test_served_export_answers_with_the_checkpoints_actions(exported, checkpoint: Path) -> None:
    policy, info = load_policy(checkpoint)
    rng = np.random.default_rng(5)
    spread = rng.standard_normal((9, info.n_agents, info.obs_dim))
    obs = (np.asarray(info.obs_mean) + spread).astype(np.float32)
    with torch.no_grad():
        expected = policy(torch.from_numpy(obs), torch.zeros(9, info.n_agents, info.act_dim)).numpy()
    server = ServerProcess(exported.version_dir.parent).start()
    try:
        response = httpx.post(
            f"{server.url}/act", json={"observations": obs.tolist(), "deterministic": True}, timeout=30
        )
    finally:
        server.stop()
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model"], body["version"]) == (exported.manifest.name, exported.manifest.version)
    assert np.max(np.abs(np.asarray(body["actions"]) - expected)) <= 1e-5

"""Backends behind one interface: ONNX Runtime on the synthetic policy, PyTorch on a real training
checkpoint (CPU here; CUDA graphs and TensorRT need a GPU)."""

from __future__ import annotations

import importlib.util

import httpx
import numpy as np
import pytest

from server.backends import batch_buckets, load_backend
from server.process import ServerProcess
from server.synthetic import reference_policy


def test_batch_buckets_cover_every_size_up_to_the_maximum():
    assert batch_buckets(1) == [1]
    assert batch_buckets(100) == [1, 2, 4, 8, 16, 32, 64, 100]
    assert batch_buckets(64) == [1, 2, 4, 8, 16, 32, 64]


def test_onnxruntime_backend_computes_the_policy(model_repository):
    backend, spec = load_backend("onnxruntime", model_repository)
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(7, spec.n_agents, spec.obs_dim)).astype(np.float32)
    noise = rng.normal(size=(7, spec.n_agents, spec.act_dim)).astype(np.float32)
    np.testing.assert_allclose(
        backend.run(obs, noise), reference_policy(model_repository)(obs, noise), atol=1e-5
    )
    assert spec.version == 1 and spec.agents == ("agent_0", "agent_1", "agent_2")


def test_unknown_backend_and_missing_model_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="--backend 'jax'"):
        load_backend("jax", tmp_path)
    with pytest.raises(ValueError, match="no such model directory"):
        load_backend("onnxruntime", tmp_path / "missing")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A real (untrained) OM2P checkpoint for cooperative_navigation, written by the training code."""
    torch = pytest.importorskip("torch")
    from training.algos import get_algorithm
    from training.checkpoint import save_checkpoint
    from training.config import TrainConfig
    from training.envs import env_spec

    spec = env_spec("cooperative_navigation")
    config = TrainConfig(env=spec.name, actor_hidden=[32, 32], critic_hidden=[32, 32])
    obs_mean, obs_std = torch.zeros(spec.n_agents, spec.obs_dim), torch.ones(spec.n_agents, spec.obs_dim)
    algorithm = get_algorithm("om2p")(spec, config, obs_mean, obs_std)
    run_dir = tmp_path_factory.mktemp("run")
    info = {
        "algo": "om2p",
        "env": spec.name,
        "env_spec": spec.to_dict(),
        "config": config.to_dict(),
        "obs_mean": obs_mean.tolist(),
        "obs_std": obs_std.tolist(),
        "step": 3,
        "network_evaluations_per_action": 1,
    }
    save_checkpoint(run_dir, algorithm, info)
    return run_dir


def test_torch_backend_serves_a_training_checkpoint(checkpoint):
    import torch

    from training.checkpoint import load_policy

    backend, spec = load_backend("torch", checkpoint, device="cpu")
    policy, _ = load_policy(checkpoint)
    rng = np.random.default_rng(1)
    obs = rng.normal(size=(5, spec.n_agents, spec.obs_dim)).astype(np.float32)
    noise = rng.normal(size=(5, spec.n_agents, spec.act_dim)).astype(np.float32)
    with torch.inference_mode():
        expected = policy(torch.from_numpy(obs), torch.from_numpy(noise)).numpy()
    np.testing.assert_allclose(backend.run(obs, noise), expected, atol=1e-6)
    assert spec.name == "cooperative_navigation" and spec.version == 3 and "cpu" in backend.description

    server = ServerProcess(checkpoint, backend="torch", device="cpu")
    try:
        server.start()
        body = {"observations": obs.tolist(), "deterministic": True}
        response = httpx.post(f"{server.url}/act", json=body, timeout=10)
        assert response.status_code == 200, response.text
        answer = response.json()
        with torch.inference_mode():
            zero_noise = policy(torch.from_numpy(obs), torch.zeros(5, spec.n_agents, spec.act_dim)).numpy()
        np.testing.assert_allclose(answer["actions"], zero_noise, atol=1e-6)
        assert httpx.get(f"{server.url}/v1/models").json()["models"][0]["backend"] == "torch"
    finally:
        server.stop()


def _cuda() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU (CUDA graphs)")
def test_torch_backend_cuda_graphs_match_eager(checkpoint):
    import torch

    from training.checkpoint import load_policy

    backend, spec = load_backend("torch", checkpoint, device="cuda", max_batch_rows=64)
    assert backend.graphs and "CUDA graphs" in backend.description
    policy, _ = load_policy(checkpoint, device="cuda")
    for rows in (1, 3, 64):  # exact bucket, padded bucket, largest
        obs = np.random.default_rng(rows).normal(size=(rows, spec.n_agents, spec.obs_dim)).astype(np.float32)
        noise = np.zeros((rows, spec.n_agents, spec.act_dim), np.float32)
        with torch.inference_mode():
            expected = policy(torch.from_numpy(obs).cuda(), torch.from_numpy(noise).cuda()).cpu().numpy()
        np.testing.assert_allclose(backend.run(obs, noise), expected, atol=1e-5)


@pytest.mark.tensorrt
@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is None or not _cuda(), reason="needs TensorRT and a CUDA GPU"
)
def test_tensorrt_backend_refuses_a_model_without_an_engine(model_repository):
    with pytest.raises(ValueError, match="no TensorRT engine"):
        load_backend("tensorrt", model_repository)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_tensorrt_backend_without_tensorrt_says_what_to_install(model_repository):
    with pytest.raises(ValueError, match=r"tensorrt is not installed.*--backend onnxruntime"):
        load_backend("tensorrt", model_repository)

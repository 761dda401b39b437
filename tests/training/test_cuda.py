"""The same trainer on CUDA (skipped without a GPU): short runs eager and as a replayed CUDA graph, their
checkpoints serve on the CPU, and the graphed step really trains."""

from __future__ import annotations

import pytest
import torch

from training.algos.om2p import OM2P
from training.checkpoint import load_policy
from training.cuda_graphs import GraphedStep, make_capturable
from training.envs import env_spec
from training.trainer import train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize(
    ("estimator", "cuda_graphs"), [("fd", True), ("fd", False), ("jvp", False)], ids=["fd-graph", "fd", "jvp"]
)
def test_short_cuda_run_checkpoint_loads_on_cpu(tmp_path, make_config, make_dataset, estimator, cuda_graphs):
    config = make_config(
        device="cuda", du_dt=estimator, bf16_autocast=estimator == "fd", cuda_graphs=cuda_graphs, steps=8
    )
    result = train(config, tmp_path / "run", dataset=make_dataset(), progress=False)
    assert result.evaluation is not None
    policy, info = load_policy(tmp_path / "run", device="cpu")
    actions = policy(torch.randn(4, info.n_agents, info.obs_dim), torch.zeros(4, info.n_agents, info.act_dim))
    assert torch.isfinite(actions).all() and actions.abs().max() <= 1.0


def test_graphed_step_updates_every_call_and_learns(make_config, make_batch):
    spec = env_spec("cooperative_navigation")
    config = make_config(device="cuda", env="cooperative_navigation", alpha=0.0)
    stats = torch.zeros(spec.n_agents, spec.obs_dim), torch.ones(spec.n_agents, spec.obs_dim)
    algorithm = OM2P(spec, config, *stats).to("cuda")
    make_capturable(algorithm.optimizers())
    batch = make_batch(spec, batch_size=64)
    batch = type(batch)(
        *(
            t.cuda()
            for t in (batch.observations, batch.actions, batch.rewards, batch.next_observations, batch.dones)
        )
    )
    step = GraphedStep(lambda: algorithm.update(batch))
    weight = algorithm.actor.parameters().__next__()
    first = [float(step()["loss/mean_flow"]) for _ in range(step.warmup + 1)]
    assert step.graph is not None  # captured on the call after the warm-up
    before = weight.detach().clone()
    losses = [float(step()["loss/mean_flow"]) for _ in range(400)]
    assert not torch.equal(before, weight.detach())  # a replay is a real optimizer step
    assert len(set(losses[:10])) > 1  # fresh noise and timesteps per replay
    assert sum(losses[-50:]) / 50 < 0.5 * sum(first) / len(first)  # 6.7 -> 1.0 on the CPU, eager


def test_bc_mse_graphed_run_trains_and_serves_on_cpu(tmp_path, make_config, make_dataset):
    # bc_mse declares supports_cuda_graphs: one forward, backward and fused Adam step, nothing host-side.
    config = make_config(device="cuda", algo="bc_mse", cuda_graphs=True, steps=8)
    result = train(config, tmp_path / "run", dataset=make_dataset(), progress=False)
    assert result.evaluation is not None
    policy, info = load_policy(tmp_path / "run", device="cpu")
    assert info.algo == "bc_mse"
    actions = policy(torch.randn(4, info.n_agents, info.obs_dim), torch.zeros(4, info.n_agents, info.act_dim))
    assert torch.isfinite(actions).all() and actions.abs().max() <= 1.0

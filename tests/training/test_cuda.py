"""The same trainer on CUDA (skipped without a GPU): a short run, and its checkpoint serves on the CPU."""

from __future__ import annotations

import pytest
import torch

from training.checkpoint import load_policy
from training.trainer import train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("estimator", ["fd", "jvp"])
def test_short_cuda_run_checkpoint_loads_on_cpu(tmp_path, make_config, make_dataset, estimator):
    config = make_config(device="cuda", du_dt=estimator, bf16_autocast=estimator == "fd")
    result = train(config, tmp_path / "run", dataset=make_dataset(), progress=False)
    assert result.evaluation is not None
    policy, info = load_policy(tmp_path / "run", device="cpu")
    actions = policy(torch.randn(4, info.n_agents, info.obs_dim), torch.zeros(4, info.n_agents, info.act_dim))
    assert torch.isfinite(actions).all() and actions.abs().max() <= 1.0

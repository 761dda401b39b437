"""Helpers for tests of export and of what consumes its artifacts: real checkpoints written by the trainer's
own `save_untrained` (safetensors + JSON, freshly initialised weights), and fast export options."""

from __future__ import annotations

import json
from pathlib import Path

from export.exporter import ExportOptions

# Small networks keep test exports to about a second each.
SMALL_CONFIG = {"actor_hidden": [64, 64], "critic_hidden": [32], "eval_episodes": 4, "eval_envs": 4}


def write_checkpoint(run_dir: Path, env: str = "cooperative_navigation", **config) -> Path:
    """A step-0 checkpoint whose observation statistics are not the identity, so normalisation inside the
    graph is exercised; returns its step directory."""
    from training.checkpoint import INFO_FILE, save_untrained
    from training.config import TrainConfig

    step_dir = save_untrained(run_dir, env, TrainConfig.from_dict({**SMALL_CONFIG, **config}))
    info_path = step_dir / INFO_FILE
    info = json.loads(info_path.read_text())
    info["obs_mean"] = [
        [0.1 * (i + j % 5) for j in range(len(row))] for i, row in enumerate(info["obs_mean"])
    ]
    info["obs_std"] = [[0.5 + 0.25 * (j % 3) for j in range(len(row))] for row in info["obs_std"]]
    info_path.write_text(json.dumps(info, indent=2))
    return step_dir


def fast_options(**changes) -> ExportOptions:
    """The TorchScript exporter (about ten times faster to run than dynamo), no TensorRT and a two-episode
    evaluation: for tests about everything except the exporter itself."""
    return ExportOptions(**{"exporter": "torchscript", "tensorrt": "off", "eval_episodes": 2, **changes})

"""Where a run's checkpoints live and how checkpoint.json is found and read, without torch.

    RUN_DIR/checkpoints/step_<8 digits>/weights.safetensors, optimizer.safetensors, checkpoint.json
    RUN_DIR/checkpoints/latest                                  text: the newest step directory's name

`training.checkpoint` (which needs torch) writes and loads checkpoints with these names; `export/runs.py`,
the benchmarks and the grid's driver import this module instead of copying the literals.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CHECKPOINTS_DIR = "checkpoints"
WEIGHTS_FILE = "weights.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
INFO_FILE = "checkpoint.json"
LATEST_FILE = "latest"


class CheckpointError(ValueError):
    """A checkpoint that is missing, malformed or made for something else; the message names the file."""


def step_dir(run_dir: str | Path, step: int) -> Path:
    """`RUN_DIR/checkpoints/step_<8 digits>`."""
    return Path(run_dir) / CHECKPOINTS_DIR / f"step_{int(step):08d}"


def resolve_checkpoint(path: str | Path) -> Path:
    """A step directory from a step directory, `checkpoints/` or a run directory (through `latest`)."""
    path = Path(path)
    if path.is_file() and path.name in (INFO_FILE, WEIGHTS_FILE):
        path = path.parent
    if (path / INFO_FILE).is_file():
        return path
    for directory in (path / CHECKPOINTS_DIR, path):
        latest = directory / LATEST_FILE
        if latest.is_file():
            step = directory / latest.read_text().strip()
            if not (step / INFO_FILE).is_file():
                raise CheckpointError(f"{latest}: points to {step.name!r}, which holds no {INFO_FILE}")
            return step
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint or run directory")
    raise CheckpointError(
        f"{path}: not a checkpoint (expected a step directory with {INFO_FILE}, or a run directory with "
        f"{CHECKPOINTS_DIR}/{LATEST_FILE})"
    )


def read_info_json(path: str | Path) -> dict[str, Any]:
    """checkpoint.json of the checkpoint at `path` (resolved as `resolve_checkpoint` does), parsed."""
    info_path = resolve_checkpoint(path) / INFO_FILE
    try:
        return json.loads(info_path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{info_path}: not valid JSON: {error}") from None

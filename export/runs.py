"""Finding what to export under a runs directory (`make export` without CKPT)."""

from __future__ import annotations

from pathlib import Path


def newest_checkpoint(runs_dir: Path) -> Path:
    """The newest checkpoint (by its checkpoint.json's modification time) that any `<run>/checkpoints/latest`
    under `runs_dir` points to."""
    from training.checkpoint_files import (
        CHECKPOINTS_DIR,
        INFO_FILE,
        LATEST_FILE,
        CheckpointError,
        resolve_checkpoint,
    )

    if not runs_dir.is_dir():
        raise FileNotFoundError(f"{runs_dir}: no such runs directory (train first: make train)")
    candidates = []
    for latest in runs_dir.glob(f"**/{CHECKPOINTS_DIR}/{LATEST_FILE}"):
        try:
            step_dir = resolve_checkpoint(latest.parent)
        except CheckpointError:
            continue  # a run whose newest checkpoint is being written or was removed
        candidates.append((step_dir.joinpath(INFO_FILE).stat().st_mtime, str(step_dir), step_dir))
    if not candidates:
        raise FileNotFoundError(f"{runs_dir}: no run with checkpoints/latest (train first: make train)")
    return max(candidates)[2]

"""The checkpoint layout is one torch-free module that the torch-free readers import."""

from __future__ import annotations

import subprocess
import sys


def test_checkpoint_layout_and_its_readers_import_without_torch():
    code = (
        "import sys, training.checkpoint_files, export.runs, benchmarks.grid.runner; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_training_checkpoint_uses_the_layouts_names():
    from training import checkpoint, checkpoint_files

    assert checkpoint.INFO_FILE is checkpoint_files.INFO_FILE
    assert checkpoint.resolve_checkpoint is checkpoint_files.resolve_checkpoint
    assert checkpoint.CheckpointError is checkpoint_files.CheckpointError

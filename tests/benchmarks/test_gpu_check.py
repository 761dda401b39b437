"""`make gpu-check` (benchmarks/gpu_check.py): on a machine without CUDA it says why in one line and writes
nothing; its training-run and serving sections run on the CPU too, so their plumbing is checked here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.gpu_check import serving_section, training_run_section

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path; this machine has CUDA")
def test_without_cuda_one_line_and_nothing_written(tmp_path):
    out = tmp_path / "gpu_check.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: skipped:") and "CUDA" in lines[0]
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_training_run_and_serving_sections_on_cpu(tmp_path):
    run = training_run_section(tmp_path, steps=20, device="cpu")
    assert run["steps"] == 20 and run["dataset_transitions"] >= 25_000
    assert "mean_return" in run["eager"]["final_evaluation"] and "cuda_graph" not in run
    served = serving_section(tmp_path / "eager", repeats=2, device="cpu")
    assert set(served["rows"]) == {"1", "8", "64", "256", "1024"}
    for row in served["rows"].values():
        assert row["max_abs_diff_graph_vs_eager"] == 0.0 and row["graph_rows_per_s"] > 0

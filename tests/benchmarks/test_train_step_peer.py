"""benchmarks.train_step's comparison with the official code: the peer glue refuses what it cannot run, and
the table reads one run's numbers (no timing here; `python -m benchmarks.train_step` measures)."""

from __future__ import annotations

import pytest

from benchmarks import peer_om2p, run_all, train_step


def test_a_missing_peer_repository_is_refused_with_the_reason(tmp_path, monkeypatch):
    with pytest.raises(peer_om2p.PeerUnavailable, match="no such peer repository"):
        peer_om2p.find_repo(str(tmp_path / "nowhere"))
    monkeypatch.delenv("OM2P_PEER_REPO", raising=False)
    monkeypatch.setattr(peer_om2p, "DEFAULT_REPO", tmp_path / "no-mirror")
    with pytest.raises(peer_om2p.PeerUnavailable, match="--peer-repo"):
        peer_om2p.find_repo(None)


def _report() -> dict:
    def ours(ms: float, official_ms: float) -> dict:
        return {
            "ms_per_step": ms,
            "steps_per_s": 1e3 / ms,
            "vs_official": official_ms / ms,
            "achieved_gflop_s": 50.0,
            "share_of_fp32_matmul_rate": 0.5,
            "share_of_bf16_matmul_rate": 0.1,
            "first_step_s": 1.0,
        }

    configurations = {
        "fp32": ours(300.0, 450.0),
        "compiled_bf16_autocast": ours(200.0, 450.0),
        "official": {"ms_per_step": 450.0, "steps_per_s": 1e3 / 450.0, "vs_official": 1.0},
    }
    return {
        "created_at": "2026-12-05T00:00:00Z",
        "torch": "2.x",
        "cpus": 2,
        "cpu_has_avx512_bf16": True,
        "official_unavailable": "--no-peer",
        "vs_official": {
            "rounds": 5,
            "matmul_gflop_s": {"1": {"fp32": 100.0, "bf16": 500.0}},
            "sizes": {
                "paper": {
                    "hidden": [512, 512],
                    "batch": 256,
                    "threads": {
                        "1": {"configurations": configurations, "official_setup": {"compile_s": 3.0}}
                    },
                }
            },
        },
    }


def test_the_comparison_table_names_each_lever_and_the_ratio_to_the_official_code():
    lines = train_step.comparison_lines(_report())
    assert any("| compiled_bf16_autocast | 200.0 | 5.00 | 2.25x |" in line for line in lines)
    assert any("| official | 450.0 |" in line for line in lines)
    page = "\n".join(run_all._train_step_markdown(_report()))
    assert "**2.25x** its steps/s (target 1.5x: met)" in page

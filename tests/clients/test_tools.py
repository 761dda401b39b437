"""`om2p loadgen` and `om2p control` end to end against a real server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from om2p.cli import main

SUMMARY_KEYS = {"mode", "rate", "concurrency", "protocol", "duration_s", "requests", "ok", "errors"}


@pytest.mark.parametrize(
    ("load", "binary"), [(["--concurrency", "4"], True), (["--rate", "100"], False)], ids=["closed", "open"]
)
def test_loadgen_json_summary(server_url: str, tmp_path: Path, load: list[str], binary: bool) -> None:
    out = tmp_path / "load.json"
    argv = ["loadgen", "--url", server_url, *load, "--duration", "1", "--warmup", "0.2", "--json", str(out)]
    assert main(argv + (["--binary"] if binary else [])) == 0
    summary = json.loads(out.read_text())
    assert SUMMARY_KEYS | {"throughput_rps", "latency_ms"} <= set(summary)
    assert summary["ok"] > 0 and summary["errors"] == {} and summary["requests"] == summary["ok"]
    assert summary["protocol"] == ("binary" if binary else "json")
    latency = summary["latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["p99_9"] <= latency["max"]


def test_loadgen_sweep_plot(server_url: str, tmp_path: Path) -> None:
    plot, out = tmp_path / "sweep.png", tmp_path / "sweep.json"
    argv = ["loadgen", "--url", server_url, "--sweep", "50,150", "--duration", "0.5"]
    assert main([*argv, "--plot", str(plot), "--json", str(out)]) == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [s["rate"] for s in json.loads(out.read_text())["sweep"]] == [50.0, 150.0]


def test_loadgen_user_errors(server_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["loadgen", "--url", server_url, "--rate", "-5", "--duration", "1"]) == 2
    assert "--rate" in capsys.readouterr().err
    assert main(["loadgen", "--url", "http://127.0.0.1:9", "--rate", "5", "--duration", "1"]) == 2
    assert "cannot reach" in capsys.readouterr().err


@pytest.mark.parametrize("websocket", [False, True], ids=["http", "websocket"])
def test_control_served_equals_in_process(
    server_url: str, synthetic_model: Path, websocket: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "control",
        "--url",
        server_url,
        "--env",
        "cooperative_navigation",
        "--episodes",
        "2",
        "--n-envs",
        "2",
    ]
    argv += ["--model", str(synthetic_model), "--json"] + (["--websocket"] if websocket else [])
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["served_returns"]) == 2 and report["ticks"] == 25
    assert report["served_returns"] == pytest.approx(report["local_returns"], abs=1e-3)
    assert report["served_returns"][0] != report["served_returns"][1]  # different seeds, different episodes


def test_control_errors_are_one_line(server_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    unreachable = ["control", "--url", "http://127.0.0.1:9", "--env", "cooperative_navigation"]
    assert main(unreachable) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "cannot reach the server" in error and "127.0.0.1:9" in error
    # predator_prey observes 16 values per agent; the served model takes cooperative_navigation's 18.
    assert main(["control", "--url", server_url, "--env", "predator_prey", "--episodes", "1"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "--env predator_prey" in error and "obs 18" in error
    assert main(["control", "--url", server_url, "--env", "no_such_env"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "no_such_env" in error

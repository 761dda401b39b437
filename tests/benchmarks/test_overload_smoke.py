"""`python -m benchmarks.overload` end to end on real servers, a few seconds long: the ratio is printed
whatever it is, the page section and the plot are written, every 503 is checked for Retry-After, and the
server's own outcome counts equal the generator's at every load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import overload
from server.testing import write_synthetic_repository


def test_overload_reports_the_ratio_and_both_sides_agree(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = write_synthetic_repository(tmp_path / "models", hidden=(64, 64), seed=1)
    out, plot = tmp_path / "overload.json", tmp_path / "overload.png"
    argv = ["--model", str(model), "--duration", "0.5", "--capacity-s", "0.5", "--factors", "0.5"]
    assert overload.main([*argv, "--max-connections", "32", "--json", str(out), "--plot", str(plot)]) == 0
    assert "of the" in capsys.readouterr().out and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(out.read_text())
    assert [p["factor"] for p in report["points"]] == [0.5, 4.0]  # the headline factor is always measured
    capacity = report["capacity"]
    assert report["saturating_rps"] > 0 and capacity["before"]["errors"] == capacity["after"]["errors"] == {}
    mean = (capacity["before"]["throughput_rps"] + capacity["after"]["throughput_rps"]) / 2
    assert report["saturating_rps"] == pytest.approx(mean)  # the two runs that bracket the overload
    head = report["headline"]
    assert head["accepted_vs_saturating"] == pytest.approx(head["accepted_rps"] / report["saturating_rps"])
    for point in report["points"]:
        served = point["server_outcomes"]
        assert served["ok"] == point["ok"] and served["rejected"] == point["errors"].get("http_503", 0)
        assert point["peak_connections"] <= 32 and point["offered"] == point["requests"] + point["not_sent"]
    assert head["rejected_without_retry_after"] == 0
    section = "\n".join(overload.markdown(report))
    assert "## Overload" in section and f"{head['accepted_vs_saturating']:.0%}" in section


def test_overload_bad_model_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        overload.main(["--model", str(tmp_path / "missing"), "--duration", "0.1", "--capacity-s", "0.1"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "benchmarks.overload: the server did not start" in error and "Traceback" not in error

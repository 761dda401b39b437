"""`python -m benchmarks.soak` end to end on a real server, a few seconds long: the report has both sides'
counts, and the generator sees exactly the errors the server counted (none of its own)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import soak
from server.synthetic import write_synthetic_repository


def test_soak_reports_both_sides_and_they_agree(tmp_path: Path) -> None:
    model = write_synthetic_repository(tmp_path / "models", hidden=(64, 64), seed=1)
    out, plot = tmp_path / "soak.json", tmp_path / "soak.png"
    argv = ["--model", str(model), "--duration", "2", "--window", "1", "--capacity-s", "0.5"]
    # keep-alive 0.5 s: shorter than the pool's idle connections live, so the race is on.
    assert (
        soak.main(
            [
                *argv,
                "--load-fraction",
                "0.3",
                "--keep-alive-s",
                "0.5",
                "--json",
                str(out),
                "--plot",
                str(plot),
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(report["windows"]) == 3 and report["windows"][0]["warmup"]
    client, server = report["client"], report["server"]
    assert client["ok"] > 0 and client["ok"] == server["ok"]
    assert sum(client["errors"].values()) == sum(server["errors"].values())
    assert report["keep_alive_s"] == 0.5 and report["rss_mb"]["start"] > 0
    assert "## Soak" in "\n".join(soak.markdown(report))

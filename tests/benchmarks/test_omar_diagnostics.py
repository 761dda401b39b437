"""`python -m benchmarks.omar_diagnostics`: every variant's command is a valid `om2p train` config, a finished
run is read back instead of retrained, and the report states each variant against the grid's references."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from benchmarks import omar_diagnostics as diagnostics
from benchmarks.grid.records import RECORD_VERSION
from training.config import load_config


@pytest.mark.parametrize("variant", diagnostics.VARIANTS, ids=lambda v: v.name)
def test_every_variant_is_a_valid_training_config(variant: diagnostics.Variant, tmp_path: Path) -> None:
    command = diagnostics.train_command(variant, 1000, tmp_path / "run")
    sets = [command[i + 1] for i, part in enumerate(command) if part == "--set"]
    config = load_config(None, sets, env=command[command.index("--env") + 1], algo="omar")
    assert config.omar.coef == 1.0 and config.omar.cql_weight == 5.0  # the published pair, changed once
    changed = {s.split("=")[0] for s in variant.sets}
    assert changed.isdisjoint(s.split("=")[0] for s in diagnostics.BASE_SETS)
    assert (config.env == diagnostics.FORCE_ENV) == variant.force2d


def _curve(final: int, value: float) -> list[list[float]]:
    return [[step, value] for step in range(final // 10, final + 1, final // 10)]


def test_finished_runs_are_read_back_and_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    variant = diagnostics.VARIANTS[0]
    run_dir = tmp_path / "runs" / variant.name / "seed_1000"
    run_dir.mkdir(parents=True)
    rows = ["step,mean_return,std_return,normalised_score,episodes"]
    rows += [f"{step},-13.0,1.0,{value},10" for step, value in _curve(20000, 60.0)]
    (run_dir / "evaluations.csv").write_text("\n".join(rows) + "\n")
    record = diagnostics.run_variant(variant, 1000, tmp_path / "runs")  # finished: nothing is trained
    assert record["score"] == pytest.approx(60.0) and record["curve"][-1] == (20000, 60.0)
    assert shlex.split(record["command"])[:4] == ["python", "-m", "om2p.cli", "train"]

    records = tmp_path / "records"
    for algo, setting, value in (("bc", "default", 80.0), ("omar", diagnostics.PUBLISHED_PAIR, 30.0)):
        for seed in (0, 1):
            path = records / diagnostics.ENV / "expert" / algo / setting / f"seed_{seed}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            grid_record = {"record_version": RECORD_VERSION, "env": diagnostics.ENV, "quality": "expert"}
            grid_record |= {
                "algo": algo,
                "setting": setting,
                "seed": seed,
                "curve": _curve(20000, value + seed),
            }
            path.write_text(json.dumps(grid_record))
    out, plot = tmp_path / "diagnostics.json", tmp_path / "diagnostics.png"
    out.write_text(json.dumps({"runs": [record]}))
    argv = ["--report-only", "--records", str(records), "--json", str(out), "--plot", str(plot)]
    assert diagnostics.main(argv) == 0
    table = capsys.readouterr().out
    assert "| bc (grid) | 80.5 ± 0.5 | 2 |" in table and "| published pair (grid) | 30.5 ± 0.5 | 2 |" in table
    assert f"| {variant.name} | 60.0 (one seed) | 1 |" in table and "| samples=100 | — | 0 |" in table
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [r["variant"] for r in json.loads(out.read_text())["summary"]][:2] == [
        "published pair (grid)",
        "bc (grid)",
    ]

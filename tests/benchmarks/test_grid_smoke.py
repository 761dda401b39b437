"""`python -m benchmarks.grid --smoke DIR`: two cells trained through real `om2p train` and `om2p eval`
processes on tiny synthetic datasets (OM2P tuned over two candidates, then the table), one record per run;
a second invocation trains nothing, the page rebuilds from the records with no run directories, and the same
grid runs as Ray tasks on a local Ray cluster started (and shut down) by the test."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from training.data.format import OfflineDataset, dataset_metadata, episode_returns, save_dataset
from training.envs import env_spec

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # real `om2p train` / `om2p eval` processes
ENV = "cooperative_navigation"
QUALITIES = ("expert", "random")  # the smoke preset's two cells
ENVIRONMENT = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}


def synthetic_dataset(quality: str, episodes: int = 4, seed: int = 0) -> OfflineDataset:
    """Random transitions in whole episodes with valid metadata: the smoke run checks plumbing, not learning."""
    spec = env_spec(ENV)
    rng = np.random.default_rng(seed)
    t, n = episodes * spec.episode_length, spec.n_agents
    rewards = np.repeat(rng.normal(size=(t, 1)).astype(np.float32), n, axis=1)
    ends = np.zeros(t, dtype=bool)
    ends[spec.episode_length - 1 :: spec.episode_length] = True
    metadata = dataset_metadata(
        spec,
        quality,
        seed,
        t,
        episode_returns(rewards, ends),
        {
            "expert": {"mean": -40.0, "se": 0.5, "std": 5.0, "episodes": 100},
            "random": {"mean": -150.0, "se": 1.0, "std": 10.0, "episodes": 100},
        },
        "synthetic",
    )
    return OfflineDataset(
        observations=rng.normal(size=(t, n, spec.obs_dim)).astype(np.float32),
        actions=rng.uniform(-1, 1, size=(t, n, spec.act_dim)).astype(np.float32),
        rewards=rewards,
        next_observations=rng.normal(size=(t, n, spec.obs_dim)).astype(np.float32),
        dones=np.zeros((t, n), dtype=np.float32),
        episode_ends=ends,
        metadata=metadata,
    )


def make_data(work: Path) -> None:
    for index, quality in enumerate(QUALITIES):
        save_dataset(work / "data" / ENV / f"{quality}.npz", synthetic_dataset(quality, seed=index))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("grid")
    make_data(work)
    command = [sys.executable, "-m", "benchmarks.grid", "--smoke", str(work)]  # as `make results` runs it
    first = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=ENVIRONMENT)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "6 records (0 skipped, 6 trained, 0 busy, 0 failed); 0 runs missing" in first.stdout
    return work


@pytest.fixture
def grid(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))  # `benchmarks` is a top-level folder, not an installed package
    from benchmarks.grid import analysis, cli, records, runner, settings

    return type(
        "Grid",
        (),
        {"analysis": analysis, "cli": cli, "records": records, "runner": runner, "settings": settings},
    )


def record_files(work: Path, records: str = "records") -> list[Path]:
    return sorted((work / records).glob("*/*/*/*/seed_*.json"))


def test_smoke_tunes_then_trains_the_table_and_writes_one_record_per_run(smoke):
    names = {str(p.relative_to(smoke / "records")) for p in record_files(smoke)}
    chosen = json.loads((smoke / "results.json").read_text())["tuning"][0]["chosen"]
    assert chosen in ("alpha=1", "alpha=10")
    assert names == {
        f"{ENV}/expert/om2p/alpha=1/seed_1000.json",
        f"{ENV}/expert/om2p/alpha=10/seed_1000.json",
        *(f"{ENV}/{q}/om2p/{chosen}/seed_0.json" for q in QUALITIES),  # tuned on expert, used for both
        *(f"{ENV}/{q}/bc/default/seed_0.json" for q in QUALITIES),
    }
    record = json.loads((smoke / "records" / ENV / "random" / "bc" / "default" / "seed_0.json").read_text())
    assert record["role"] == "table" and len(record["config_hash"]) == 16
    assert [step for step, _ in record["curve"]] == [2, 4]  # validation episodes, every eval_every
    assert record["config"]["eval_seed"] == 100_000 and record["validation"]["episodes"] == 2
    assert record["test"]["first_seed"] == 200_000 and record["test"]["episodes"] == 4  # the test episodes
    assert np.isfinite(record["test"]["normalised_score"]) and record["test"]["normalised_se"] > 0
    assert (
        record["dataset"]["transitions"] == 100 and record["dataset"]["reference_returns"]["expert"] == -40.0
    )
    assert record["steps"] == 4 and record["wall_s"]["train"] > 0 and record["machine"]["cpus"] >= 1
    markdown = (smoke / "results.md").read_text()
    assert "| quality | om2p | bc | best |" in markdown
    assert f"| {ENV} / expert | om2p | expert, random | " in markdown  # every candidate's validation score
    assert "`alpha=1` " in markdown and "`alpha=10` " in markdown
    assert "| cooperative_navigation / random | 100 | 4 | " in markdown  # dataset size and references
    assert "python -m benchmarks.grid --smoke" in markdown and "om2p.cli train" in markdown
    assert (smoke / "img" / f"results_{ENV}.png").is_file()


def test_second_invocation_trains_nothing(smoke, grid, capsys):
    before = {p: p.stat().st_mtime for p in record_files(smoke)}
    assert grid.cli.main(["--smoke", str(smoke)]) == 0
    assert "6 records (6 skipped, 0 trained, 0 busy, 0 failed)" in capsys.readouterr().out
    assert {p: p.stat().st_mtime for p in record_files(smoke)} == before


def test_report_only_rebuilds_the_page_from_the_records_alone(smoke, grid, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(smoke / "records", copy / "records")  # no runs/, no data/
    notes = tmp_path / "notes.md"
    notes.write_text("OMAR trails bc here because the budget is short.\n")
    argv = ["--smoke", str(copy), "--report-only", "--notes", str(notes)]
    assert grid.cli.main(argv) == 0
    rebuilt, original = (json.loads((d / "results.json").read_text()) for d in (copy, smoke))
    assert rebuilt["scores"] == original["scores"] and rebuilt["tuning"] == original["tuning"]
    assert rebuilt["missing_runs"] == [] and not (copy / "runs").exists()
    # The page states the command that trains the grid, not the one that re-read it.
    markdown = (copy / "results.md").read_text()
    assert f"```\npython -m benchmarks.grid --smoke {copy} --notes {notes}\n```" in markdown
    assert "## Notes\n\nOMAR trails bc here because the budget is short." in markdown


def test_a_run_restricted_to_one_cell_still_writes_the_whole_page(smoke, grid, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(smoke / "records", copy / "records")
    argv = [
        "--smoke",
        str(copy),
        "--cells",
        f"{ENV}:random",
        "--algos",
        "bc",
        "--seeds",
        "0",
        "--report-only",
    ]
    assert grid.cli.main(argv) == 0
    rebuilt, original = (json.loads((d / "results.json").read_text()) for d in (copy, smoke))
    assert rebuilt["scores"] == original["scores"] and rebuilt["tuning"] == original["tuning"]
    assert f"| {ENV} / expert | om2p |" in (copy / "results.md").read_text()  # the cell it did not train
    assert f"```\npython -m benchmarks.grid --smoke {copy}\n```" in (copy / "results.md").read_text()


def test_a_changed_setting_retrains_only_its_runs(smoke, grid):
    settings = grid.settings.smoke_grid(smoke)
    key = grid.records.RunKey(ENV, "random", "bc", "default", 0)
    job = grid.runner.make_job(settings, key)
    recorded = json.loads(grid.records.record_path(settings.records, key).read_text())
    assert job.config_hash == recorded["config_hash"]  # same settings: the record stands
    changed = grid.runner.make_job(replace(settings, common=(*settings.common, "tau=0.01")), key)
    assert changed.config_hash != job.config_hash
    moved = grid.runner.make_job(replace(settings, runs=smoke / "elsewhere"), key)
    assert moved.config_hash == job.config_hash  # where a run lives is not what it learns


def test_datasets_too_small_or_overlapping_the_evaluation_seeds_are_refused(grid, tmp_path):
    settings = grid.settings.smoke_grid(tmp_path)
    summary = {"transitions": 100, "episodes": 4, "seed": 0}
    big = replace(settings, min_transitions=100_000)
    with pytest.raises(
        grid.runner.GridError, match=r"100 transitions; the grid needs at least 100,000.*om2p data collect"
    ):
        grid.runner.check_dataset(tmp_path / "x.npz", summary, big, (ENV, "expert"))
    huge = {**summary, "episodes": 150_000}  # its episode seeds run into the validation seeds
    with pytest.raises(
        grid.runner.GridError, match=r"dataset episodes .* overlap those of the validation episodes"
    ):
        grid.runner.check_dataset(tmp_path / "x.npz", huge, settings, (ENV, "expert"))
    assert grid.cli.main(["--smoke", str(tmp_path), "--cells", "nowhere:expert"]) == 2
    with pytest.raises(grid.runner.GridError, match="cannot connect"):  # in seconds, not Ray's minutes
        grid.runner.check_reachable("127.0.0.1:1")


# ---------------------------------------------------------------- analysis on known numbers


def stat(*scores: float) -> dict:
    return {
        "mean": float(np.mean(scores)),
        "se": float(np.std(scores, ddof=1) / np.sqrt(len(scores))),
        "n": len(scores),
    }


def test_gaps_carry_welch_standard_errors_and_a_lead_within_two_is_a_tie(grid):
    flat = {"status": "flat"}
    row = {
        "om2p": {"test": stat(40.0, 42.0, 44.0), "convergence": flat},
        "bc": {"test": stat(46.0, 48.0, 50.0), "convergence": flat},
        "omar": {"test": stat(10.0, 11.0, 12.0), "convergence": flat},
    }
    assert grid.analysis.compare(row) == "bc"
    assert row["om2p"]["gap"] == pytest.approx(6.0)
    assert row["om2p"]["gap_se"] == pytest.approx(np.sqrt(4.0 / 3 + 4.0 / 3))  # Welch, sample variances
    assert row["om2p"]["verdict"] == "behind"  # 6.0 > 2 x 1.63
    assert row["omar"]["verdict"] == "behind" and row["bc"]["verdict"] == "best"
    row["om2p"]["test"] = stat(44.0, 46.0, 48.0)  # 2 behind, within 2 SE: a tie, and bc is a tied best
    grid.analysis.compare(row)
    assert row["om2p"]["verdict"] == "tie" and row["bc"]["verdict"] == "tied best"
    standing = grid.analysis.standing({ENV: {"medium": {"algos": row}}})
    assert standing["ties"] == [f"{ENV} / medium"] and standing["wins"] == []


def test_a_rising_curve_is_not_converged_and_a_noisy_flat_one_is(grid):
    rng = np.random.default_rng(0)
    steps = np.arange(1000, 30001, 1000)
    rising = [[[int(s), float(s / 300 + rng.normal(0, 1))] for s in steps] for _ in range(3)]
    flat = [[[int(s), float(60 + 5 * seed + rng.normal(0, 3))] for s in steps] for seed in range(3)]
    assert grid.analysis.convergence(rising)["status"] == "rising"
    result = grid.analysis.convergence(flat)
    assert result["status"] == "flat" and abs(result["rise"]) <= 2 * result["rise_se"]
    assert grid.analysis.convergence([[[2, 1.0], [4, 2.0]]])["status"] == "too short"


def test_tuning_chooses_on_validation_scores_once_every_candidate_has_its_seeds(grid, tmp_path):
    settings = grid.settings.smoke_grid(tmp_path)
    settings = replace(settings, protocol=grid.settings.Protocol(seeds=(0,), tuning_seeds=(7, 8)))

    def record(setting: str, seed: int, last: float) -> dict:
        curve = [[s, -100.0] for s in range(1, 6)] + [
            [s, last] for s in range(6, 10)
        ]  # the last third counts
        return {
            "env": ENV,
            "quality": "expert",
            "algo": "om2p",
            "setting": setting,
            "seed": seed,
            "curve": curve,
        }

    records = grid.analysis.index(
        [record("alpha=1", 7, 10.0), record("alpha=1", 8, 12.0), record("alpha=10", 7, 30.0)]
    )
    tuned = grid.analysis.tuning(settings, records)
    assert tuned[(ENV, "expert", "om2p")]["chosen"] is None  # alpha=10 has one of its two seeds
    records.update(grid.analysis.index([record("alpha=10", 8, 20.0)]))
    entry = grid.analysis.tuning(settings, records)[(ENV, "expert", "om2p")]
    assert entry["chosen"] == "alpha=10" and entry["candidates"]["alpha=1"]["mean"] == pytest.approx(11.0)
    assert entry["applies_to"] == ["expert", "random"]  # tuned on expert for the environment


# ---------------------------------------------------------------- Ray


@pytest.fixture
def ray_cluster():
    """A local Ray cluster in its own process (2 CPUs, its own temp dir); closing its stdin shuts it down."""
    pytest.importorskip("ray", reason="Ray is the optional extra `.[grid]` (make setup installs it)")
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    script = (
        "import sys, ray\n"
        f"context = ray.init(num_cpus=2, include_dashboard=False, _temp_dir={temp!r})\n"
        "print(context.address_info['gcs_address'], flush=True)\n"
        "sys.stdin.read()\n"
        "ray.shutdown()\n"
    )
    head = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=ENVIRONMENT,
    )
    try:
        address = head.stdout.readline().strip()
        assert address, "the Ray head did not start"
        yield address
    finally:
        head.stdin.close()
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
        shutil.rmtree(temp, ignore_errors=True)


def test_a_tiny_grid_runs_as_ray_tasks(ray_cluster, tmp_path):
    make_data(tmp_path)
    command = [
        sys.executable, "-m", "benchmarks.grid", "--smoke", str(tmp_path),
        "--cells", f"{ENV}:random", "--algos", "bc", "--ray-address", ray_cluster,
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=ENVIRONMENT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 records (0 skipped, 1 trained, 0 busy, 0 failed)" in result.stdout
    (path,) = record_files(tmp_path)
    record = json.loads(path.read_text())
    assert record["algo"] == "bc" and np.isfinite(record["test"]["normalised_score"])


def test_a_field_added_at_its_neutral_value_keeps_the_records_a_changed_default_does_not(monkeypatch):
    from benchmarks.grid import records

    dataset, test = {"env": ENV, "seed": 0}, {"seed": 200_000, "episodes": 10}
    before = {"algo": "om2p", "alpha": 3.0}
    monkeypatch.setattr(records, "ADDED_FIELDS", {"new_field": "old_behaviour"})
    digest = records.config_hash(before, dataset, test)
    assert records.config_hash({**before, "new_field": "old_behaviour"}, dataset, test) == digest
    assert records.config_hash({**before, "new_field": "other"}, dataset, test) != digest
    assert records.config_hash({**before, "compile_update": True}, dataset, test) == digest  # machine field
    assert records.config_hash({**before, "alpha": 10.0}, dataset, test) != digest


def test_each_widening_gives_every_weighted_algorithm_the_same_two_extra_candidates():
    from benchmarks.grid.settings import WIDENED_CELLS, full_grid

    settings = full_grid()
    plain = ("cooperative_navigation", "expert")
    assert plain not in WIDENED_CELLS
    for cell, widenings in WIDENED_CELLS.items():
        extra = {
            algo: len(settings.candidates_of(cell, algo)) - len(settings.candidates_of(plain, algo))
            for algo in ("om2p", "flow", "diffusion", "matd3bc")
        }
        assert extra == dict.fromkeys(extra, 2 * widenings), extra
        # the first five stay as they were, so the records of the original grid keep counting
        assert set(settings.candidates_of(plain, "om2p")) < set(settings.candidates_of(cell, "om2p"))
        assert "alpha=1000" in settings.candidates_of(cell, "om2p")
        assert "matd3bc.alpha=50" in settings.candidates_of(cell, "matd3bc")
        assert ("matd3bc.alpha=200" in settings.candidates_of(cell, "matd3bc")) == (widenings >= 2)

"""`python -m benchmarks.results --smoke DIR`: two cells trained through real `om2p train` processes on tiny
synthetic datasets, the markdown tables and the raw JSON written, and the grid resumable: a second invocation
trains nothing, an unfinished run is resumed, a finished run of another config is refused."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training.algos import available_algorithms
from training.data.format import OfflineDataset, dataset_metadata, episode_returns, save_dataset
from training.envs import env_spec

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # four real `om2p train` processes
ENV = "cooperative_navigation"
QUALITIES = ("expert", "random")  # the smoke preset's two cells
# The smoke preset's second column: the bc baseline when this build has it, else an OM2P ablation.
SECOND = "bc" if "bc" in available_algorithms() else "om2p-alpha0"


def synthetic_dataset(quality: str, episodes: int = 4, seed: int = 0) -> OfflineDataset:
    """Random transitions in whole episodes with valid metadata: the smoke run checks plumbing, not learning,
    and collecting real data needs shipped behaviour checkpoints."""
    spec = env_spec(ENV)
    rng = np.random.default_rng(seed)
    t, n = episodes * spec.episode_length, spec.n_agents
    rewards = np.repeat(rng.normal(size=(t, 1)).astype(np.float32), n, axis=1)
    ends = np.zeros(t, dtype=bool)
    ends[spec.episode_length - 1 :: spec.episode_length] = True
    returns = episode_returns(rewards, ends)
    metadata = dataset_metadata(
        spec, quality, seed, t, returns, {"expert": {"mean": -40.0}, "random": {"mean": -150.0}}, "synthetic"
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


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("results")
    for index, quality in enumerate(QUALITIES):
        save_dataset(work / "data" / ENV / f"{quality}.npz", synthetic_dataset(quality, seed=index))
    command = [sys.executable, "-m", "benchmarks.results", "--smoke", str(work)]  # as `make results` runs it
    first = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    return work


@pytest.fixture
def results(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))  # `benchmarks` is a top-level folder, not an installed package
    import benchmarks.results as module

    return module


def final_checkpoints(work: Path) -> dict[Path, float]:
    return {p: p.stat().st_mtime for p in sorted((work / "runs").glob("*/*/*/seed_*/checkpoints/step_*"))}


def test_smoke_writes_the_tables_the_json_and_the_curves(smoke):
    data = json.loads((smoke / "results.json").read_text())
    assert data["this_invocation"] == {"skipped": 0, "trained": 4, "resumed": 0, "busy": 0, "failed": 0}
    for quality in QUALITIES:
        for column in ("om2p", SECOND):
            cell = data["scores"][ENV][quality][column]
            assert cell["n"] == 1 and np.isfinite(cell["mean"])
    assert {(r["algo"], r["network_evaluations_per_action"]) for r in data["inference"]} >= {("om2p", 1)}
    assert all(set(r["ms"]) == {"1", "1024"} for r in data["inference"])
    markdown = (smoke / "results.md").read_text()
    assert f"| quality | om2p | {SECOND} | best |" in markdown
    assert "| *network evaluations per action* | 1 | " in markdown  # the cost, in the score table
    for quality in QUALITIES:
        assert f"| {quality} | " in markdown
    assert "python -m benchmarks.results --smoke" in markdown and "om2p.cli train" in markdown
    assert "torch" in markdown and "## Inference cost" in markdown
    assert f"img/results_{ENV}.png" in markdown and (smoke / "img" / f"results_{ENV}.png").is_file()


def test_second_invocation_trains_nothing(smoke, results, capsys):
    before = final_checkpoints(smoke)
    assert results.main(["--smoke", str(smoke)]) == 0  # in-process: nothing to train, no startup to pay
    assert "4 skipped, 0 trained, 0 resumed, 0 busy, 0 failed" in capsys.readouterr().out
    assert json.loads((smoke / "results.json").read_text())["this_invocation"]["skipped"] == 4
    assert final_checkpoints(smoke) == before


def test_unfinished_run_is_resumed(smoke, results, tmp_path):
    finished = next((smoke / "runs").glob(f"{ENV}/expert/om2p/seed_0"))
    run_dir = shutil.copytree(finished, tmp_path / "seed_0")
    assert results.run_state(run_dir, steps=4) == "done"
    shutil.rmtree(run_dir / "checkpoints" / "step_00000004")  # as if killed after the step-2 checkpoint
    (run_dir / "checkpoints" / "latest").write_text("step_00000002\n")
    assert results.run_state(run_dir, steps=4) == "partial"
    assert results.run_state(tmp_path / "never-started", steps=4) == "new"
    with pytest.raises(results.ResultsError, match="beyond the budget"):
        results.run_state(run_dir, steps=1)


def test_a_run_another_grid_holds_is_left_alone(smoke, results, capsys):
    held = smoke / "runs" / ENV / "expert" / "om2p" / "seed_1"
    held.mkdir(parents=True)
    (held / "train.log").write_text("another grid is training this run\n")
    argv = ["--smoke", str(smoke), "--cells", f"{ENV}:expert", "--algos", "om2p", "--seeds", "0", "1"]
    with results.run_lock(held) as mine:
        assert mine
        assert results.main(argv) == 0
    assert "1 skipped, 0 trained, 0 resumed, 1 busy, 0 failed" in capsys.readouterr().out
    assert (held / "train.log").read_text() == "another grid is training this run\n"  # not removed, not run
    shutil.rmtree(held)


def test_finished_run_with_another_config_is_refused(smoke, results, capsys):
    before = final_checkpoints(smoke)
    assert results.main(["--smoke", str(smoke), "--set", "alpha=0.5"]) == 2
    assert "trained with a different configuration (alpha" in capsys.readouterr().err
    assert final_checkpoints(smoke) == before


def test_report_only_trains_nothing_and_lists_what_is_missing(smoke, results, capsys):
    before = final_checkpoints(smoke)
    assert results.main(["--smoke", str(smoke), "--seeds", "0", "1", "--report-only"]) == 0
    assert final_checkpoints(smoke) == before  # seed 1 was never trained, and still is not
    markdown = (smoke / "results.md").read_text()
    assert "seed_1" in markdown and "--report-only" not in markdown


def test_cells_choose_the_main_table_and_notes_are_kept(smoke, results, tmp_path):
    notes = tmp_path / "notes.md"
    notes.write_text("OM2P ties BC here because the budget is short.\n")
    argv = ["--smoke", str(smoke), "--cells", f"{ENV}:expert", "--notes", str(notes), "--report-only"]
    assert results.main(argv) == 0
    markdown = (smoke / "results.md").read_text()
    assert "| expert | " in markdown and "| random | " not in markdown
    assert "## Notes\n\nOM2P ties BC here because the budget is short." in markdown
    assert results.main(["--smoke", str(smoke), "--cells", "nowhere"]) == 2


def test_cell_set_reaches_every_algorithm_of_its_cell_only(results, capsys, tmp_path):
    args = ["--smoke", str(tmp_path), "--cell-set", f"{ENV}:expert:alpha=3", "--set", "alpha=10"]
    settings = results.resolve_settings(results.build_parser().parse_args(args), args)
    expert, random = (results.Run(ENV, q, "om2p", 0) for q in QUALITIES)
    assert results.requested_config(expert, settings).alpha == 3.0  # the cell's value beats the grid's
    assert results.requested_config(random, settings).alpha == 10.0
    ablated = results.Run(ENV, "expert", "om2p-alpha0", 0)
    assert results.requested_config(ablated, settings).alpha == 0.0  # an ablation still wins
    assert "- cooperative_navigation / expert: `alpha=3`" in "\n".join(results.cell_override_lines(settings))
    assert results.main(["--smoke", str(tmp_path), "--cell-set", f"{ENV}:medium:alpha=3"]) == 2
    assert "outside this grid: cooperative_navigation:medium" in capsys.readouterr().err
    assert results.main(["--smoke", str(tmp_path), "--cell-set", f"{ENV}:expert"]) == 2
    assert "expected ENV:QUALITY:KEY=VALUE" in capsys.readouterr().err


def test_the_default_grid_is_the_published_one(results):
    def settings_for(*args: str):
        return results.resolve_settings(results.build_parser().parse_args(list(args)), list(args))

    published = settings_for()
    assert published.notes is not None and published.notes.name == "results_notes.md"
    assert published.cell_overrides[("predator_prey", "expert")] == ["alpha=3"]
    run = results.Run("cooperative_navigation", "medium", "om2p", 0)
    assert results.requested_config(run, published).alpha == 10.0  # the grid's --set, no cell setting
    # A narrower grid keeps the default settings of its own cells and drops the others without complaint.
    narrow = settings_for("--cells", f"{ENV}:expert", f"{ENV}:medium", "--no-ablations")
    assert narrow.cell_overrides == {(ENV, "expert"): ["alpha=3"]}
    # An explicit --cell-set replaces the cell's default settings; --set adds to the grid's.
    mine = settings_for(
        "--cells", f"{ENV}:expert", "--cell-set", f"{ENV}:expert:alpha=1", "--set", "tau=0.01"
    )
    # The ablation cells are part of this grid too, and keep their default settings.
    assert mine.cell_overrides[(ENV, "expert")] == ["alpha=1"]
    assert mine.cell_overrides[(ENV, "medium-replay")] == ["alpha=1000"]
    assert mine.overrides[-1] == "tau=0.01" and "actor_hidden=[128,128]" in mine.overrides


def test_a_cell_om2p_loses_states_the_gap_in_standard_errors(results):
    def cell(*scores: float) -> dict:
        return {
            "mean": float(np.mean(scores)),
            "std": float(np.std(scores)),
            "n": len(scores),
            "scores": scores,
        }

    table = {ENV: {"medium": {"om2p": cell(40.0, 42.0, 44.0), "bc": cell(46.0, 48.0, 50.0)}}}
    (flag,) = results.not_best_cells(table)
    assert flag["best"] == "bc" and flag["gap"] == pytest.approx(6.0)
    assert flag["gap_se"] == pytest.approx(np.sqrt(4.0 / 3 + 4.0 / 3))  # Welch, sample variances
    assert results.gap_standard_error([1.0, 2.0], [3.0]) is None  # one seed has no spread to measure

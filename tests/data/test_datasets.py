import json

import numpy as np
import pytest

from om2p.cli import main
from training.data import DatasetError, load_dataset, normalised_score, save_dataset
from training.data.collect import collect
from training.data.format import QUALITIES, OfflineDataset
from training.data.omar import export_omar, import_omar

ENV = "cooperative_navigation"


def test_collect_load_round_trip(tiny_dataset, tmp_path):
    path = save_dataset(tmp_path / "expert.npz", tiny_dataset)
    loaded = load_dataset(path, env=ENV)
    assert loaded.observations.shape == (100, 3, 18)
    assert loaded.actions.shape == (100, 3, 5)
    for name in ("observations", "actions", "rewards", "next_observations", "dones", "episode_ends"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(tiny_dataset, name))
    assert loaded.metadata["episodes"] == 4 == int(loaded.episode_ends.sum())
    # Episode returns in the metadata are the sums of the stored team rewards.
    team = loaded.rewards[:, 0].reshape(4, 25).sum(axis=1)
    np.testing.assert_allclose(loaded.episode_returns, team, rtol=1e-5)
    # Consecutive transitions chain within an episode.
    np.testing.assert_array_equal(loaded.next_observations[:24], loaded.observations[1:25])
    assert not loaded.dones.any()  # MPE episodes only end by the time limit


@pytest.mark.parametrize("quality", [q for q in QUALITIES if q != "expert"])
def test_every_quality_collects(quality, checkpoint_root):
    dataset = collect(ENV, quality, 50, seed=0, n_envs=4, checkpoints_root=checkpoint_root, progress=False)
    assert dataset.transitions == 50 and dataset.metadata["quality"] == quality
    assert np.abs(dataset.actions).max() <= 1.0


def test_same_seed_same_dataset(checkpoint_root):
    def make(seed):
        return collect(
            ENV, "medium-replay", 50, seed=seed, n_envs=2, checkpoints_root=checkpoint_root, progress=False
        )

    first, second, other = make(7), make(7), make(8)
    for name in ("observations", "actions", "rewards"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    assert first.metadata == second.metadata
    assert not np.array_equal(first.observations, other.observations)


def _corrupt(dataset: OfflineDataset, how: str) -> OfflineDataset:
    arrays = {
        n: getattr(dataset, n).copy()
        for n in ("observations", "actions", "rewards", "next_observations", "dones", "episode_ends")
    }
    metadata = json.loads(json.dumps(dataset.metadata))
    if how == "nan":
        arrays["rewards"][3, 1] = np.nan
    elif how == "inf":
        arrays["observations"][5, 0, 2] = np.inf
    elif how == "shape":
        arrays["actions"] = arrays["actions"][:, :, :4]
    elif how == "env":
        metadata["env"] = "predator_prey"
    elif how == "version":
        metadata["format_version"] = 99
    return OfflineDataset(**arrays, metadata=metadata)


@pytest.mark.parametrize(
    ("how", "field"),
    [
        ("nan", "rewards"),
        ("inf", "observations"),
        ("shape", "actions"),
        ("env", "metadata.env"),
        ("version", "metadata.format_version"),
    ],
)
def test_loader_rejects_corrupt_files(tiny_dataset, tmp_path, how, field):
    path = tmp_path / f"{how}.npz"
    dataset = _corrupt(tiny_dataset, how)
    if how == "version":
        # save_dataset stamps the current version; write the file by hand like an old/new om2p would.
        arrays = {
            n: getattr(dataset, n)
            for n in ("observations", "actions", "rewards", "next_observations", "dones", "episode_ends")
        }
        np.savez(path, **arrays, metadata=np.array(json.dumps(dataset.metadata)))
    else:
        save_dataset(path, dataset)
    with pytest.raises(DatasetError) as error:
        load_dataset(path, env=ENV)
    assert error.value.field == field
    assert str(path) in str(error.value) and f"'{field}'" in str(error.value)


@pytest.mark.parametrize("missing", ["next_observations", "metadata"])
def test_loader_rejects_missing_keys(tiny_dataset, tmp_path, missing):
    arrays = {
        n: getattr(tiny_dataset, n)
        for n in ("observations", "actions", "rewards", "next_observations", "dones", "episode_ends")
    }
    arrays["metadata"] = np.array(json.dumps(tiny_dataset.metadata))
    del arrays[missing]
    path = tmp_path / "missing.npz"
    np.savez(path, **arrays)
    with pytest.raises(DatasetError, match=rf"missing.npz: field '{missing}': missing"):
        load_dataset(path)


def test_cli_reports_a_corrupt_file_in_one_line(tiny_dataset, tmp_path, capsys):
    path = save_dataset(tmp_path / "bad.npz", _corrupt(tiny_dataset, "nan"))
    assert main(["data", "describe", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.npz" in err and "'rewards'" in err


def test_describe_json_and_plot(tiny_dataset, tmp_path, capsys):
    path = save_dataset(tmp_path / "expert.npz", tiny_dataset)
    png = tmp_path / "returns.png"
    assert main(["data", "describe", str(path), "--json", "--plot", str(png)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["transitions"] == 100 and summary["episodes"] == 4
    assert summary["mean_return"] == pytest.approx(float(np.mean(tiny_dataset.episode_returns)))
    expected = normalised_score(summary["mean_return"], tiny_dataset.metadata["reference_returns"])
    assert summary["normalised_score"] == pytest.approx(expected)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_normalised_score():
    refs = {"expert": -10.0, "random": -30.0}
    assert normalised_score(-10.0, refs) == pytest.approx(100.0)
    assert normalised_score(-30.0, refs) == pytest.approx(0.0)
    assert normalised_score(-20.0, refs) == pytest.approx(50.0)


def test_omar_layout_round_trip(tiny_dataset, tmp_path, capsys):
    data_dir = export_omar(tiny_dataset, tmp_path / "omar" / "simple_spread" / "expert" / "seed_0_data")
    imported = import_omar(data_dir, ENV, "expert", references=tiny_dataset.metadata["references"])
    for name in ("observations", "actions", "rewards", "next_observations", "dones", "episode_ends"):
        np.testing.assert_array_equal(getattr(imported, name), getattr(tiny_dataset, name))
    np.testing.assert_allclose(imported.episode_returns, tiny_dataset.episode_returns, rtol=1e-5)
    assert imported.metadata["references"] == tiny_dataset.metadata["references"]
    out = tmp_path / "imported.npz"
    command = ["data", "import-omar", "--root", str(tmp_path / "omar"), "--env", ENV, "--quality", "expert"]
    command += ["--out", str(out)]
    # No guessed references: both flags are required.
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--expert-return", "-10"])
    assert exit_info.value.code == 2 and "--random-return" in capsys.readouterr().err
    with pytest.raises(ValueError, match="random reference return is required"):
        import_omar(data_dir, ENV, "expert", references={"expert": -10.0})
    assert main([*command, "--expert-return", "-10", "--random-return", "-30", "--expert-se", "0.1"]) == 0
    loaded = load_dataset(out, env=ENV)
    assert loaded.transitions == 100 and loaded.metadata["reference_returns"] == {"expert": -10.0, "random": -30.0}
    assert loaded.metadata["references"]["expert"]["se"] == 0.1 and loaded.metadata["references"]["random"]["se"] is None
    assert "random reference  -30.00 (SE unknown)" in capsys.readouterr().out


def test_report_states_what_the_files_hold(tiny_dataset, checkpoint_root, tmp_path):
    from training.data.report import write_report

    data = tmp_path / "data"
    save_dataset(data / ENV / "expert.npz", tiny_dataset)
    out = tmp_path / "docs" / "datasets.md"
    summaries = write_report(data, [ENV], out, measure_load=False, checkpoints_root=checkpoint_root)
    text = out.read_text()
    expert = summaries[ENV]["expert"]
    assert expert["transitions"] == tiny_dataset.transitions
    assert f"| expert | {tiny_dataset.transitions:,} |" in text
    assert f"{expert['mean_return']:.2f}" in text
    assert (tmp_path / "docs" / "img" / f"datasets_{ENV}.png").stat().st_size > 0
    assert "medium-replay" not in summaries[ENV]  # only files that exist are described
    assert f"--transitions {tiny_dataset.transitions} --seed 1" in text  # the command that made this file
    assert f"om2p data train-behaviour --env {ENV} --steps " in text  # how the behaviour policy was trained


def test_behaviour_command_names_the_flags_that_differ():
    from dataclasses import asdict

    from training.behaviour.matd3 import MATD3Config
    from training.data.report import behaviour_command

    config = asdict(MATD3Config(env="predator_prey", steps=1000, pursuit_shaping=1.0, action_penalty=1e-3))
    command = behaviour_command("predator_prey", config)
    assert "--pursuit-shaping 1 --action-penalty" not in command  # flags keep their declared order
    assert "--action-penalty 0.001 --pursuit-shaping 1" in command
    assert "--warmup" not in command and "--steps 1000" in command
    # A manifest written before a field existed reads as that field's default.
    del config["pursuit_shaping"]
    assert "--pursuit-shaping" not in behaviour_command("predator_prey", config)


def test_references_come_from_the_committed_file_with_standard_errors(tiny_dataset, checkpoint_root):
    from training.data.references import load_references

    committed = load_references(ENV, checkpoint_root)
    references = tiny_dataset.metadata["references"]
    for name in ("expert", "random"):
        assert references[name]["episodes"] == 6  # the fixture's small count (the default is 1,000)
        assert references[name]["mean"] == committed[name]["mean"]
        assert references[name]["se"] == pytest.approx(committed[name]["std"] / np.sqrt(6))
        assert tiny_dataset.metadata["reference_returns"][name] == references[name]["mean"]


def test_collect_refuses_missing_or_stale_references(checkpoint_root, tmp_path):
    import shutil

    from training.data.references import REFERENCES_FILE

    root = tmp_path / "checkpoints"
    shutil.copytree(checkpoint_root, root)
    path = root / ENV / REFERENCES_FILE
    stale = json.loads(path.read_text())
    stale["expert"]["sha256"] = "0" * 64
    path.write_text(json.dumps(stale))
    with pytest.raises(ValueError, match=f"another actor.*om2p data references --env {ENV} --root {root}"):
        collect(ENV, "expert", 25, checkpoints_root=root, progress=False)
    path.unlink()
    with pytest.raises(ValueError, match=f"no reference returns.*om2p data references --env {ENV}"):
        collect(ENV, "expert", 25, checkpoints_root=root, progress=False)


def test_references_command_measures_and_writes_the_file(checkpoint_root, tmp_path, capsys):
    import shutil

    from training.data.references import load_references

    root = tmp_path / "checkpoints"
    shutil.copytree(checkpoint_root, root)
    assert main(["data", "references", "--env", ENV, "--episodes", "5", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    written = load_references(ENV, root)
    assert written["expert"]["episodes"] == 5 and written["random"]["episodes"] == 5
    assert f"expert  {written['expert']['mean']:.3f} +- {written['expert']['se']:.3f}" in out


def test_a_dataset_of_the_previous_format_is_refused_with_the_command_that_remakes_it(tiny_dataset, tmp_path):
    old = dict(tiny_dataset.metadata, format_version=1)
    del old["references"]
    path = tmp_path / "old.npz"
    arrays = {name: getattr(tiny_dataset, name) for name in ("observations", "actions", "rewards")}
    arrays.update(next_observations=tiny_dataset.next_observations, dones=tiny_dataset.dones)
    np.savez(path, **arrays, episode_ends=tiny_dataset.episode_ends, metadata=np.array(json.dumps(old)))
    command = f"om2p data collect --env {ENV} --quality expert --transitions 100 --seed 1 --out {path}"
    with pytest.raises(DatasetError, match="is 1, this om2p reads version 2") as error:
        load_dataset(path)
    assert command in str(error.value)


def test_describe_shows_references_with_their_standard_errors(tiny_dataset, tmp_path, capsys):
    path = save_dataset(tmp_path / "expert.npz", tiny_dataset)
    assert main(["data", "describe", str(path)]) == 0
    text = capsys.readouterr().out
    returns = tiny_dataset.episode_returns
    se = returns.std(ddof=1) / np.sqrt(len(returns))
    assert f"mean return       {returns.mean():.2f} +- {se:.2f}  (4 episodes)" in text
    expert = tiny_dataset.metadata["references"]["expert"]
    assert f"expert reference  {expert['mean']:.2f} +- {expert['se']:.2f}  (6 episodes)" in text

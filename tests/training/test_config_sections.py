"""The per-algorithm config sections (`omar.cql_weight`, ...): set from `--set` and YAML, listed by
`--help-config`, round-tripped through checkpoint.json, old flat names refused with the new name; and
docs/training.md's table of defaults against the dataclasses."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from training.checkpoint import read_info, save_untrained
from training.config import (
    MOVED_FIELDS,
    OMARConfig,
    TrainConfig,
    defaults_table,
    field_defaults,
    load_config,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "training.md"


def test_set_and_yaml_reach_a_section_and_keep_its_other_fields(tmp_path):
    config = load_config(None, ["omar.cql_weight=5", "flow.steps=4"])
    assert config.omar.cql_weight == 5.0 and isinstance(config.omar.cql_weight, float)
    assert config.flow.steps == 4 and config.omar.coef == OMARConfig().coef
    path = tmp_path / "config.yaml"
    path.write_text("omar: {cql_weight: 0.5, coef: 0.9}\nmatd3bc:\n  alpha: 3\n")
    config = load_config(path, ["omar.coef=0.7"])
    assert (config.omar.cql_weight, config.omar.coef, config.matd3bc.alpha) == (0.5, 0.7, 3.0)
    assert config.omar.samples == 10  # untouched fields keep their defaults
    assert config.replace(**{"omar.samples": 4}).omar.samples == 4
    assert config.replace(omar={"elites": 3}).omar.cql_weight == 0.5  # a partial section merges


@pytest.mark.parametrize("old", sorted(MOVED_FIELDS))
def test_old_flat_names_are_refused_with_the_new_name(old, tmp_path):
    new = MOVED_FIELDS[old]
    with pytest.raises(ValueError, match=re.escape(f"{old!r} is now {new!r}")):
        load_config(None, [f"{old}=1"])
    path = tmp_path / "config.yaml"
    path.write_text(f"{old}: 1\n")
    with pytest.raises(ValueError, match=re.escape(f"{old!r} is now {new!r}")):
        load_config(path)


def test_unknown_and_mistyped_section_fields_are_named():
    with pytest.raises(ValueError, match=r"unknown config field.*omar\.cql_wieght"):
        load_config(None, ["omar.cql_wieght=1"])
    with pytest.raises(ValueError, match="unknown config section 'omr'"):
        load_config(None, ["omr.coef=1"])
    with pytest.raises(ValueError, match=re.escape("'omar.samples' must be int")):
        load_config(None, ["omar.samples=many"])
    with pytest.raises(ValueError, match="'omar' must be a mapping"):
        load_config(None, ["omar=5"])


def test_help_config_lists_section_fields_with_defaults_and_docs(capsys):
    from om2p.cli import main

    assert main(["train", "--help-config"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert "cql_weight" not in lines and "flow_steps" not in lines
    assert lines["omar.cql_weight"].split()[1] == "1.0" and "CQL" in lines["omar.cql_weight"]
    assert lines["omar.init_std"].split()[1] == "2.0"
    assert lines["matd3bc.alpha"].split()[1] == "2.5"
    assert lines["flow.steps"].split()[1] == "10"


def test_checkpoint_json_round_trips_the_sections(tmp_path):
    config = TrainConfig.from_dict(
        {"algo": "omar", "actor_hidden": [8], "critic_hidden": [8], "omar.cql_weight": 5, "omar.coef": 0.9}
    )
    step_dir = save_untrained(tmp_path / "run", "cooperative_navigation", config)
    recorded = read_info(step_dir).config
    assert recorded["omar"]["cql_weight"] == 5.0 and "cql_weight" not in recorded
    assert TrainConfig.from_checkpoint_dict(recorded) == config.replace(env="cooperative_navigation")


def test_checkpoints_of_older_versions_load_their_flat_fields_into_the_sections(tmp_path):
    step_dir = save_untrained(tmp_path / "run", "cooperative_navigation", TrainConfig(actor_hidden=[8]))
    info_path = step_dir / "checkpoint.json"
    info = json.loads(info_path.read_text())
    for section in ("flow", "diffusion", "matd3bc", "omar"):
        del info["config"][section]
    info["config"].update(flow_steps=3, policy_delay=4, cql_weight=2.0, omar_top_k=2, omar_samples=8)
    info_path.write_text(json.dumps(info))
    config = TrainConfig.from_checkpoint_dict(read_info(step_dir).config)
    assert config.flow.steps == 3 and config.omar.cql_weight == 2.0
    assert config.matd3bc.policy_delay == 4 and config.omar.policy_delay == 4  # it was shared
    assert (config.omar.elites, config.omar.samples) == (2, 8)
    from training.checkpoint import load_policy

    load_policy(step_dir)  # the policy is rebuilt from the upgraded config


def _doc_table() -> str:
    text = DOC.read_text()
    begin, end = "<!-- defaults: begin -->", "<!-- defaults: end -->"
    assert begin in text and end in text, f"{DOC} has no generated defaults table"
    return text[text.index(begin) + len(begin) : text.index(end)].strip()


def test_training_doc_lists_every_default_as_the_config_has_it():
    # Regenerate with `python -m training.config` when a field or default changes.
    assert _doc_table() == defaults_table()


def test_training_doc_prose_states_the_time_sampler_defaults_of_the_config():
    defaults = {name: value for name, value, _ in field_defaults()}
    text = DOC.read_text()
    assert f"`time_sampler={defaults['time_sampler']}`" in text and "default" in text
    assert f"`equal_time_ratio={defaults['equal_time_ratio']}`" in text


def test_published_omar_settings_are_valid_overrides_for_every_dataset():
    from training.data.format import QUALITIES
    from training.envs import ENV_NAMES
    from training.published_settings import published_overrides

    for env in ENV_NAMES:
        for quality in QUALITIES:
            overrides = published_overrides("omar", env, quality)
            assert overrides, f"no published OMAR settings for {env}/{quality}"
            load_config(None, overrides)  # each one names a real field with a valid value
    # ling-pan/OMAR's env_config_map: simple_spread omar_coe 1.0 everywhere, cql_alpha 0.5/1/5/5.
    expected = {"random": 0.5, "medium-replay": 1.0, "medium": 5.0, "expert": 5.0}
    for quality, weight in expected.items():
        config = load_config(None, published_overrides("omar", "cooperative_navigation", quality))
        assert (config.omar.coef, config.omar.cql_weight, config.omar.search) == (1.0, weight, "softmax")
    config = load_config(None, published_overrides("omar", "predator_prey", "medium"))
    assert (config.omar.coef, config.omar.cql_weight) == (0.7, 5.0)
    config = load_config(None, published_overrides("omar", "halfcheetah_2x3", "expert"))
    assert (config.omar.search, config.omar.iterations, config.omar.samples, config.omar.elites) == (
        "elite",
        2,
        20,
        5,
    )
    assert published_overrides("om2p", "cooperative_navigation", "expert") == []

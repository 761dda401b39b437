"""`om2p --help` and every subcommand's `--help`, as a new user reads them: each says what the command does
in whole sentences, and every option that has a default shows it."""

from __future__ import annotations

import argparse
import dataclasses
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from om2p.cli import build_parser
from server.testing import REPOSITORY_ROOT


def parsers(
    parser: argparse.ArgumentParser, name: str = "om2p"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, subparser in action.choices.items():
                yield from parsers(subparser, f"{name} {sub_name}")


ALL = dict(parsers(build_parser()))


def has_default(action: argparse.Action) -> bool:
    default = action.default
    return bool(action.option_strings) and not (
        default is None or default is False or default is argparse.SUPPRESS or default == []
    )


@pytest.mark.parametrize("name", list(ALL))
def test_help_describes_the_command_in_whole_sentences(name: str) -> None:
    parser = ALL[name]
    assert parser.description, f"`{name} --help` says nothing about what the command does"
    assert re.search(r"[.!?)`]$", parser.description.strip()), f"`{name} --help` stops mid-sentence"
    text = parser.format_help()
    assert " ".join(parser.description.split()[-3:]) in " ".join(text.split())


@pytest.mark.parametrize("name", list(ALL))
def test_help_shows_every_default(name: str) -> None:
    parser = ALL[name]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if has_default(action):
            assert action.help, f"`{name}`: {action.option_strings[-1]} has no help"
            shown = formatter._expand_help(action)
            assert "default" in shown.lower(), (
                f"`{name} --help` hides the default of {action.option_strings[-1]}"
            )


def test_data_collect_shows_its_defaults() -> None:
    text = " ".join(ALL["om2p data collect"].format_help().split())
    assert "(default: 1000000)" in text and "(default: 0)" in text and "make-default" in text


def test_train_behaviour_states_matd3_defaults_truly() -> None:
    """The stated MATD3 defaults (the CLI does not import torch to read them) equal MATD3Config's."""
    from training.behaviour.matd3 import MATD3Config

    config = {field.name: field.default for field in dataclasses.fields(MATD3Config)}
    for action in ALL["om2p data train-behaviour"]._actions:
        stated = re.search(r"MATD3 default: ([\d.e-]+)", action.help or "")
        if stated:
            assert float(stated.group(1)) == pytest.approx(config[action.dest]), action.dest


def test_om2p_help_as_printed() -> None:
    answer = subprocess.run(
        [sys.executable, "-m", "om2p", "--help"],
        cwd=REPOSITORY_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    paragraphs = [p for p in answer.stdout.split("\n\n") if p.strip()]
    assert all(paragraphs[i].rstrip().endswith((".", ")")) for i in (1, -1)), answer.stdout
    assert "loadgen" in answer.stdout and "Traceback" not in answer.stderr

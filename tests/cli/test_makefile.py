"""What `make setup` and `make train` tell a new user before their long silent steps (read from `make -n`,
which prints the recipes without running them)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from server.testing import REPOSITORY_ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def plan(*targets: str) -> list[str]:
    # -W pyproject.toml: as if it had changed, so that setup's recipe is printed even when .venv is current.
    command = ["make", "-n", "-W", "pyproject.toml", *targets]
    return subprocess.run(
        command, cwd=REPOSITORY_ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()


def test_setup_says_what_each_install_step_installs() -> None:
    lines = plan("setup")
    installs = [index for index, line in enumerate(lines) if "pip install" in line]
    assert len(installs) == 3
    for index in installs:
        assert lines[index - 1].startswith("echo ") and "make setup:" in lines[index - 1], lines[index - 1]
    assert "minutes" in next(line for line in lines if line.startswith("echo "))


def test_train_says_how_long_it_takes() -> None:
    announcement = next(line for line in plan("train") if line.startswith('echo "make train'))
    assert re.search(r"about \d+ minutes", announcement), announcement

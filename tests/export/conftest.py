"""One checkpoint and one default-path export of it, shared by the export tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.exporter import ExportOptions, ExportResult, export_checkpoint
from export.testing import write_checkpoint


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="session")
def exported(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    """The default path once (dynamo exporter, fp16 too): the slowest step of the suite, so it is shared."""
    out = tmp_path_factory.mktemp("models")
    return export_checkpoint(checkpoint, out, ExportOptions(fp16=True, tensorrt="off"))

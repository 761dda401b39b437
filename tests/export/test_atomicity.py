"""A failed check writes nothing; a version directory is published whole or not at all; versions are
never overwritten."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.errors import ExportError
from export.exporter import export_checkpoint
from export.manifest import load_manifest, resolve_version_dir
from export.repository import stage_version
from export.testing import fast_options


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_failed_parity_check_writes_nothing(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "models"
    # fp16 rounding (about 1e-4 here) cannot meet 1e-7: the check fails after model.onnx was already staged.
    with pytest.raises(ExportError, match=r"parity check failed: model\.fp16\.onnx .*max abs error") as error:
        export_checkpoint(checkpoint, out, fast_options(fp16=True, fp16_tolerance=1e-7))
    assert "nothing was written" in str(error.value)
    assert not out.exists()


def test_failed_export_leaves_an_existing_repository_unchanged(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "models"
    first = export_checkpoint(checkpoint, out, fast_options())
    before = {path: (out / path).read_bytes() for path in tree(out) if (out / path).is_file()}
    with pytest.raises(ExportError):
        export_checkpoint(checkpoint, out, fast_options(fp16=True, fp16_tolerance=1e-7))
    after = {path: (out / path).read_bytes() for path in tree(out) if (out / path).is_file()}
    assert after == before
    assert resolve_version_dir(out) == first.version_dir


def test_versions_count_up_and_are_never_overwritten(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "models"
    first = export_checkpoint(checkpoint, out, fast_options(eval_episodes=0))
    second = export_checkpoint(checkpoint, out, fast_options(eval_episodes=0))
    assert (first.manifest.version, second.manifest.version) == (1, 2)
    assert resolve_version_dir(out) == second.version_dir
    with pytest.raises(ExportError, match="already exists; versions are never overwritten"):
        export_checkpoint(checkpoint, out, fast_options(eval_episodes=0, version=1))
    load_manifest(first.version_dir)  # untouched: its hashes still match


def test_a_version_being_staged_is_invisible_until_published(tmp_path: Path) -> None:
    out = tmp_path / "models"
    with stage_version(out, "policy") as staged:
        (staged.path / "model.onnx").write_bytes(b"half written")
        assert not staged.target.exists()
        assert [p.name for p in out.iterdir()] == [staged.path.name]
        assert staged.path.name.startswith(".")  # resolve_version_dir and the server skip hidden entries
        published = staged.publish()
    assert published == out / "policy" / "1"
    assert tree(out) == ["policy", "policy/1", "policy/1/model.onnx"]


def test_an_exception_while_staging_removes_everything(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "models"
    with pytest.raises(RuntimeError), stage_version(out, "policy") as staged:
        (staged.path / "model.onnx").write_bytes(b"partial")
        raise RuntimeError("interrupted")
    assert not (tmp_path / "deep").exists()

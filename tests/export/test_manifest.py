"""manifest.json: what export writes validates against the schema the server uses, and tampering with the
manifest or any file it lists is refused with a message naming the file and field."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import jsonschema
import pytest

from export.manifest import (
    MANIFEST_FILENAME,
    ManifestError,
    ModelManifest,
    json_schema,
    load_manifest,
    resolve_version_dir,
    sha256_file,
)


@pytest.fixture
def version_copy(exported, tmp_path: Path) -> Path:
    """A private copy of the exported version to damage."""
    target = tmp_path / "models" / exported.manifest.name / "1"
    shutil.copytree(exported.version_dir, target)
    return target


def test_written_manifest_validates_against_the_json_schema(exported) -> None:
    data = json.loads((exported.version_dir / MANIFEST_FILENAME).read_text())
    jsonschema.validate(data, json_schema())
    assert ModelManifest.model_validate(data) == exported.manifest


def test_manifest_describes_the_checkpoint(exported, checkpoint: Path) -> None:
    from training.checkpoint import read_info

    info = read_info(checkpoint)
    manifest = load_manifest(exported.version_dir)
    assert (manifest.agents, manifest.obs_dim, manifest.act_dim) == (info.agents, info.obs_dim, info.act_dim)
    assert manifest.source_checkpoint_sha256 == info.weights_sha256
    assert manifest.config_summary["actor_hidden"] == info.config["actor_hidden"]
    for artifact in manifest.files:
        assert sha256_file(exported.version_dir / artifact.path) == artifact.sha256
    assert manifest.evaluation is not None
    assert len(manifest.evaluation.returns) == manifest.evaluation.episodes == info.config["eval_episodes"]


def test_resolve_version_dir_finds_the_published_version(exported) -> None:
    model_dir = exported.version_dir.parent
    assert resolve_version_dir(model_dir.parent) == exported.version_dir
    assert resolve_version_dir(model_dir) == exported.version_dir


def test_a_modified_model_file_is_refused(version_copy: Path) -> None:
    with open(version_copy / "model.onnx", "r+b") as handle:
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ManifestError, match=r"model\.onnx: sha256 does not match"):
        load_manifest(version_copy)


def test_a_missing_listed_file_is_refused(version_copy: Path) -> None:
    (version_copy / "model.fp16.onnx").unlink()
    with pytest.raises(ManifestError, match=r"'model\.fp16\.onnx' is missing"):
        load_manifest(version_copy)


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda m: m.pop("obs_dim"), "obs_dim"),
        (lambda m: m.update(opset=13), "opset"),
        (lambda m: m["files"][0].update(path="../../etc/passwd"), "files.0.path"),
        (lambda m: m["inputs"][0].update(shape=[-1, 3, 17]), "(root)': Value error, inputs must be"),
        (lambda m: m.update(action_mask=[[True] * 5] * 2), "(root)': Value error, action_mask must be"),
    ],
)
def test_an_invalid_manifest_is_refused_naming_the_field(version_copy: Path, change, field: str) -> None:
    path = version_copy / MANIFEST_FILENAME
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=re.escape(f"manifest.json: field '{field}")):
        load_manifest(version_copy)

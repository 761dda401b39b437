"""ModelSpec from an exported model's manifest (the only way the server reads export's artifacts)."""

from __future__ import annotations

from pathlib import Path

from export.manifest import ModelManifest, load_manifest, resolve_version_dir
from server.backends import ModelSpec


def load_exported(model_path: Path) -> tuple[Path, ModelManifest, ModelSpec]:
    """Resolve `model_path` to a version dir, validate its manifest and file hashes."""
    version_dir = resolve_version_dir(Path(model_path))
    manifest = load_manifest(version_dir)
    spec = ModelSpec.from_manifest(manifest, version_dir)
    return version_dir, manifest, spec

"""ModelSpec from an exported model's manifest (the only way the server reads export's artifacts)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from export.manifest import ModelManifest, load_manifest, resolve_version_dir
from server.backends import ModelSpec


def load_exported(model_path: Path) -> tuple[Path, ModelManifest, ModelSpec]:
    """Resolve `model_path` to a version dir, validate its manifest and file hashes."""
    version_dir = resolve_version_dir(Path(model_path))
    manifest = load_manifest(version_dir)
    spec = ModelSpec(
        name=manifest.name,
        version=manifest.version,
        agents=tuple(manifest.agents),
        obs_dim=manifest.obs_dim,
        act_dim=manifest.act_dim,
        action_mask=np.asarray(manifest.action_mask, dtype=bool),
        action_low=manifest.action_low,
        action_high=manifest.action_high,
        source=version_dir,
        env=manifest.env,
        algo=manifest.algo,
    )
    return version_dir, manifest, spec

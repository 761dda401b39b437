"""Atomic publication of a model version: `DIR/<name>/<version>/` appears complete or not at all.

Files are written into a hidden staging directory beside the target (same filesystem, so the final
`os.rename` is atomic), fsynced, and renamed into place only after every check passed. The server's
`resolve_version_dir` only looks at numeric directories, so a staging directory is never served.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from export.errors import ExportError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # the manifest's `name` pattern
STAGING_PREFIX = ".staging-"


def existing_versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and p.is_dir())


def next_version(model_dir: Path) -> int:
    """One more than the newest published version (1 for a new model)."""
    versions = existing_versions(model_dir)
    return versions[-1] + 1 if versions else 1


def _fsync_path(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_tree(directory: Path) -> None:
    """Flush every file and the directory entries, so a crash after the rename never shows empty files."""
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            _fsync_path(path)
    for path in sorted((p for p in directory.rglob("*") if p.is_dir()), reverse=True):
        _fsync_path(path)
    _fsync_path(directory)


class StagedVersion:
    """A version directory under construction. Write files into `path`; `publish()` renames it into place."""

    def __init__(self, root: Path, name: str, version: int, path: Path) -> None:
        self.root, self.name, self.version, self.path = root, name, version, path

    @property
    def target(self) -> Path:
        return self.root / self.name / str(self.version)

    def publish(self) -> Path:
        model_dir = self.root / self.name
        _fsync_tree(self.path)
        model_dir.mkdir(parents=True, exist_ok=True)
        try:
            # rename(2) refuses a non-empty target: two concurrent exports never overwrite each other.
            os.rename(self.path, self.target)
        except OSError as error:
            raise ExportError(
                f"{self.target}: could not publish ({error.strerror}); another export may have taken version "
                f"{self.version} meanwhile: run again"
            ) from None
        _fsync_path(model_dir)
        return self.target


@contextmanager
def stage_version(root: Path | str, name: str, version: int | None = None) -> Iterator[StagedVersion]:
    """Stage `root/name/<version>` (default: the next version). On any exception the staging directory and
    any directory this call created are removed, so a failed export leaves the filesystem as it found it."""
    root = Path(root)
    if not NAME_PATTERN.match(name):
        raise ExportError(
            f"--name {name!r}: use letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    model_dir = root / name
    if version is None:
        version = next_version(model_dir)
    elif version < 1:
        raise ExportError(f"--version {version}: versions start at 1")
    elif (model_dir / str(version)).exists():
        raise ExportError(f"{model_dir / str(version)}: already exists; versions are never overwritten")
    created = [p for p in (root, *root.parents) if not p.exists()]
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{name}-{version}-", dir=root))
    # mkdtemp makes 0700; a published version must be readable like any directory (a server under another uid).
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)
    staged = StagedVersion(root, name, version, staging)
    try:
        yield staged
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for directory in created:  # innermost first: only directories this export made, and only if empty
            try:
                directory.rmdir()
            except OSError:
                break
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # after a publish it no longer exists

#!/usr/bin/env python3
"""Entrypoint of the GPU image: build the TensorRT engine at the first start when the model's manifest lists
none, check it against ONNX Runtime, record it in the manifest, then hand over to `om2p serve` (arguments
are passed through).

A TensorRT engine only runs on the GPU model and TensorRT version that built it, so it is built where it
runs rather than shipped in the image. The build itself is export's (`export.tensorrt_engine`), so the
engine and its optimisation profile are the same as `om2p export --tensorrt` would make.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from export.manifest import (
    MANIFEST_FILENAME,
    ArtifactFile,
    ModelManifest,
    ParityRecord,
    TensorRTInfo,
    load_manifest,
    resolve_version_dir,
    sha256_file,
)

ENGINE_FILENAMES = {"fp32": "model.plan", "fp16": "model.fp16.plan"}
DEFAULT_MODEL_DIR = "/opt/om2p/models"
# Against ONNX Runtime rather than PyTorch (the image has no checkpoint): TensorRT may run fp32 layers in TF32
# on Ampere and later GPUs, so fp32 gets a looser bound than export's check against PyTorch.
PARITY_TOLERANCES = {"fp32": 1e-3, "fp16": 1e-2}


def register_engine(
    version_dir: Path, engine_path: Path, precision: str, info: TensorRTInfo, parity: ParityRecord | None
) -> ModelManifest:
    """Add the engine to the manifest (with its sha256, which the server checks) and write it atomically,
    so a crash mid-write never leaves a manifest naming a missing or half-written file."""
    manifest = load_manifest(version_dir, verify_files=False)
    artifact = ArtifactFile(
        path=engine_path.name,
        sha256=sha256_file(engine_path),
        bytes=engine_path.stat().st_size,
        format="tensorrt",
        precision=precision,
    )
    updated = manifest.model_copy(
        update={
            "files": [*(f for f in manifest.files if f.path != engine_path.name), artifact],
            "parity": [
                *(p for p in manifest.parity if p.file != engine_path.name),
                *([parity] if parity else []),
            ],
            "tensorrt": info,
        }
    )
    with tempfile.NamedTemporaryFile("w", dir=version_dir, suffix=".json", delete=False) as handle:
        handle.write(updated.model_dump_json(indent=2) + "\n")
    os.replace(handle.name, version_dir / MANIFEST_FILENAME)
    return load_manifest(version_dir)


def build_checked_engine(version_dir: Path, manifest: ModelManifest, fp16: bool) -> Path:
    """Build the engine from the fp32 ONNX graph and refuse it unless it matches ONNX Runtime."""
    from export.parity import check_parity, onnxruntime_runner, require_parity
    from export.tensorrt_engine import build_engine, tensorrt_runner

    onnx = manifest.file("onnx", "fp32")
    if onnx is None:
        raise ValueError(
            f"{version_dir / MANIFEST_FILENAME}: no fp32 ONNX file to build a TensorRT engine from"
        )
    precision = "fp16" if fp16 else "fp32"
    engine_path = version_dir / ENGINE_FILENAMES[precision]
    n, obs_dim, act_dim = manifest.n_agents, manifest.obs_dim, manifest.act_dim
    built = build_engine(version_dir / onnx.path, engine_path, n, obs_dim, act_dim, fp16)
    try:
        result = require_parity(
            check_parity(
                onnxruntime_runner(version_dir / onnx.path),
                tensorrt_runner(engine_path, n, act_dim),
                file=engine_path.name,
                backend="tensorrt",
                precision=precision,
                # The manifest has no normalisation statistics (the graph normalises inside): unit-scale inputs.
                obs_mean=np.zeros((n, obs_dim), np.float32),
                obs_std=np.ones((n, obs_dim), np.float32),
                act_dim=act_dim,
                tolerance=PARITY_TOLERANCES[precision],
            )
        )
    except Exception:
        engine_path.unlink(missing_ok=True)  # unlisted and untrusted: the next start builds again
        raise
    register_engine(
        version_dir, engine_path, precision, TensorRTInfo(**built.__dict__), ParityRecord(**result.record())
    )
    return engine_path


def ensure_engine(model_path: Path, fp16: bool) -> Path | None:
    """Build and register an engine when the manifest lists none; return its path, or None if one existed."""
    version_dir = resolve_version_dir(model_path)
    manifest = load_manifest(version_dir)
    if any(artifact.format == "tensorrt" for artifact in manifest.files):
        return None
    print(f"om2p: building the TensorRT engine for {version_dir} (first start on this GPU)", flush=True)
    started = time.monotonic()
    engine_path = build_checked_engine(version_dir, manifest, fp16)
    print(f"om2p: engine built and checked in {time.monotonic() - started:.0f} s: {engine_path}", flush=True)
    return engine_path


def main() -> None:
    if os.environ.get("OM2P_BACKEND", "tensorrt") == "tensorrt":
        model_path = Path(os.environ.get("OM2P_MODEL", DEFAULT_MODEL_DIR))
        try:
            ensure_engine(model_path, fp16=os.environ.get("OM2P_TENSORRT_FP16", "0") == "1")
        except (ValueError, FileNotFoundError) as error:  # ManifestError and ExportError are ValueErrors
            print(f"om2p-gpu-entrypoint: error: {error}", file=sys.stderr)
            sys.exit(2)
    os.execvp("om2p", ["om2p", "serve", *sys.argv[1:]])


if __name__ == "__main__":
    main()

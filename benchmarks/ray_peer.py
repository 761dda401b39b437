"""The peer: the same ONNX model behind Ray Serve with `@serve.batch`. Ray is never a project dependency;
it must live in its own throwaway venv, named by `OM2P_RAY_PYTHON` (a python with `ray[serve]` and
`onnxruntime`). Without one the peer is skipped with the reason printed and recorded."""

from __future__ import annotations

import os
from pathlib import Path


def run(model: Path) -> dict:
    python = os.environ.get("OM2P_RAY_PYTHON")
    if not python or not Path(python).exists():
        return {
            "skipped": (
                "Ray Serve not measured: no throwaway venv with ray[serve] (set OM2P_RAY_PYTHON); "
                "the peer harness is not written yet"
            )
        }
    return {"skipped": f"Ray Serve not measured: the harness for {python} is not written yet"}

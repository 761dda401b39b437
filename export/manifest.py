"""`manifest.json`: the only contract between export and the server. Pydantic only: no torch, no onnx.

A model repository is laid out like Triton's: `<root>/<name>/<version>/{manifest.json, model.onnx, ...}`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

MANIFEST_SCHEMA_VERSION = 1
MANIFEST_FILENAME = "manifest.json"


class TensorSpec(BaseModel):
    """One graph input or output; -1 marks the dynamic batch axis."""

    model_config = ConfigDict(extra="forbid")

    name: str
    shape: list[int]
    dtype: Literal["float32"] = "float32"


class ArtifactFile(BaseModel):
    """A file of the version directory, with the hash the server checks before loading it."""

    model_config = ConfigDict(extra="forbid")

    # A plain file name: the server opens version_dir / path, which must never leave the version directory.
    path: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="file name in the version directory"
    )
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)
    format: Literal["onnx", "tensorrt"]
    precision: Literal["fp32", "fp16"]


class EvaluationSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    episodes: int = Field(ge=0)
    mean_return: float
    normalised_score: float | None = None
    seeds: list[int] = Field(default_factory=list)
    returns: list[float] = Field(default_factory=list, description="per seed, in seed order (deterministic)")


class ParityRecord(BaseModel):
    """Evidence that one artifact computes what the checkpoint computes (max abs error on actions)."""

    model_config = ConfigDict(extra="forbid")

    file: str
    backend: str
    precision: Literal["fp32", "fp16"]
    batch_sizes: list[int]
    max_abs_error: float
    tolerance: float
    seed: int


class TensorRTInfo(BaseModel):
    """A TensorRT plan runs only on the GPU model and TensorRT version it was built with."""

    model_config = ConfigDict(extra="forbid")

    tensorrt_version: str
    device: str
    profile: dict[str, int] = Field(description="batch sizes min / opt / max of the optimisation profile")


class ModelManifest(BaseModel):
    """What a server needs to know to load, validate and describe one exported policy version."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = MANIFEST_SCHEMA_VERSION
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    version: int = Field(ge=1)
    algo: str
    env: str
    agents: list[str] = Field(min_length=1)
    obs_dim: int = Field(ge=1)
    act_dim: int = Field(ge=1)
    action_mask: list[list[bool]] = Field(description="[n_agents][act_dim]: True where an entry is real")
    action_low: float = -1.0
    action_high: float = 1.0
    network_evaluations_per_action: int = Field(ge=1, description="1 for one-step OM2P, K for K-step")
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    files: list[ArtifactFile] = Field(min_length=1)
    opset: int = Field(ge=17)
    source_checkpoint_sha256: str
    config_summary: dict = Field(default_factory=dict)
    evaluation: EvaluationSummary | None = None
    created_at: str
    parity: list[ParityRecord] = Field(default_factory=list)
    tensorrt: TensorRTInfo | None = None

    @property
    def n_agents(self) -> int:
        return len(self.agents)

    @model_validator(mode="after")
    def _check_shapes(self) -> ModelManifest:
        if len(self.action_mask) != self.n_agents or any(
            len(row) != self.act_dim for row in self.action_mask
        ):
            raise ValueError(f"action_mask must be [{self.n_agents}][{self.act_dim}]")
        expected = {
            "obs": [-1, self.n_agents, self.obs_dim],
            "noise": [-1, self.n_agents, self.act_dim],
        }
        inputs = {tensor.name: tensor.shape for tensor in self.inputs}
        if inputs != expected:
            raise ValueError(f"inputs must be {expected}, got {inputs}")
        outputs = {tensor.name: tensor.shape for tensor in self.outputs}
        if outputs != {"actions": [-1, self.n_agents, self.act_dim]}:
            raise ValueError(f"outputs must be {{'actions': [-1, {self.n_agents}, {self.act_dim}]}}")
        return self

    def file(self, format: str, precision: str = "fp32") -> ArtifactFile | None:
        return next((f for f in self.files if f.format == format and f.precision == precision), None)


class ManifestError(ValueError):
    """A manifest or an artifact that cannot be trusted; the message names the file and the field."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(version_dir: Path, verify_files: bool = True) -> ModelManifest:
    """Read and validate `version_dir/manifest.json`; with `verify_files`, check every file's sha256."""
    path = Path(version_dir) / MANIFEST_FILENAME
    try:
        manifest = ModelManifest.model_validate(json.loads(path.read_text()))
    except FileNotFoundError:
        raise ManifestError(f"{path}: no manifest (is this a model version directory?)") from None
    except json.JSONDecodeError as error:
        raise ManifestError(f"{path}: not valid JSON: {error}") from None
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "(root)"
        raise ManifestError(f"{path}: field {field!r}: {first['msg']}") from None
    if verify_files:
        for artifact in manifest.files:
            file_path = Path(version_dir) / artifact.path
            if not file_path.is_file():
                raise ManifestError(f"{path}: listed file {artifact.path!r} is missing")
            if sha256_file(file_path) != artifact.sha256:
                raise ManifestError(f"{file_path}: sha256 does not match the manifest (corrupt or replaced)")
    return manifest


def resolve_version_dir(model_path: Path, name: str | None = None) -> Path:
    """Accept a version directory, a model directory (newest numeric version) or a repository root
    holding exactly one model (or `name`)."""
    model_path = Path(model_path)
    if (model_path / MANIFEST_FILENAME).is_file():
        return model_path
    versions = sorted(
        (p for p in model_path.glob("*") if p.name.isdigit() and p.is_dir()), key=lambda p: int(p.name)
    )
    if versions:
        return versions[-1]
    models = sorted(p for p in model_path.glob("*") if p.is_dir() and not p.name.startswith("."))
    if name is not None:
        models = [p for p in models if p.name == name]
    if len(models) == 1:
        return resolve_version_dir(models[0])
    if not model_path.exists():
        raise ManifestError(f"{model_path}: no such model directory")
    raise ManifestError(
        f"{model_path}: expected a version directory with {MANIFEST_FILENAME}, a model directory with "
        f"numeric versions, or a repository with one model (found {[p.name for p in models]})"
    )


def json_schema() -> dict:
    """The manifest's JSON Schema, for tools outside Python."""
    return ModelManifest.model_json_schema()

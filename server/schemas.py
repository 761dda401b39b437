"""Pydantic models of the HTTP API: the OpenAPI schema at /openapi.json is the contract."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from server.limits import MAX_REQUEST_ID_CHARS, MAX_SEED

JointObservation = list[list[float]]  # [n_agents][obs_dim]
JointAction = list[list[float]]  # [n_agents][act_dim]


class ActRequest(BaseModel):
    observations: JointObservation | list[JointObservation] = Field(
        description="[n_agents][obs_dim] for one environment, or [batch][n_agents][obs_dim]",
        examples=[[[0.0] * 4, [0.0] * 4]],
    )
    deterministic: bool = Field(False, description="zero noise: the policy's mean action")
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="seeds this request's noise (reproducible actions)"
    )
    request_id: str | None = Field(
        None, max_length=MAX_REQUEST_ID_CHARS, description="echoed in the response"
    )


class Timing(BaseModel):
    queue_us: int = Field(description="time in the batcher's queue")
    compute_us: int = Field(description="the batched forward pass this request was part of")


class ActResponse(BaseModel):
    actions: JointAction | list[JointAction] = Field(description="same nesting as observations, in [-1, 1]")
    model: str
    version: int
    request_id: str | None
    timing: Timing


class ErrorResponse(BaseModel):
    error: str = Field(description="what is wrong, naming the field and the expected shape")
    field: str | None = None


class ReloadRequest(BaseModel):
    model: str | None = Field(None, description="path to load; default: the newest version of --model")
    force: bool = Field(False, description="reload even if that version is already serving")


class ModelDescription(BaseModel):
    name: str
    version: int
    backend: str
    providers: str
    env: str
    algo: str
    agents: list[str]
    obs_dim: int
    act_dim: int
    action_mask: list[list[bool]]
    source: str
    loaded_at: float
    warmup_s: float


class ModelList(BaseModel):
    models: list[ModelDescription]


class ReloadResponse(BaseModel):
    reloaded: bool
    model: ModelDescription
    previous_version: int | None = None
    reason: str | None = None


class ReadyResponse(BaseModel):
    ready: bool
    reason: str | None = None
    model: str | None = None
    version: int | None = None


# --- KServe Open Inference Protocol v2 ---


class V2Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any] | None = Field(None, description="row-major values (flat or nested); absent when binary")
    parameters: dict[str, Any] | None = None


class V2RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class V2InferRequest(BaseModel):
    id: str | None = Field(None, max_length=MAX_REQUEST_ID_CHARS)
    parameters: dict[str, Any] | None = Field(None, description="om2p: deterministic (bool), seed (int)")
    inputs: list[V2Tensor]
    outputs: list[V2RequestedOutput] | None = None


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[V2Tensor]


class V2TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]

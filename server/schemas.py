"""Pydantic models of the HTTP API: the OpenAPI schema at /openapi.json is the contract."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, StrictBool

from server.limits import MAX_OBSERVATION_ABS, MAX_REQUEST_ID_CHARS, MAX_SEED

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
    force: StrictBool = Field(False, description="reload even if that version is already serving")


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


# --- the OpenAPI schema with the served model's shapes ---


def _number() -> dict:
    return {"type": "number", "minimum": -MAX_OBSERVATION_ABS, "maximum": MAX_OBSERVATION_ABS}


def _matrix(rows: int, columns: int, item: dict) -> dict:
    row = {"type": "array", "minItems": columns, "maxItems": columns, "items": item}
    return {"type": "array", "minItems": rows, "maxItems": rows, "items": row}


def _one_or_batch(matrix: dict, max_rows: int, description: str) -> dict:
    batch = {"type": "array", "minItems": 1, "maxItems": max_rows, "items": matrix}
    return {"description": description, "anyOf": [matrix, batch]}


def v2_infer_body(spec, max_rows: int) -> dict:
    """The v2 inference request as JSON (the binary tensor extension is described in the route's text):
    one input `obs`, one environment `[n_agents, obs_dim]` with its values flat, row-major."""
    values = spec.n_agents * spec.obs_dim
    nullable_object = {"type": ["object", "null"]}
    tensor = {
        "type": "object",
        "required": ["name", "shape", "datatype", "data"],
        "properties": {
            "name": {"const": "obs"},
            "shape": {"const": [spec.n_agents, spec.obs_dim]},
            "datatype": {"const": "FP32"},
            "data": {"type": "array", "minItems": values, "maxItems": values, "items": _number()},
            "parameters": nullable_object,
        },
    }
    flag = {"type": "boolean"}
    return {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": ["string", "null"], "maxLength": MAX_REQUEST_ID_CHARS},
            "parameters": {
                "type": ["object", "null"],
                "properties": {
                    "deterministic": flag,
                    "seed": {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_SEED},
                    "binary_data_output": flag,
                },
            },
            "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": tensor},
            "outputs": {
                "type": ["array", "null"],
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"const": "actions"},
                        "parameters": {"type": ["object", "null"], "properties": {"binary_data": flag}},
                    },
                },
            },
        },
    }


def shape_openapi(schema: dict, spec, max_rows: int) -> dict:
    """`schema` (FastAPI's) with what only the served model knows: the shapes of observations and actions,
    its name in the v2 paths, the v2 request body. The contract is then as tight as the validator, so a
    generator (schemathesis) that follows it gets 200s, and one that breaks it gets 4xx."""
    components = schema["components"]["schemas"]
    n, obs_dim, act_dim = spec.n_agents, spec.obs_dim, spec.act_dim
    observations = _one_or_batch(
        _matrix(n, obs_dim, _number()),
        max_rows,
        f"[{n}][{obs_dim}] (agents x obs_dim), or up to {max_rows} of those",
    )
    observations["examples"] = [[[0.0] * obs_dim] * n]
    components["ActRequest"]["properties"]["observations"] = observations
    action = {"type": "number", "minimum": spec.action_low, "maximum": spec.action_high}
    components["ActResponse"]["properties"]["actions"] = _one_or_batch(
        _matrix(n, act_dim, action), max_rows, "same nesting as observations"
    )
    for path, operations in schema["paths"].items():
        if not path.startswith("/v2/models/{model_name}"):
            continue
        for operation in operations.values():
            parameters = operation.get("parameters", [])
            # The versioned twins of these routes are not in the schema; their version is no query argument.
            operation["parameters"] = [p for p in parameters if p["name"] != "model_version"]
            for parameter in operation["parameters"]:
                if parameter["name"] == "model_name":
                    parameter["schema"] = {"type": "string", "enum": [spec.name]}
    infer = schema["paths"]["/v2/models/{model_name}/infer"]["post"]
    infer["requestBody"] = {
        "required": True,
        "content": {"application/json": {"schema": v2_infer_body(spec, max_rows)}},
    }
    infer["responses"]["200"]["content"]["application/octet-stream"] = {
        "schema": {"type": "string", "format": "binary"}
    }
    return schema

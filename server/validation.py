"""Request parsing and validation with numpy: every refusal names the field and the expected shape.

Status codes: 400 for a body that is not what its Content-Type says (malformed JSON, msgpack or binary),
413 for too large a body or too many rows, 422 for well-formed input of the wrong shape or values.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass

import numpy as np
import orjson

from server.backends import ModelSpec
from server.limits import MAX_OBSERVATION_ABS, MAX_REQUEST_ID_CHARS, MAX_SEED

# np.errstate around the cast costs more than the rest of the validation; silence just this warning here.
warnings.filterwarnings("ignore", "overflow encountered in cast", RuntimeWarning, __name__)

# Decoding JSON (or msgpack) this large takes milliseconds: a thread keeps the event loop serving meanwhile.
DECODE_IN_THREAD_BYTES = 1 << 20


class InvalidRequest(Exception):
    """A client error: `status` (400/401/413/422), a message naming the field, the field's name."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field

    def body(self) -> dict:
        return {"error": self.message, "field": self.field}


@dataclass(slots=True)
class ActOptions:
    deterministic: bool = False
    seed: int | None = None
    request_id: str | None = None


def expected_shape(spec: ModelSpec) -> str:
    return f"[{spec.n_agents}][{spec.obs_dim}] (agents x obs_dim) or [batch][{spec.n_agents}][{spec.obs_dim}]"


def observations_array(
    value: object,
    spec: ModelSpec,
    max_rows: int,
    field: str = "observations",
    booleans_possible: bool = True,
    strings_possible: bool = True,
) -> tuple[np.ndarray, bool]:
    """Nested lists (or an array) -> float32 `[rows, N, obs_dim]` and whether the input had a batch axis.
    `booleans_possible=False` (the caller knows the lists hold no bool, see `json_may_hold_booleans`)
    skips the scan for them; with `strings_possible=False` too (`json_may_hold_strings`), the lists hold
    numbers and nulls only and are first tried straight as float32, half the cost of the checked way."""
    if not booleans_possible and not strings_possible and type(value) is list:
        accepted = _plain_numbers(value, spec, max_rows)
        if accepted is not None:
            return accepted
        # Refused: the checked way below finds out why and names it.
    if isinstance(value, np.ndarray):
        array = value
    else:
        if not isinstance(value, list) or not value:
            raise InvalidRequest(
                422, f"{field}: expected a non-empty list shaped {expected_shape(spec)}", field
            )
        try:
            array = np.array(value)
        except (ValueError, TypeError):  # numpy refuses ragged nesting
            raise InvalidRequest(
                422, f"{field}: ragged nested lists; expected {expected_shape(spec)}", field
            ) from None
    if array.dtype.kind not in "fiu":
        kind = (
            "strings"
            if array.dtype.kind in "US"
            else "booleans"
            if array.dtype.kind == "b"
            else "non-numbers"
        )
        raise InvalidRequest(
            422,
            f"{field}: holds {kind} or ragged lists; expected floats shaped {expected_shape(spec)}",
            field,
        )
    if booleans_possible and not isinstance(value, np.ndarray) and holds_booleans(value, array.ndim):
        raise InvalidRequest(
            422, f"{field}: holds booleans; expected floats shaped {expected_shape(spec)}", field
        )
    batched = array.ndim == 3
    if array.ndim not in (2, 3) or array.shape[-2:] != (spec.n_agents, spec.obs_dim):
        raise InvalidRequest(
            422,
            f"{field}: expected {expected_shape(spec)}, got shape {list(array.shape)} "
            f"(agents: {', '.join(spec.agents)})",
            field,
        )
    if not batched:
        array = array[None]
    if array.shape[0] == 0:
        raise InvalidRequest(422, f"{field}: empty batch; expected {expected_shape(spec)}", field)
    if array.shape[0] > max_rows:
        raise InvalidRequest(
            413,
            f"{field}: {array.shape[0]} rows, more than the server's max of {max_rows} per request",
            field,
        )
    # A float64 beyond float32's range becomes Inf here (warning silenced above) and is refused just below.
    array = array.astype(np.float32)
    # One reduction for three refusals: NaN propagates through max, and Inf or a huge value exceeds the bound.
    if not np.abs(array).max() <= MAX_OBSERVATION_ABS:
        raise InvalidRequest(
            422, f"{field}: holds NaN, Inf or a value beyond +-{MAX_OBSERVATION_ABS:g}", field
        )
    return array, batched


# Below this, a float32 sum of squares rounds to below it too only if every |value| <= MAX_OBSERVATION_ABS: the
# margin covers the sum's rounding (non-negative terms, relative error under 1e-3 for a million of them).
_BOUNDED_SQUARES = (MAX_OBSERVATION_ABS / 2) ** 2


def _plain_numbers(value: list, spec: ModelSpec, max_rows: int) -> tuple[np.ndarray, bool] | None:
    """`observations_array` for nested lists of numbers (and nulls, NaN in float32) alone, or None when it
    would refuse them. numpy's float32 conversion of a Python number rounds as the float64 way does (ints
    within the bound are exact in both)."""
    try:
        array = np.array(value, dtype=np.float32)
    except (ValueError, TypeError):  # ragged, or something that is not a number
        return None
    batched = array.ndim == 3
    if not (batched or array.ndim == 2) or array.shape[-2:] != (spec.n_agents, spec.obs_dim):
        return None
    if not batched:
        array = array[None]
    if not 1 <= array.shape[0] <= max_rows:
        return None
    flat = array.reshape(-1)
    # One dot product instead of abs and max: NaN and Inf propagate, a large value exceeds the bound.
    if not flat.dot(flat) < _BOUNDED_SQUARES and not np.abs(flat).max() <= MAX_OBSERVATION_ABS:
        return None
    return array, batched


def options_from(body: dict, prefix: str = "") -> ActOptions:
    """`deterministic`, `seed` and `request_id` of an /act body (or, with `prefix`, of v2 parameters)."""
    if len(body) == 1 and "observations" in body:  # the usual /act body: every option at its default
        return ActOptions()
    deterministic = body.get("deterministic", False)
    if not isinstance(deterministic, bool):
        raise InvalidRequest(422, f"{prefix}deterministic: expected true or false", f"{prefix}deterministic")
    seed = body.get("seed")
    if isinstance(seed, float) and seed.is_integer():  # JSON has one number type: 7.0 is the integer 7
        seed = int(seed)
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED
    ):
        raise InvalidRequest(
            422, f"{prefix}seed: expected an integer in [0, {MAX_SEED}] or null", f"{prefix}seed"
        )
    request_id = body.get("request_id")
    if request_id is not None and (not isinstance(request_id, str) or len(request_id) > MAX_REQUEST_ID_CHARS):
        raise InvalidRequest(
            422,
            f"request_id: expected a string of at most {MAX_REQUEST_ID_CHARS} characters or null",
            "request_id",
        )
    return ActOptions(deterministic, seed, request_id)


def holds_booleans(value: list, ndim: int) -> bool:
    """Whether regular nested lists of depth `ndim` hold a bool: numpy turns `[true, 0.5]` into 1.0, 0.5
    without a trace, so look at the Python values (one C-level scan per innermost list)."""
    if ndim < 1:
        return isinstance(value, bool)
    if ndim == 1:
        return bool in map(type, value)
    rows = value
    for _ in range(ndim - 2):
        rows = itertools.chain.from_iterable(rows)
    return any(bool in map(type, row) for row in rows)


def json_may_hold_booleans(text: bytes | str) -> bool:
    """False when a JSON document cannot hold a boolean anywhere: neither literal occurs in its text. One
    substring search instead of a Python-level scan of every decoded list (the literals inside a string
    only cost the scan)."""
    if isinstance(text, str):
        return "true" in text or "false" in text
    return b"true" in text or b"false" in text


def json_may_hold_strings(text: bytes | str, data: dict) -> bool:
    """False when a JSON document decoded as the object `data` holds no string beyond its keys and its
    top-level string values: its double quotes are exactly theirs. Any other string (or an escaped quote)
    adds quotes; one count of the text instead of a Python-level scan of every decoded list."""
    strings = len(data) + list(map(type, data.values())).count(str)
    return text.count(b'"' if isinstance(text, bytes) else '"') != 2 * strings


def header_request_id(value: str | None) -> str | None:
    if value is not None and len(value) > MAX_REQUEST_ID_CHARS:
        raise InvalidRequest(
            422, f"X-Request-Id: {len(value)} characters, more than {MAX_REQUEST_ID_CHARS}", "X-Request-Id"
        )
    return value


def json_object(body: bytes, expected: str) -> dict:
    """`body` decoded as a JSON object; 400 when empty or not JSON, 422 when not an object. `expected` names
    what the body should be, for the messages."""
    if not body:
        raise InvalidRequest(400, f"body: empty; expected {expected}", "body")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise InvalidRequest(400, f"body: not valid JSON ({error})", "body") from None
    if not isinstance(data, dict):
        raise InvalidRequest(422, f"body: expected {expected}", "body")
    return data


def parse_json_body(body: bytes) -> dict:
    data = json_object(body, "a JSON object with 'observations'")
    if "observations" not in data:
        raise InvalidRequest(422, "observations: field required", "observations")
    return data


def parse_msgpack_body(body: bytes) -> dict:
    import msgpack

    try:
        data = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as error:  # msgpack raises several unrelated types
        raise InvalidRequest(400, f"body: not valid msgpack ({error})", "body") from None
    if not isinstance(data, dict) or "observations" not in data:
        raise InvalidRequest(422, "observations: field required (body must be a msgpack map)", "observations")
    observations = data["observations"]
    if isinstance(observations, bytes | bytearray):  # packed float32 little-endian with a "shape" field
        data["observations"] = binary_array(observations, data.get("shape"), field="observations")
    return data


def parse_shape_header(value: str | None, header: str = "X-Shape") -> tuple[int, ...]:
    if not value:
        raise InvalidRequest(
            400, f"{header}: header required for application/octet-stream (e.g. 'B,N,obs_dim')", header
        )
    try:
        shape = tuple(int(part) for part in value.split(","))
    except ValueError:
        raise InvalidRequest(
            400, f"{header}: expected comma-separated integers, got {value!r}", header
        ) from None
    return shape


def binary_array(body: bytes, shape: object, field: str = "body") -> np.ndarray:
    """float32 little-endian bytes -> array of `shape` (2 or 3 positive dims), checking the byte count."""
    if (
        not isinstance(shape, tuple | list)
        or len(shape) not in (2, 3)
        or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)
    ):
        raise InvalidRequest(
            400,
            f"shape: expected 2 or 3 positive integers (N,obs_dim or B,N,obs_dim), got {shape!r}",
            "shape",
        )
    expected = 4 * math.prod(shape)
    if len(body) != expected:
        raise InvalidRequest(
            400, f"{field}: {len(body)} bytes, but shape {list(shape)} of float32 needs {expected}", field
        )
    return np.frombuffer(body, dtype="<f4").reshape(shape)


def header_flag(value: str | None, header: str) -> bool:
    if value is None:
        return False
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes"):
        return True
    if lowered in ("0", "false", "no", ""):
        return False
    raise InvalidRequest(400, f"{header}: expected true or false, got {value!r}", header)


def header_seed(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        seed = int(value)
    except ValueError:
        raise InvalidRequest(400, f"X-Seed: expected an integer, got {value!r}", "X-Seed") from None
    if not 0 <= seed <= MAX_SEED:
        raise InvalidRequest(422, f"X-Seed: expected an integer in [0, {MAX_SEED}]", "X-Seed")
    return seed


# --- KServe v2 (Open Inference Protocol) with Triton's binary tensor extension ---


@dataclass(slots=True)
class V2Request:
    id: str | None
    parameters: dict
    values: np.ndarray  # shaped as sent; `observations_array` validates the values on the request path
    shape: list[int]  # as sent: [N, obs_dim] or [batch, N, obs_dim]
    binary_output: bool  # answer `actions` as raw float32 after the JSON header


def split_v2_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON header and the binary tail. Without `Inference-Header-Content-Length` the whole body is JSON,
    whatever the Content-Type says (Triton's clients send none, or application/octet-stream)."""
    if header_length is None:
        return body, b""
    field = "Inference-Header-Content-Length"
    if not header_length.isdigit() or not 0 < int(header_length) <= len(body):
        raise InvalidRequest(
            400,
            f"{field}: expected the JSON header's byte count (1..{len(body)}), got {header_length!r}",
            field,
        )
    length = int(header_length)
    return body[:length], body[length:]


def _object_or_none(value: object, field: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(422, f"{field}: expected an object or null", field)
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_v2_request(header: bytes, binary: bytes, spec: ModelSpec, max_rows: int) -> V2Request:
    """A decoded v2 inference request: one input `obs` (FP32, JSON `data` or `binary_data_size` bytes of the
    binary tail), the optional output `actions`, `parameters` with deterministic and seed."""
    data = json_object(header, "a v2 inference request, a JSON object with 'inputs'")
    request_id = data.get("id")
    if request_id is not None and (not isinstance(request_id, str) or len(request_id) > MAX_REQUEST_ID_CHARS):
        raise InvalidRequest(422, f"id: expected a string of at most {MAX_REQUEST_ID_CHARS} characters", "id")
    parameters = _object_or_none(data.get("parameters"), "parameters")
    inputs = data.get("inputs")
    if not isinstance(inputs, list) or not inputs or not all(isinstance(t, dict) for t in inputs):
        raise InvalidRequest(422, "inputs: expected a non-empty list of tensors", "inputs")
    names = [tensor.get("name") for tensor in inputs]
    if names != ["obs"]:
        raise InvalidRequest(422, f"inputs: expected one input named 'obs', got {names}", "inputs")
    values, shape = _v2_obs(inputs[0], binary, spec, max_rows)
    binary_output = parameters.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise InvalidRequest(
            422, "parameters.binary_data_output: expected true or false", "parameters.binary_data_output"
        )
    outputs = data.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list) or not all(isinstance(t, dict) for t in outputs):
            raise InvalidRequest(422, "outputs: expected a list of requested outputs", "outputs")
        for output in outputs:
            if output.get("name") != "actions":
                raise InvalidRequest(
                    422,
                    f"outputs: the model has one output, 'actions'; got {output.get('name')!r}",
                    "outputs",
                )
            output_parameters = _object_or_none(output.get("parameters"), "outputs.actions.parameters")
            flag = output_parameters.get("binary_data", binary_output)
            if not isinstance(flag, bool):
                raise InvalidRequest(
                    422,
                    "outputs.actions.parameters.binary_data: expected true or false",
                    "outputs.actions.parameters.binary_data",
                )
            binary_output = flag
    return V2Request(request_id, parameters, values, shape, binary_output)


def _v2_obs(tensor: dict, binary: bytes, spec: ModelSpec, max_rows: int) -> tuple[np.ndarray, list[int]]:
    if tensor.get("datatype") != "FP32":
        raise InvalidRequest(
            422, f"inputs.obs.datatype: expected FP32, got {tensor.get('datatype')!r}", "inputs.obs.datatype"
        )
    shape = tensor.get("shape")
    expected = f"[{spec.n_agents}, {spec.obs_dim}] or [batch, {spec.n_agents}, {spec.obs_dim}]"
    if (
        not isinstance(shape, list)
        or not all(_is_int(n) for n in shape)
        or len(shape) not in (2, 3)
        or shape[-2:] != [spec.n_agents, spec.obs_dim]
        or min(shape) < 1
    ):
        raise InvalidRequest(422, f"inputs.obs.shape: expected {expected}, got {shape!r}", "inputs.obs.shape")
    if len(shape) == 3 and shape[0] > max_rows:
        raise InvalidRequest(
            413,
            f"inputs.obs.shape: {shape[0]} rows, more than the server's max of {max_rows}",
            "inputs.obs.shape",
        )
    parameters = _object_or_none(tensor.get("parameters"), "inputs.obs.parameters")
    size = parameters.get("binary_data_size")
    needed = 4 * math.prod(shape)
    if size is not None:
        field = "inputs.obs.parameters.binary_data_size"
        if not _is_int(size) or size != needed:
            raise InvalidRequest(
                422, f"{field}: shape {shape} of FP32 needs {needed} bytes, got {size!r}", field
            )
        if len(binary) != size:
            raise InvalidRequest(
                400, f"body: {len(binary)} bytes after the JSON header, {field} says {size}", "body"
            )
        values: np.ndarray = np.frombuffer(binary, dtype="<f4")
    else:
        if binary:
            raise InvalidRequest(
                400, "body: binary data after the JSON header, but no input has binary_data_size", "body"
            )
        data = tensor.get("data")
        if not isinstance(data, list):
            raise InvalidRequest(
                422, "inputs.obs.data: expected a list (or parameters.binary_data_size)", "inputs.obs.data"
            )
        try:
            values = np.array(data)
        except (ValueError, TypeError):
            raise InvalidRequest(422, "inputs.obs.data: ragged nested lists", "inputs.obs.data") from None
        if values.dtype.kind not in "fiu" or holds_booleans(data, values.ndim):  # never read true as 1.0
            raise InvalidRequest(422, "inputs.obs.data: expected numbers", "inputs.obs.data")
        if values.size != needed // 4:
            raise InvalidRequest(
                422,
                f"inputs.obs.data: {values.size} values, shape {shape} needs {needed // 4}",
                "inputs.obs.data",
            )
    return values.reshape(shape), shape

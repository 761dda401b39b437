"""Request limits, one definition for the validator (`server.validation`) and the OpenAPI schema
(`server.schemas`), so that the contract and the server cannot drift apart."""

MAX_REQUEST_ID_CHARS = 256  # request_id, X-Request-Id and the v2 id alike
# Seeds up to 2^53 - 1: the integers every JSON implementation (and a JSON Schema validator comparing as
# doubles) holds exactly; numpy takes any non-negative integer.
MAX_SEED = 2**53 - 1
MAX_HEADER_BYTES = (
    16 * 1024
)  # request line + headers; h11's default; browsers and proxies send well under 8 KiB
# Observations are normalised features (positions, velocities: order 1-100). Past this magnitude a request
# is refused: larger values only push the policy's float32 MLP towards Inf/NaN actions.
MAX_OBSERVATION_ABS = 1e6

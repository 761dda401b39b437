"""Request limits, one definition for the validator (`server.validation`) and the OpenAPI schema
(`server.schemas`), so that the contract and the server cannot drift apart."""

MAX_REQUEST_ID_CHARS = 256  # request_id, X-Request-Id and the v2 id alike
MAX_SEED = 2**63 - 1  # seeds are numpy SeedSequence entropy; JSON clients lose integers past 2^53 anyway
MAX_HEADER_BYTES = (
    16 * 1024
)  # request line + headers; h11's default; browsers and proxies send well under 8 KiB

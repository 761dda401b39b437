"""Compatibility names for code written before the split: the synthetic-model builder lives in
`server.synthetic`, the server-process helper in `server.process`. Import from those."""

from server.process import REPOSITORY_ROOT, ServerProcess, free_port, run_server
from server.synthetic import reference_policy, synthetic_weights, write_synthetic_repository

__all__ = [
    "REPOSITORY_ROOT",
    "ServerProcess",
    "free_port",
    "reference_policy",
    "run_server",
    "synthetic_weights",
    "write_synthetic_repository",
]

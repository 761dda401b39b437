"""om2p server: `om2p serve` puts an exported policy behind HTTP (docs/serving.md).

settings.py (OM2P_* options) -> app.py (FastAPI + the raw ASGI `/act` in act.py) -> service.py (readiness,
reloads, accounting) -> runtime.py (one model version) -> batcher.py (dynamic batching, no HTTP) ->
backends/ (ONNX Runtime, TensorRT, torch). metrics.py: Prometheus. testing.py: synthetic models, real servers.
"""

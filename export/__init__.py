"""om2p export: a training checkpoint -> a versioned model repository that a torch-free server can trust.

    DIR/<name>/<version>/model.onnx         fp32, one graph for all agents (obs, noise) -> actions
                        /model.fp16.onnx    optional (--fp16): fp16 weights and arithmetic, fp32 inputs/outputs
                        /model.plan         optional (--tensorrt): a TensorRT engine, where TensorRT and a GPU exist
                        /manifest.json      the contract the server reads (`export.manifest.ModelManifest`)

Every artifact is checked against the PyTorch policy before anything is written; a version directory appears
complete (renamed into place) or not at all.
"""

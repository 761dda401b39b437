"""The whole training step (batch draw, critic update, actor update, Polyak) as one replayed CUDA graph.

At the networks' sizes here a step is a few hundred small kernels, so on a GPU the host's launch cost, not
the arithmetic, sets the step time: on an H200 the eager OM2P step takes 8-9 ms at 2x128 / batch 128 and
the replayed graph 0.55 ms (`make gpu-check`). Capture needs a step without host synchronisation or
Python-side branching between steps (the batch indices, noise and timesteps are drawn on the device, and
CUDA's Philox offsets advance per replay), so algorithms opt in with `Algorithm.supports_cuda_graphs`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Step = Callable[[], dict[str, torch.Tensor]]


class GraphedStep:
    """Calls `step` eagerly `warmup` times on a side stream, then captures it once and replays the graph.

    Every call performs exactly one training step (capture records without running, so the capturing call
    replays too). The returned dict holds the graph's static output tensors: read them before the next
    call, or clone them. The optimizers must be capturable (`make_capturable`)."""

    def __init__(self, step: Step, warmup: int = 3) -> None:
        self.step, self.warmup = step, warmup
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.outputs: dict[str, torch.Tensor] = {}
        self.side_stream = torch.cuda.Stream()

    def __call__(self) -> dict[str, torch.Tensor]:
        self.calls += 1
        if self.graph is None and self.calls <= self.warmup:
            # Lazy state (optimizer moments, cuBLAS workspaces, autocast caches) is made outside the capture.
            self.side_stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side_stream):
                outputs = self.step()
            torch.cuda.current_stream().wait_stream(self.side_stream)
            return outputs
        if self.graph is None:
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.outputs = self.step()
        self.graph.replay()
        return self.outputs


def make_capturable(optimizers: dict[str, torch.optim.Optimizer]) -> None:
    """Adam with its step counters on the device and no host reads, as graph capture requires."""
    for optimizer in optimizers.values():
        for group in optimizer.param_groups:
            group["capturable"] = True

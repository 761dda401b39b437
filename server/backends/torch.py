"""PyTorch: serve a training checkpoint directly (no export step). On CUDA every batch bucket is captured
as a CUDA graph (as TorchRL's InferenceServer does): a batch is padded to the next bucket and replayed,
which removes the per-kernel launch cost that dominates a small MLP. Imported only for `--backend torch`."""

from __future__ import annotations

import bisect
from pathlib import Path

import numpy as np

from server.backends import ModelSpec, batch_buckets


class TorchBackend:
    name = "torch"

    def __init__(self, policy, device, buckets: list[int], n_agents: int, obs_dim: int, act_dim: int) -> None:
        import torch

        self.torch, self.policy, self.device = torch, policy, device
        self.n_agents, self.obs_dim, self.act_dim = n_agents, obs_dim, act_dim
        self.buckets = buckets
        self.graphs: dict[int, tuple] = {}
        if device.type == "cuda":
            self._capture_graphs()
        self.description = f"torch {torch.__version__} on {device}" + (
            " (CUDA graphs)" if self.graphs else ""
        )

    @classmethod
    def load(
        cls, model_path: Path, device: str = "auto", max_batch_rows: int = 256, intra_op_threads: int = 1
    ) -> tuple[TorchBackend, ModelSpec]:
        import torch

        from training.checkpoint import load_policy

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device {device}: torch sees no CUDA GPU")
        if intra_op_threads > 0:
            torch.set_num_threads(intra_op_threads)
        policy, info = load_policy(Path(model_path), device=device)
        spec = ModelSpec(
            name=f"{info.env}",
            version=max(1, int(info.step)),
            agents=tuple(info.agents),
            obs_dim=info.obs_dim,
            act_dim=info.act_dim,
            action_mask=np.asarray(info.action_mask, dtype=bool),
            action_low=-1.0,
            action_high=1.0,
            source=Path(info.path),
            env=info.env,
            algo=info.algo,
        )
        backend = cls(
            policy,
            torch.device(device),
            batch_buckets(max_batch_rows),
            spec.n_agents,
            spec.obs_dim,
            spec.act_dim,
        )
        return backend, spec

    def _capture_graphs(self) -> None:
        torch = self.torch
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream), torch.inference_mode():
            for rows in self.buckets:
                obs = torch.zeros((rows, self.n_agents, self.obs_dim), device=self.device)
                noise = torch.zeros((rows, self.n_agents, self.act_dim), device=self.device)
                for _ in range(3):  # warm the allocator and cuBLAS handles before capture
                    self.policy(obs, noise)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=stream):
                    actions = self.policy(obs, noise)
                self.graphs[rows] = (graph, obs, noise, actions)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        torch.cuda.synchronize(self.device)

    def run(self, obs: np.ndarray, noise: np.ndarray) -> np.ndarray:
        torch = self.torch
        rows = obs.shape[0]
        if not obs.flags.writeable:  # torch.from_numpy wants writable memory (binary requests are views)
            obs = obs.copy()
        with torch.inference_mode():
            if self.graphs:
                bucket = self.buckets[min(bisect.bisect_left(self.buckets, rows), len(self.buckets) - 1)]
                if rows <= bucket:
                    graph, static_obs, static_noise, static_actions = self.graphs[bucket]
                    static_obs[:rows].copy_(torch.from_numpy(obs), non_blocking=True)
                    static_noise[:rows].copy_(torch.from_numpy(noise), non_blocking=True)
                    if rows < bucket:  # padding rows: any finite value; their actions are discarded
                        static_obs[rows:].zero_()
                        static_noise[rows:].zero_()
                    graph.replay()
                    return static_actions[:rows].cpu().numpy()
            actions = self.policy(
                torch.from_numpy(obs).to(self.device), torch.from_numpy(noise).to(self.device)
            )
            return actions.cpu().numpy()

    def close(self) -> None:
        self.graphs.clear()
        self.policy = None

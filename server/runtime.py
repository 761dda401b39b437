"""One loaded model version: backend + spec + its own batcher. A reload builds a new runtime, checks it, and
swaps it in; the old one drains its queue and closes, so no accepted request is dropped and requests
queued for the old shapes never meet the new model."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from server.backends import Backend, ModelSpec, batch_buckets, load_backend
from server.batcher import BatchStats, DynamicBatcher
from server.settings import ServerSettings

log = logging.getLogger("om2p.server")


@dataclass
class ModelRuntime:
    spec: ModelSpec
    backend: Backend
    backend_name: str
    batcher: DynamicBatcher | None = None
    loaded_at: float = field(default_factory=time.time)
    warmup_s: float = 0.0

    @classmethod
    def load(cls, settings: ServerSettings, model_path: Path) -> ModelRuntime:
        """Blocking (call it in a thread): load, check the outputs, warm up every batch bucket."""
        backend, spec = load_backend(
            settings.backend,
            model_path,
            intra_op_threads=settings.intra_op_threads,
            device=settings.device,
            max_batch_rows=settings.max_batch_rows,
        )
        runtime = cls(spec, backend, settings.backend)
        runtime.check()
        runtime.warm_up(settings.max_batch_rows, settings.warmup_runs)
        return runtime

    def check(self) -> None:
        """A model that fails these never serves (a failed reload keeps the old version)."""
        spec = self.spec
        rng = np.random.default_rng(0)
        obs = rng.standard_normal((2, spec.n_agents, spec.obs_dim), dtype=np.float32)
        noise = rng.standard_normal((2, spec.n_agents, spec.act_dim), dtype=np.float32)
        try:
            actions = np.asarray(self.backend.run(obs, noise))
        except Exception as error:
            raise ValueError(f"{spec.source}: the model fails a forward pass: {error}") from None
        expected = (2, spec.n_agents, spec.act_dim)
        if actions.shape != expected or actions.dtype != np.float32:
            raise ValueError(
                f"{spec.source}: the model answers {actions.dtype} {list(actions.shape)}, "
                f"the manifest promises float32 {list(expected)}"
            )
        if not np.isfinite(actions).all():
            raise ValueError(f"{spec.source}: the model answers NaN or Inf for ordinary inputs")
        if actions.min() < spec.action_low - 1e-6 or actions.max() > spec.action_high + 1e-6:
            raise ValueError(f"{spec.source}: actions outside [{spec.action_low}, {spec.action_high}]")
        if np.any(actions[:, ~spec.action_mask] != 0):
            raise ValueError(f"{spec.source}: masked (padded) action entries are not zero")

    def warm_up(self, max_batch_rows: int, runs: int) -> None:
        """Every batch-size bucket before ready, so the first real requests never pay for allocation or
        (TensorRT/CUDA) engine set-up (Triton issue 8085)."""
        started = time.perf_counter()
        spec = self.spec
        for rows in batch_buckets(max_batch_rows):
            obs = np.zeros((rows, spec.n_agents, spec.obs_dim), np.float32)
            noise = np.zeros((rows, spec.n_agents, spec.act_dim), np.float32)
            for _ in range(runs):
                self.backend.run(obs, noise)
        self.warmup_s = time.perf_counter() - started

    def start_batcher(
        self,
        settings: ServerSettings,
        on_batch: Callable[[BatchStats], None],
        refill: Callable[[int], int] | None = None,
    ) -> None:
        self.batcher = DynamicBatcher(
            self.backend.run,
            (self.spec.n_agents, self.spec.act_dim),
            max_batch_rows=settings.max_batch_rows,
            max_delay_s=settings.max_delay_us * 1e-6,
            max_queue_rows=max(settings.max_queue_rows, settings.max_batch_rows),
            on_batch=on_batch,
            refill=refill,
        )

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.close(drain=True)
        self.backend.close()

    def describe(self) -> dict:
        spec = self.spec
        return {
            "name": spec.name,
            "version": spec.version,
            "backend": self.backend_name,
            "providers": self.backend.description,
            "env": spec.env,
            "algo": spec.algo,
            "agents": list(spec.agents),
            "obs_dim": spec.obs_dim,
            "act_dim": spec.act_dim,
            "action_mask": spec.action_mask.tolist(),
            "source": str(spec.source),
            "loaded_at": self.loaded_at,
            "warmup_s": round(self.warmup_s, 4),
        }

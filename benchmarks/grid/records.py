"""Per-run records: one small JSON file per (env, quality, algorithm, setting, training seed), committed under
`benchmarks/results/records/`. A record holds its config hash, the validation curve, the test score with its
standard error, steps, wall time and the machine; the page is built from records alone. A run whose record
exists with the same config hash is not trained again, so a grid spread over machines and days accumulates."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

RECORD_VERSION = 1
# Config fields that change how a run is executed, not what it learns or how it is scored.
MACHINE_FIELDS = (
    "dataset",
    "device",
    "num_threads",
    "eval_envs",
    "log_every",
    "keep_checkpoints",
    "compile_update",
)
# Config fields added after records began, each with the value that reproduces the runs made before it
# existed: at that value a field hashes as if absent, so adding it does not retrain the grid. The recorded value
# is what is compared, never the current default, so changing a default still invalidates the runs it changes.
ADDED_FIELDS: dict[str, Any] = {
    "mean_flow_output": "velocity",  # issue 20: the mean-flow actor's MLP had always been the velocity
    "reward_scale": 1.0,  # rewards had always entered the TD target unscaled
}


@dataclass(frozen=True)
class RunKey:
    env: str
    quality: str
    algo: str
    setting: str
    seed: int

    @property
    def cell(self) -> tuple[str, str]:
        return self.env, self.quality

    def relative(self) -> Path:
        return Path(self.env, self.quality, self.algo, self.setting, f"seed_{self.seed}")

    def __str__(self) -> str:
        return "/".join(self.relative().parts)


def record_path(records: Path, key: RunKey) -> Path:
    return records / key.relative().with_suffix(".json")


def config_hash(config: dict[str, Any], dataset: dict[str, Any], test: dict[str, int]) -> str:
    """What decides a run's numbers: the training config (less machine fields), the dataset's identity (not
    its path: the same file lies elsewhere on another machine) and the test episodes."""
    learned = {
        k: v
        for k, v in config.items()
        if k not in MACHINE_FIELDS and not (k in ADDED_FIELDS and v == ADDED_FIELDS[k])
    }
    identity = {
        k: dataset.get(k)
        for k in ("env", "quality", "seed", "transitions", "format_version", "behaviour_sha256")
    }
    text = json.dumps({"config": learned, "dataset": identity, "test": test}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_record(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_record(records: Path, record: dict[str, Any]) -> Path:
    key = key_of(record)
    path = record_path(records, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(record, indent=1) + "\n")
    temporary.replace(path)  # a reader never sees half a record
    return path


def key_of(record: dict[str, Any]) -> RunKey:
    return RunKey(record["env"], record["quality"], record["algo"], record["setting"], int(record["seed"]))


def iter_records(records: Path) -> Iterator[dict[str, Any]]:
    for path in sorted(records.glob("*/*/*/*/seed_*.json")):
        record = read_record(path)
        if record is not None and record.get("record_version") == RECORD_VERSION:
            yield record


@cache
def dataset_summary(path: Path) -> dict[str, Any]:
    """What a record keeps of its dataset: identity, size, the episodes' mean return with its SE, and the
    expert and random references with their SEs (dataset format 2: `metadata.references`)."""
    from training.data.format import load_dataset

    metadata = load_dataset(path).metadata
    returns = np.asarray(metadata.get("episode_returns") or [], dtype=float)
    references = {name: float(entry["mean"]) for name, entry in metadata["references"].items()}
    errors = {
        name: entry["se"] for name, entry in metadata["references"].items() if entry.get("se") is not None
    }
    return {
        "file": path.name,
        "env": metadata.get("env"),
        "quality": metadata.get("quality"),
        "seed": metadata.get("seed"),
        "format_version": metadata.get("format_version"),
        "behaviour_sha256": metadata.get("behaviour_checkpoint_sha256"),
        "transitions": int(metadata.get("transitions", 0)),
        "episodes": int(metadata.get("episodes", len(returns))),
        "mean_return": float(returns.mean()) if returns.size else None,
        "mean_return_se": float(returns.std(ddof=1) / np.sqrt(returns.size)) if returns.size > 1 else None,
        "reference_returns": references,
        "reference_se": {k: float(v) for k, v in errors.items()},
    }

"""One offline dataset = one `.npz` file (docs/architecture.md, section 2).

Why npz: numpy-only (no h5py/zarr dependency on the serving side), loads with `allow_pickle=False`, and an
uncompressed npz is memory-copied straight into arrays (one million cooperative-navigation transitions load in
about a second here; see docs/datasets.md). Metadata is a 0-d unicode array holding JSON.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from training.envs.spec import EnvSpec

FORMAT_VERSION = 2
"""2: `references` (expert and random reference returns with standard errors, >= 1,000 episodes by default)."""
QUALITIES = ("expert", "medium", "medium-replay", "random")
FLOAT_ARRAYS = ("observations", "actions", "rewards", "next_observations", "dones")
ARRAYS = (*FLOAT_ARRAYS, "episode_ends")
METADATA_KEYS = (
    "format_version",
    "env",
    "agents",
    "obs_dim",
    "act_dim",
    "obs_dims",
    "act_dims",
    "action_mask",
    "quality",
    "seed",
    "transitions",
    "episodes",
    "episode_returns",
    "reference_returns",
    "references",
    "behaviour_checkpoint_sha256",
)


class DatasetError(ValueError):
    """A dataset file that is missing, malformed or made for something else; the message names file and field."""

    def __init__(self, path: Path | str, field_name: str, problem: str) -> None:
        self.path, self.field = str(path), field_name
        super().__init__(f"{path}: field '{field_name}': {problem}")


def dataset_metadata(
    spec: EnvSpec,
    quality: str,
    seed: int,
    transitions: int,
    returns: list[float],
    references: dict[str, dict[str, Any]],
    behaviour_checkpoint_sha256: str,
    **extra: Any,
) -> dict[str, Any]:
    """A dataset's metadata (every `METADATA_KEYS` entry, then `extra`); dims and masks come from the spec, so
    they cannot disagree with the environment the file claims. `references`: per `expert`/`random` the
    reference's `mean` return, its standard error `se` (None where unknown), `std` and `episodes`;
    `reference_returns` repeats the two means for the score."""
    return {
        "format_version": FORMAT_VERSION,
        "env": spec.name,
        "agents": list(spec.agents),
        "obs_dim": spec.obs_dim,
        "act_dim": spec.act_dim,
        "obs_dims": list(spec.obs_dims),
        "act_dims": list(spec.act_dims),
        "action_mask": spec.action_mask.tolist(),
        "quality": quality,
        "seed": seed,
        "transitions": transitions,
        "episodes": len(returns),
        "episode_returns": returns,
        "reference_returns": {name: float(entry["mean"]) for name, entry in references.items()},
        "references": references,
        "behaviour_checkpoint_sha256": behaviour_checkpoint_sha256,
        **extra,
    }


@dataclass
class OfflineDataset:
    """Joint transitions `[T, N, ...]` with the shared team reward repeated per agent."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    dones: np.ndarray
    episode_ends: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def transitions(self) -> int:
        return int(self.observations.shape[0])

    @property
    def n_agents(self) -> int:
        return int(self.observations.shape[1])

    @property
    def episode_returns(self) -> np.ndarray:
        return np.asarray(self.metadata["episode_returns"], dtype=np.float64)


def episode_returns(rewards: np.ndarray, episode_ends: np.ndarray) -> list[float]:
    """Team return of every complete episode (`rewards` is `[T]` or `[T, N]` with the team reward repeated)."""
    team = rewards[:, 0] if rewards.ndim == 2 else rewards
    ends = np.flatnonzero(episode_ends)
    sums = np.add.reduceat(team.astype(np.float64), np.r_[0, ends[:-1] + 1]) if len(ends) else np.zeros(0)
    return [float(x) for x in sums]


def save_dataset(path: Path | str, dataset: OfflineDataset) -> Path:
    """Write `dataset` (uncompressed npz: loading speed matters more than disk here)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format_version": FORMAT_VERSION, **dataset.metadata}
    arrays = {name: getattr(dataset, name) for name in ARRAYS}
    arrays = {n: a.astype(np.float32) if n in FLOAT_ARRAYS else a.astype(bool) for n, a in arrays.items()}
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays, metadata=np.array(json.dumps(metadata)))
    tmp.replace(path)
    return path


def load_dataset(path: Path | str, env: str | None = None) -> OfflineDataset:
    """Load and validate one dataset; every problem raises `DatasetError` naming the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: dataset file not found")
    try:
        archive = read_npz(path)
        if "metadata" not in archive:
            raise DatasetError(path, "metadata", "missing")
        metadata = _parse_metadata(path, archive["metadata"])
        for name in ARRAYS:
            if name not in archive:
                raise DatasetError(path, name, "missing")
        arrays = {name: archive[name] for name in ARRAYS}
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise DatasetError(path, "file", f"not a readable .npz archive ({error})") from None
    except ValueError as error:
        if isinstance(error, DatasetError):
            raise
        raise DatasetError(path, "file", f"unreadable array ({error})") from None
    _validate(path, arrays, metadata, env)
    return OfflineDataset(**arrays, metadata=metadata)


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an npz, never unpickling. Stored (uncompressed) members are read straight from their
    offset in the file: `np.load` streams them through `zipfile`, which is ~10x slower (CRC + copies) and made
    one million transitions take 17 s instead of about 1 s. Compressed members fall back to `np.load`."""
    out: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
        for info in archive.infolist():
            name = info.filename.removesuffix(".npy")
            if info.compress_type != zipfile.ZIP_STORED:
                with archive.open(info) as member:
                    out[name] = np.lib.format.read_array(member, allow_pickle=False)
                continue
            raw.seek(info.header_offset)
            local = raw.read(30)
            if local[:4] != b"PK\x03\x04":
                raise zipfile.BadZipFile(f"bad local header for {info.filename}")
            name_length, extra_length = (
                int.from_bytes(local[26:28], "little"),
                int.from_bytes(local[28:30], "little"),
            )
            raw.seek(info.header_offset + 30 + name_length + extra_length)
            version = np.lib.format.read_magic(raw)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(raw)
            if dtype.hasobject:
                raise ValueError(f"member {name!r} holds Python objects (pickles are never loaded)")
            count = int(np.prod(shape, dtype=np.int64))
            array = np.fromfile(raw, dtype=dtype, count=count)
            if array.size != count:
                raise EOFError(f"member {name!r} is truncated")
            out[name] = array.reshape(shape, order="F" if fortran else "C")
    return out


def _parse_metadata(path: Path, raw: np.ndarray) -> dict[str, Any]:
    if raw.shape != () or raw.dtype.kind != "U":
        raise DatasetError(
            path, "metadata", f"expected a 0-d unicode array of JSON, got {raw.dtype} {raw.shape}"
        )
    try:
        metadata = json.loads(str(raw))
    except json.JSONDecodeError as error:
        raise DatasetError(path, "metadata", f"not valid JSON ({error})") from None
    if not isinstance(metadata, dict):
        raise DatasetError(path, "metadata", "expected a JSON object")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise DatasetError(
            path,
            "metadata.format_version",
            f"is {metadata.get('format_version')!r}, this om2p reads version {FORMAT_VERSION} (reference "
            f"returns with standard errors); remake it with `{remake_command(path, metadata)}`",
        )
    for key in METADATA_KEYS:
        if key not in metadata:
            raise DatasetError(path, f"metadata.{key}", "missing")
    refs = metadata["reference_returns"]
    if not isinstance(refs, dict) or not {"expert", "random"} <= set(refs):
        raise DatasetError(
            path, "metadata.reference_returns", "expected an object with 'expert' and 'random'"
        )
    for name in ("expert", "random"):
        entry = metadata["references"].get(name) if isinstance(metadata["references"], dict) else None
        if not isinstance(entry, dict) or not isinstance(entry.get("mean"), (int, float)):
            raise DatasetError(
                path, f"metadata.references.{name}", "expected an object with a numeric 'mean'"
            )
        if not (entry.get("se") is None or isinstance(entry["se"], (int, float))):
            raise DatasetError(path, f"metadata.references.{name}.se", "expected a number or null")
        if entry["mean"] != refs[name]:
            raise DatasetError(
                path, f"metadata.reference_returns.{name}", f"is {refs[name]}, references say {entry['mean']}"
            )
    return metadata


def remake_command(path: Path | str, metadata: dict[str, Any]) -> str:
    """The command that remakes the dataset at `path` in the current format, from its (old) metadata."""
    env, quality, seed = (
        metadata.get("env", "ENV"),
        metadata.get("quality", "QUALITY"),
        metadata.get("seed", 0),
    )
    source = metadata.get("source") or {}
    if source.get("layout") == "omar":
        # ROOT/{env}/{quality}/seed_{s}_data: the importer needs the root and both references (no guessing).
        root = Path(source.get("dir", "ROOT/x/x/x")).parent.parent.parent
        return (
            f"om2p data import-omar --root {root} --env {env} --quality {quality} --seed {seed} --out {path} "
            "--expert-return R_EXPERT --random-return R_RANDOM"
        )
    transitions = metadata.get("transitions", "TRANSITIONS")
    return f"om2p data collect --env {env} --quality {quality} --transitions {transitions} --seed {seed} --out {path}"


def _validate(path: Path, arrays: dict[str, np.ndarray], metadata: dict[str, Any], env: str | None) -> None:
    if env is not None and metadata["env"] != env:
        raise DatasetError(path, "metadata.env", f"is {metadata['env']!r}, expected {env!r}")
    if env is not None:
        from training.envs import env_spec

        spec = env_spec(env)
        for key, expected in (
            ("agents", list(spec.agents)),
            ("obs_dim", spec.obs_dim),
            ("act_dim", spec.act_dim),
        ):
            if metadata[key] != expected:
                raise DatasetError(path, f"metadata.{key}", f"is {metadata[key]!r}, {env} has {expected!r}")
    t = arrays["observations"].shape[0] if arrays["observations"].ndim else 0
    n, obs_dim, act_dim = len(metadata["agents"]), metadata["obs_dim"], metadata["act_dim"]
    expected_shapes = {
        "observations": (t, n, obs_dim),
        "actions": (t, n, act_dim),
        "rewards": (t, n),
        "next_observations": (t, n, obs_dim),
        "dones": (t, n),
        "episode_ends": (t,),
    }
    for name, shape in expected_shapes.items():
        array = arrays[name]
        if array.shape != shape:
            raise DatasetError(
                path, name, f"shape {array.shape}, expected {shape} ([T, n_agents, dim] from metadata)"
            )
        if name in FLOAT_ARRAYS:
            if array.dtype != np.float32:
                raise DatasetError(path, name, f"dtype {array.dtype}, expected float32")
            # A finite sum proves every entry finite without a T x N x D mask; only a suspicious sum
            # (NaN/Inf present, or a float32 overflow) pays for the elementwise search.
            if not np.isfinite(array.sum()) and not (finite := np.isfinite(array)).all():
                first = np.argwhere(~finite)[0].tolist()
                raise DatasetError(path, name, f"contains NaN or Inf (first at index {first})")
        elif array.dtype != np.bool_:
            raise DatasetError(path, name, f"dtype {array.dtype}, expected bool")
    if t != metadata["transitions"]:
        raise DatasetError(path, "metadata.transitions", f"is {metadata['transitions']}, arrays hold {t}")
    actions = arrays["actions"]
    if actions.size and (actions.max() > 1.0 + 1e-6 or actions.min() < -1.0 - 1e-6):
        raise DatasetError(path, "actions", "values outside [-1, 1]")
    if len(metadata["episode_returns"]) != metadata["episodes"]:
        raise DatasetError(
            path,
            "metadata.episode_returns",
            f"has {len(metadata['episode_returns'])} entries, metadata.episodes is {metadata['episodes']}",
        )

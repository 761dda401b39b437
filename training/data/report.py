"""`om2p data report`: docs/datasets.md from the shipped behaviour checkpoints and the datasets on disk.

Every figure in the page is read or measured when the report runs: the behaviour policies' returns from their
manifests, each dataset's statistics from `describe`, the histograms from the arrays, and the load time of one
million transitions from a file written and read back in the same run.
"""

from __future__ import annotations

import datetime
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from training.behaviour.registry import checkpoint_dir, load_manifest
from training.data.describe import describe, plot_returns
from training.data.format import QUALITIES, OfflineDataset, dataset_metadata, load_dataset, save_dataset
from training.data.references import REFERENCES_FILE, ReferenceError, load_references

LOAD_TIME_TRANSITIONS = 1_000_000


def measure_load_time(env: str, transitions: int = LOAD_TIME_TRANSITIONS) -> dict[str, float]:
    """Write `transitions` random transitions with `env`'s shapes, then time `load_dataset` (validation
    included) on the file: what a user pays to open a full-size dataset."""
    from training.envs import env_spec

    spec = env_spec(env)
    rng = np.random.default_rng(0)
    n, o, a = spec.n_agents, spec.obs_dim, spec.act_dim
    episodes = transitions // spec.episode_length
    ends = np.zeros(transitions, bool)
    ends[spec.episode_length - 1 :: spec.episode_length] = True
    dataset = OfflineDataset(
        observations=rng.standard_normal((transitions, n, o), dtype=np.float32),
        actions=rng.uniform(-1, 1, (transitions, n, a)).astype(np.float32),
        rewards=np.zeros((transitions, n), np.float32),
        next_observations=rng.standard_normal((transitions, n, o), dtype=np.float32),
        dones=np.zeros((transitions, n), np.float32),
        episode_ends=ends,
        metadata=dataset_metadata(
            spec, "random", 0, transitions, [0.0] * episodes, {"expert": {"mean": 1.0}, "random": {"mean": 0.0}}, "0" * 64
        ),
    )
    with tempfile.TemporaryDirectory(prefix="om2p-load-") as work:
        path = save_dataset(Path(work) / "million.npz", dataset)
        size_mb = path.stat().st_size / 2**20
        _evict_from_page_cache(path)
        started = time.perf_counter()
        load_dataset(path, env=env)
        seconds = time.perf_counter() - started
    return {"transitions": transitions, "file_mb": size_mb, "load_s": seconds}


def _evict_from_page_cache(path: Path) -> None:
    """A file just written sits in the page cache; drop it so the timing includes reading the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


# The `train-behaviour` flags a shipped run's config may differ in from the MATD3Config defaults.
_BEHAVIOUR_FLAGS = (
    "n_envs",
    "warmup",
    "updates_per_step",
    "exploration_noise",
    "action_penalty",
    "pursuit_shaping",
)


def behaviour_command(env: str, config: dict[str, Any]) -> str:
    """The `om2p data train-behaviour` line that reproduces a shipped run (its non-default flags only)."""
    from training.behaviour.matd3 import MATD3Config

    defaults = MATD3Config()
    parts = [
        f"om2p data train-behaviour --env {env} --steps {config['steps']} --seed {config['seed']}",
        f"--eval-interval {config['eval_interval']}",
    ]
    for name in _BEHAVIOUR_FLAGS:
        value = config.get(name, getattr(defaults, name))
        if value != getattr(defaults, name):
            parts.append(f"--{name.replace('_', '-')} {value:g}")
    return " ".join([*parts, f"--out runs/behaviour/{env}"])


def _behaviour_section(env: str, checkpoints_root: Path | None) -> list[str]:
    manifest = load_manifest(env, checkpoints_root)
    root = checkpoint_dir(env, checkpoints_root)
    size_kb = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 1024
    config = manifest["run_config"]
    lines = [
        f"Behaviour policy: MATD3 (run configured for {config['steps']:,} environment steps, seed "
        f"{config['seed']}, exploration noise {config['exploration_noise']}; the expert is its best evaluated "
        f"actor, at step {manifest['qualities']['expert']['step']:,}), actor {list(config['actor_hidden'])}; "
        f"collection noise std {manifest['collection_noise_std']}. "
        f"Shipped in `training/behaviour/checkpoints/{env}/` ({size_kb:.0f} kB, "
        f"{len(manifest['medium_replay']['actors'])} replay actors up to step "
        f"{manifest['medium_replay']['until_step']:,}). Trained with:",
        "",
        "```bash",
        behaviour_command(env, config),
        "```",
        "",
    ]
    resumed_at = config.get("extra", {}).get("resumed_at", [])
    if resumed_at:
        steps = ", ".join(f"{step:,}" for step in resumed_at)
        lines += [
            f"The run was stopped and continued with `--resume` (and a larger `--steps`) at step {steps}; a "
            "restart begins fresh episodes, so an uninterrupted run differs in its details.",
            "",
        ]
    if manifest.get("selection_episodes", 0) > 0:
        lines += [
            f"Medium and expert were picked on fresh {manifest['selection_episodes']}-episode evaluations "
            f"of every checkpoint (`om2p data ship-behaviour --selection-episodes "
            f"{manifest['selection_episodes']}`), not on the run's noisier 20-episode ones.",
            "",
        ]
    if config.get("pursuit_shaping", 0.0) > 0.0:
        lines += [
            f"The learner's training reward also charged {config['pursuit_shaping']:g} x the mean distance to "
            "the nearest evader per step (training/behaviour/shaping.py); every return and dataset below is "
            "the environment's own reward.",
            "",
        ]
    lines += [
        f"| checkpoint | run step | mean return ({manifest['evaluation_episodes']} episodes, with noise) | std |",
        "|---|---:|---:|---:|",
    ]
    for quality in ("random", "medium", "expert"):
        entry = manifest["qualities"][quality]
        lines.append(
            f"| {quality} | {entry['step']:,} | {entry['mean_return']:.2f} | {entry['std_return']:.2f} |"
        )
    return [*lines, "", *_reference_section(env, checkpoints_root)]


def _reference_section(env: str, checkpoints_root: Path | None) -> list[str]:
    """The normalisation references of `env` (references.json beside the checkpoints), with their SEs."""
    try:
        references = load_references(env, checkpoints_root)
    except ReferenceError as error:
        return [f"No normalisation references: {error}", ""]
    lines = [
        f"Normalisation references (`{REFERENCES_FILE}`, `om2p data references --env {env}`; the behaviour "
        f"policy with its collection noise {references['collection_noise_std']}, seeds {references['seeds']}):",
        "",
        "| reference | episodes | mean return | SE | std |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in ("expert", "random"):
        entry = references[name]
        lines.append(
            f"| {name} | {entry['episodes']:,} | {entry['mean']:.2f} | {entry['se']:.2f} | {entry['std']:.2f} |"
        )
    return [*lines, ""]


def _dataset_section(env: str, data_dir: Path, image: Path, doc_dir: Path) -> tuple[list[str], dict]:
    found: list[tuple[str, OfflineDataset, dict[str, Any]]] = []
    for quality in QUALITIES:
        path = data_dir / env / f"{quality}.npz"
        if path.is_file():
            dataset = load_dataset(path, env=env)
            found.append((quality, dataset, describe(dataset, path)))
    if not found:
        return [f"No datasets under `{data_dir / env}`.", ""], {}
    plot_returns([(q, d) for q, d, _ in found], image)
    lines = [
        "| dataset | transitions | episodes | mean return | SE | std | min | max | normalised score |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for quality, _, s in found:
        lines.append(
            f"| {quality} | {s['transitions']:,} | {s['episodes']:,} | {s['mean_return']:.2f} | "
            f"{s['mean_return_se']:.2f} | "
            f"{s['std_return']:.2f} | {s['min_return']:.2f} | {s['max_return']:.2f} | "
            f"{s['normalised_score']:.1f} |"
        )
    summaries = {q: s for q, _, s in found}
    lines += ["", *_margins(summaries)]
    meta = found[0][1].metadata
    lines += [
        "",
        f"Made with `om2p data make-default --envs {env} --transitions {meta['transitions']} "
        f"--seed {meta['seed']}`.",
        "",
        f"![{env} episode returns]({image.relative_to(doc_dir).as_posix()})",
        "",
    ]
    return lines, summaries


def _margins(summaries: dict[str, dict[str, Any]]) -> list[str]:
    """Expert - medium and medium - random in standard errors of the difference: how clearly the
    qualities are separated (a few standard errors is ordered; tens is clear)."""
    parts = []
    for high, low in (("expert", "medium"), ("medium", "random")):
        if high in summaries and low in summaries:
            a, b = summaries[high], summaries[low]
            gap = a["mean_return"] - b["mean_return"]
            error = (a["std_return"] ** 2 / a["episodes"] + b["std_return"] ** 2 / b["episodes"]) ** 0.5
            parts.append(f"{high} - {low} = {gap:.2f} ({gap / error:.1f} standard errors)")
    return [f"Margins: {'; '.join(parts)}."] if parts else []


def write_report(
    data_dir: Path,
    envs: list[str],
    out: Path,
    measure_load: bool = True,
    checkpoints_root: Path | None = None,
) -> dict[str, Any]:
    """Write `out` (markdown) and one histogram PNG per environment under `out.parent / "img"`."""
    doc_dir = out.parent
    summaries: dict[str, Any] = {}
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    lines = [
        "# Datasets",
        "",
        f"Made by the commands below on {when}; this page is written by `om2p data report` from the files "
        "themselves. No dataset hub is reachable from here: om2p trains its own behaviour policies and records",
        "the offline datasets from them (OMAR protocol; see docs/architecture.md section 2 for the format).",
        "",
        "- **random**: the MATD3 run's initial network; **medium**: the evaluated actor whose return is "
        "closest to halfway between random and expert; **expert**: the best evaluated actor. Each is "
        "recorded with the Gaussian collection noise stated per environment.",
        "- **medium-replay**: the run's replay buffer up to the medium checkpoint, re-recorded from the "
        "shipped replay actors in proportion to the steps each was in charge (uniform actions during warm-up).",
        "- Normalised score = 100 (S - S_random) / (S_expert - S_random), with the reference returns of the "
        "random and expert behaviour policies (1,000 episodes each, with their standard errors) stored in every "
        "file's metadata (format version 2).",
        "",
        "## Format: one uncompressed `.npz` per dataset",
        "",
        "npz needs numpy only (no h5py or zarr), never unpickles (`allow_pickle=False`; metadata is a 0-d "
        "unicode array of JSON), and uncompressed members are read straight from their file offsets.",
    ]
    if measure_load:
        timing = measure_load_time(envs[0])
        lines.append(
            f"Measured in this run: {timing['transitions']:,} `{envs[0]}` transitions ({timing['file_mb']:.0f} MB) "
            f"load and validate in **{timing['load_s']:.2f} s** from a cold page cache (target: under 10 s)."
        )
        summaries["load_time"] = timing
    lines += [
        "",
        "## Commands",
        "",
        "```bash",
        "# behaviour policies (already shipped; retraining is optional)",
        "om2p data train-behaviour --env ENV ... --out runs/behaviour/ENV  # the flags: per environment below",
        "om2p data ship-behaviour --env ENV --run runs/behaviour/ENV  # also measures the references",
        "om2p data references --env ENV --episodes 1000  # remeasure them alone (references.json)",
        "# the datasets on this page: per environment, the make-default line under its table; or one file:",
        "om2p data collect --env ENV --quality QUALITY --transitions N --seed 0 --out data/ENV/QUALITY.npz",
        f"om2p data report --data {data_dir.as_posix()} --out {out.as_posix()}",
        "```",
        "",
    ]
    for env in envs:
        lines += [f"## {env}", ""]
        lines += _behaviour_section(env, checkpoints_root)
        section, summary = _dataset_section(env, data_dir, doc_dir / "img" / f"datasets_{env}.png", doc_dir)
        lines += section
        summaries[env] = summary
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    return summaries

"""`make results`: the offline results grid. Every (environment, dataset quality, algorithm, seed) is one
`om2p train` subprocess under `RUNS/<env>/<quality>/<algo>/seed_<s>/`; the grid is resumable (finished runs
are skipped, unfinished ones continue with `--resume`). Afterwards the final evaluations are gathered into
`docs/results.md` (score tables, OM2P ablations, inference cost measured on the trained checkpoints, learning
curves under `docs/img/`) and the raw numbers into `benchmarks/results/results.json`.

    python -m benchmarks.results --jobs 2              # the published grid: 300 runs, ~4 h on 2 cores
    python -m benchmarks.results --smoke /tmp/smoke    # two cells, a few steps: checks the plumbing
"""

from __future__ import annotations

import argparse
import csv
import datetime
import fcntl
import itertools
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from training.data.format import QUALITIES
from training.published_settings import published_overrides

ROOT = Path(__file__).resolve().parent.parent
BASE_ALGO = "om2p"
# OM2P ablations: each is `om2p` trained with these `--set` overrides.
ABLATIONS: dict[str, tuple[str, ...]] = {
    "om2p-jvp": ("du_dt=jvp",),
    "om2p-zero": ("du_dt=zero",),
    "om2p-uniform": ("time_sampler=uniform",),
    "om2p-alpha0": ("alpha=0",),
    # Q supervision at the weight of the BC term: the normalised Q loss is small next to L_MF at 0.03.
    "om2p-alpha1": ("alpha=1",),
}
DEFAULT_ABLATIONS = ["om2p-jvp", "om2p-zero", "om2p-uniform", "om2p-alpha0"]
INFERENCE_BATCHES = (1, 1024)
LOG_FILE = "train.log"
INFO = "checkpoint.json"  # training.checkpoint.INFO_FILE, without importing torch at module load

# Defaults of the full grid, the one docs/results.md publishes; `--smoke` swaps in `smoke_defaults`.
# Explicit flags win over both; `--set`s add to the default ones, and a `--cell-set` replaces the default
# settings of its cell.
FULL_DEFAULTS: dict[str, Any] = {
    "envs": ["cooperative_navigation", "predator_prey"],
    "qualities": list(QUALITIES),
    "algos": ["om2p", "bc", "matd3bc", "omar", "flow", "diffusion"],
    "ablations": DEFAULT_ABLATIONS,
    "ablation_cells": [
        "cooperative_navigation:medium-replay",
        "cooperative_navigation:medium",
        "predator_prey:medium",
    ],
    "seeds": [0, 1, 2, 3, 4],
    "steps": 5000,
    "eval_every": 1000,
    "eval_episodes": 50,
    # Sized for one CPU core per run. OMAR runs its published search and per-dataset weights
    # (training/published_settings.py, added to every omar run by `Settings.run_overrides`).
    "set": [
        "actor_hidden=[128,128]",
        "critic_hidden=[128,128]",
        "batch_size=128",
        "alpha=10",
    ],
    # The Q weight per dataset, as the OM2P reference tunes it (chosen on seed 0; docs/results.md).
    "cell_set": [
        "cooperative_navigation:expert:alpha=3",
        "cooperative_navigation:medium-replay:alpha=1000",
        "cooperative_navigation:random:alpha=30",
        "predator_prey:expert:alpha=3",
        "predator_prey:medium:alpha=3",
        "predator_prey:medium-replay:alpha=3",
        "predator_prey:random:alpha=3",
    ],
    "data": "data",
    "runs": "runs/results",
    "out": "docs/results.md",
    "json": "benchmarks/results/results.json",
    "notes": "docs/results_notes.md",
    "jobs": 1,
    "device": "cpu",
    "dataset_transitions": None,  # None: make-default's size
    "timing_budget_s": 1.0,
}


class ResultsError(Exception):
    """A problem the user must fix (missing data, a run trained with another config): one line, exit 2."""


def smoke_defaults(directory: Path) -> dict[str, Any]:
    """Two cells, one seed, two algorithms, a few steps with tiny networks, everything under `directory`.
    `bc` is the second algorithm when this build has it, else the `om2p-alpha0` ablation stands in."""
    from training.algos import available_algorithms

    second = "bc" if "bc" in available_algorithms() else "om2p-alpha0"
    return {
        **FULL_DEFAULTS,
        "envs": ["cooperative_navigation"],
        "qualities": ["expert", "random"],
        "algos": [BASE_ALGO, second],
        "ablations": [],
        "ablation_cells": [],
        "seeds": [0],
        "steps": 4,
        "eval_every": 2,
        "eval_episodes": 2,
        "set": [
            "actor_hidden=[32,32]",
            "critic_hidden=[32,32]",
            "batch_size=32",
            "eval_envs=2",
            "log_every=1",
        ],
        "data": str(directory / "data"),
        "runs": str(directory / "runs"),
        "out": str(directory / "results.md"),
        "json": str(directory / "results.json"),
        "jobs": 2,
        "dataset_transitions": 1000,
        "timing_budget_s": 0.05,
        "cell_set": [],
        "notes": None,
    }


@dataclass(frozen=True)
class Run:
    """One training run of the grid; `column` is an algorithm or an ablation variant of OM2P."""

    env: str
    quality: str
    column: str
    seed: int

    @property
    def algo(self) -> str:
        return BASE_ALGO if self.column in ABLATIONS else self.column

    @property
    def overrides(self) -> tuple[str, ...]:
        return ABLATIONS.get(self.column, ())


@dataclass
class Settings:
    """The resolved options of one invocation."""

    envs: list[str]
    qualities: list[str]
    algos: list[str]
    ablations: list[str]
    ablation_cells: list[tuple[str, str]]
    seeds: list[int]
    steps: int
    eval_every: int
    eval_episodes: int
    overrides: list[str]
    data: Path
    runs: Path
    out: Path
    json_path: Path
    jobs: int
    device: str
    dataset_transitions: int | None
    timing_budget_s: float
    invocation: str
    cells: list[tuple[str, str]]
    """(env, quality) pairs of the main table: every env x quality, or `--cells`"""
    notes: Path | None = None
    """markdown appended as the report's Notes section (`--notes`)"""
    cell_overrides: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    """(env, quality) -> `--set` overrides for every algorithm of that cell (`--cell-set`)"""

    def qualities_of(self, env: str) -> list[str]:
        return [quality for cell_env, quality in self.cells if cell_env == env]

    def run_dir(self, run: Run) -> Path:
        return self.runs / run.env / run.quality / run.column / f"seed_{run.seed}"

    def dataset(self, env: str, quality: str) -> Path:
        return self.data / env / f"{quality}.npz"

    def run_overrides(self, run: Run) -> list[str]:
        # One thread per run: `--jobs` processes share the cores. The published per-dataset settings of a
        # baseline come first, a cell's own overrides beat the grid's; ablation overrides come last and win
        # (om2p-alpha0 stays alpha 0 in a cell that sets alpha).
        published = published_overrides(run.algo, run.env, run.quality)
        cell = self.cell_overrides.get((run.env, run.quality), [])
        return ["num_threads=1", *published, *self.overrides, *cell, *run.overrides]

    @property
    def images(self) -> Path:
        return self.out.parent / "img"


# ---------------------------------------------------------------- options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.results",
        description="Train the offline results grid (resumable) and write docs/results.md.",
    )
    parser.add_argument(
        "--envs", nargs="+", help="environments (default: cooperative_navigation predator_prey)"
    )
    parser.add_argument("--qualities", nargs="+", choices=QUALITIES, help="dataset qualities (default: all)")
    parser.add_argument("--algos", nargs="+", help="algorithms, or ablation names as extra columns")
    parser.add_argument(
        "--ablations", nargs="+", choices=list(ABLATIONS), help="OM2P variants (default: all)"
    )
    parser.add_argument("--no-ablations", action="store_true", help="run no ablations")
    parser.add_argument(
        "--cells",
        nargs="+",
        metavar="ENV:QUALITY",
        help="main-table cells instead of every --envs x --qualities (e.g. a second env in two qualities)",
    )
    parser.add_argument(
        "--ablation-cells", nargs="+", metavar="ENV:QUALITY", help="cells the ablations run on"
    )
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds (default: 0 1 2 3 4)")
    parser.add_argument(
        "--steps", type=int, help=f"gradient steps per run (default {FULL_DEFAULTS['steps']})"
    )
    parser.add_argument(
        "--eval-every", type=int, help=f"steps between evaluations (default {FULL_DEFAULTS['eval_every']})"
    )
    parser.add_argument("--eval-episodes", type=int, help="episodes per evaluation (default 50)")
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="config override for every run, after the published grid's (repeatable)",
    )
    parser.add_argument(
        "--cell-set",
        action="append",
        metavar="ENV:QUALITY:KEY=VALUE",
        help="config override for every algorithm of one cell, after --set (repeatable), e.g. a per-dataset "
        "Q weight as the OM2P reference tunes it: cooperative_navigation:expert:alpha=3; replaces the "
        "published grid's settings of that cell",
    )
    parser.add_argument("--data", help="dataset root: DATA/<env>/<quality>.npz (default data)")
    parser.add_argument("--runs", help="run root (default runs/results)")
    parser.add_argument("--out", help="markdown report (default docs/results.md; images go to its img/)")
    parser.add_argument("--json", help="raw numbers (default benchmarks/results/results.json)")
    parser.add_argument("--jobs", type=int, help="training processes in parallel (default 1)")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="training device (default cpu)")
    parser.add_argument(
        "--notes",
        help="markdown file appended to the report as its Notes section (default docs/results_notes.md)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: write the report from the runs that exist (unfinished ones are listed)",
    )
    parser.add_argument(
        "--smoke", metavar="DIR", help="two cells, a few steps, one seed, two algorithms; writes under DIR"
    )
    return parser


def parse_cell(text: str, option: str = "--ablation-cells") -> tuple[str, str]:
    env, sep, quality = text.partition(":")
    if not sep or quality not in QUALITIES:
        raise ResultsError(f"{option} {text!r}: expected ENV:QUALITY with a quality in {QUALITIES}")
    return env, quality


def parse_cell_override(text: str) -> tuple[tuple[str, str], str]:
    parts = text.split(":", 2)
    if len(parts) != 3 or "=" not in parts[2]:
        raise ResultsError(f"--cell-set {text!r}: expected ENV:QUALITY:KEY=VALUE")
    env, quality, override = parts
    return parse_cell(f"{env}:{quality}", "--cell-set"), override


def resolve_settings(args: argparse.Namespace, argv: Sequence[str]) -> Settings:
    """Explicit flags, else the smoke or the full defaults."""
    defaults = smoke_defaults(Path(args.smoke)) if args.smoke else FULL_DEFAULTS

    def pick(name: str) -> Any:
        value = getattr(args, name, None)
        return defaults[name] if value is None else value

    ablations = [] if args.no_ablations else pick("ablations")
    if args.cells:
        cells = list(dict.fromkeys(parse_cell(c, "--cells") for c in args.cells))
        envs = list(dict.fromkeys(env for env, _ in cells))
        qualities = [q for q in QUALITIES if any(q == quality for _, quality in cells)]
    else:
        envs, qualities = pick("envs"), pick("qualities")
        cells = [(env, quality) for env in envs for quality in qualities]
    cell_overrides: dict[tuple[str, str], list[str]] = {}
    for text in args.cell_set or []:
        cell, override = parse_cell_override(text)
        cell_overrides.setdefault(cell, []).append(override)
    # The default per-cell settings reach the cells of this grid that the command line left alone.
    given = set(cell_overrides)
    ablation_cells = [parse_cell(c) for c in pick("ablation_cells")] if ablations else []
    grid_cells = {*cells, *ablation_cells}
    for text in defaults["cell_set"]:
        cell, override = parse_cell_override(text)
        if cell in grid_cells and cell not in given:
            cell_overrides.setdefault(cell, []).append(override)
    settings = Settings(
        envs=envs,
        qualities=qualities,
        algos=pick("algos"),
        ablations=ablations,
        ablation_cells=ablation_cells,
        seeds=pick("seeds"),
        steps=pick("steps"),
        eval_every=pick("eval_every"),
        eval_episodes=pick("eval_episodes"),
        overrides=[*defaults["set"], *(args.set or [])],
        data=Path(pick("data")),
        runs=Path(pick("runs")),
        out=Path(pick("out")),
        json_path=Path(pick("json")),
        jobs=max(1, pick("jobs")),
        device=pick("device"),
        dataset_transitions=defaults["dataset_transitions"],
        timing_budget_s=defaults["timing_budget_s"],
        invocation=shlex.join(["python", "-m", "benchmarks.results", *argv]),
        cells=cells,
        notes=Path(pick("notes")) if pick("notes") else None,
        cell_overrides=cell_overrides,
    )
    validate(settings)
    if settings.notes is not None and not settings.notes.is_file():
        raise ResultsError(f"--notes {settings.notes}: no such file")
    return settings


def validate(settings: Settings) -> None:
    """Fail before any training on unknown names or a bad step budget."""
    from training.algos import available_algorithms
    from training.envs import ENV_NAMES

    available = available_algorithms()
    unknown = [a for a in settings.algos if a not in available and a not in ABLATIONS]
    if unknown:
        raise ResultsError(
            f"algorithms not in this build: {', '.join(unknown)} (training/algos/ has {', '.join(available)}); "
            "choose with --algos"
        )
    if (settings.ablations or any(a in ABLATIONS for a in settings.algos)) and BASE_ALGO not in available:
        raise ResultsError(f"the ablations need the {BASE_ALGO!r} algorithm, which is not in this build")
    envs = {*settings.envs, *(env for env, _ in settings.ablation_cells)}
    if bad := sorted(envs - set(ENV_NAMES)):
        raise ResultsError(f"unknown environments: {', '.join(bad)}; choose from {', '.join(ENV_NAMES)}")
    grid_cells = {*settings.cells, *settings.ablation_cells}
    if stray := [
        f"{env}:{quality}" for env, quality in settings.cell_overrides if (env, quality) not in grid_cells
    ]:
        raise ResultsError(f"--cell-set names cells outside this grid: {', '.join(stray)}")
    if settings.steps < 1 or settings.eval_episodes < 1 or not settings.seeds:
        raise ResultsError("--steps and --eval-episodes must be positive and --seeds non-empty")


# ---------------------------------------------------------------- the grid


def plan_runs(settings: Settings) -> list[Run]:
    """The main grid, then the ablation cells (OM2P and each variant); a run shared by both appears once."""
    runs = [
        Run(env, quality, algo, seed)
        for env, quality in settings.cells
        for algo in settings.algos
        for seed in settings.seeds
    ]
    if settings.ablations:
        runs += [
            Run(env, quality, column, seed)
            for env, quality in settings.ablation_cells
            for column in (BASE_ALGO, *settings.ablations)
            for seed in settings.seeds
        ]
    return list(dict.fromkeys(runs))


def needed_datasets(runs: Iterable[Run]) -> list[tuple[str, str]]:
    return list(dict.fromkeys((run.env, run.quality) for run in runs))


def ensure_datasets(cells: Sequence[tuple[str, str]], settings: Settings) -> list[Path]:
    """Build missing datasets with the code behind `om2p data make-default` (one file per missing cell, so
    existing files are never rewritten); returns the paths built. Without the shipped behaviour
    checkpoints nothing can be collected: the error names the missing files and the commands."""
    from training.data.cli import DEFAULT_TRANSITIONS
    from training.data.collect import collect
    from training.data.format import save_dataset

    missing = [(env, quality) for env, quality in cells if not settings.dataset(env, quality).is_file()]
    check_behaviour_checkpoints(missing, settings)
    transitions = settings.dataset_transitions or DEFAULT_TRANSITIONS
    built = []
    for env, quality in missing:
        path = settings.dataset(env, quality)
        print(f"{path}: missing; collecting {transitions} transitions (as `om2p data make-default` does)")
        built.append(save_dataset(path, collect(env, quality, transitions, seed=0)))
    return built


def check_behaviour_checkpoints(missing: Sequence[tuple[str, str]], settings: Settings) -> None:
    from training.behaviour.registry import load_manifest

    for env in dict.fromkeys(env for env, _ in missing):
        try:
            load_manifest(env)
        except FileNotFoundError as error:
            files = ", ".join(str(settings.dataset(e, q)) for e, q in missing)
            envs = " ".join(dict.fromkeys(e for e, _ in missing))
            raise ResultsError(
                f"datasets missing: {files}; they cannot be collected here ({error}). Build them with "
                f"`om2p data make-default --envs {envs} --out {settings.data}`, or point --data at them"
            ) from None


def final_checkpoint(run_dir: Path, steps: int) -> Path:
    return run_dir / "checkpoints" / f"step_{steps:08d}" / INFO


def run_state(run_dir: Path, steps: int) -> Literal["done", "partial", "new"]:
    """`done` (the final checkpoint for `steps` exists), `partial` (an earlier checkpoint to resume from)
    or `new`. A checkpoint beyond `steps` means the budget shrank: refused rather than misreported."""
    from training.checkpoint import CheckpointError, resolve_checkpoint

    if final_checkpoint(run_dir, steps).is_file():
        return "done"
    try:
        latest = resolve_checkpoint(run_dir)
    except (FileNotFoundError, CheckpointError):
        return "new"
    step = int(json.loads((latest / INFO).read_text())["step"])
    if step > steps:
        raise ResultsError(
            f"{run_dir}: holds step {step}, beyond the budget of {steps} steps; use another --runs directory"
        )
    return "partial"


def requested_config(run: Run, settings: Settings) -> Any:
    """The TrainConfig that `om2p train` builds from `train_command` (same precedence: flags < --set)."""
    from training.config import load_config

    return load_config(
        None,
        settings.run_overrides(run),
        env=run.env,
        dataset=str(settings.dataset(run.env, run.quality)),
        algo=run.algo,
        steps=settings.steps,
        seed=run.seed,
        device=settings.device,
        eval_every=settings.eval_every,
        eval_episodes=settings.eval_episodes,
    )


def check_configs(runs: Iterable[Run], settings: Settings) -> None:
    """Every run's config must build (a typo in --set fails here, not in each of the grid's processes)."""
    for run in runs:
        try:
            requested_config(run, settings)
        except ValueError as error:
            raise ResultsError(f"{settings.run_dir(run)}: {error}") from None


def check_recorded_config(run: Run, settings: Settings, state: str) -> None:
    """A finished or resumable run must have been trained with this invocation's config (budget and
    evaluation settings aside); otherwise its numbers would be reported under the wrong settings."""
    from training.checkpoint import resolve_checkpoint
    from training.trainer import RESUMABLE_CHANGES

    run_dir = settings.run_dir(run)
    path = (
        final_checkpoint(run_dir, settings.steps) if state == "done" else resolve_checkpoint(run_dir) / INFO
    )
    recorded = json.loads(path.read_text())["config"]
    wanted = requested_config(run, settings).to_dict()
    changed = sorted(k for k, v in wanted.items() if k not in RESUMABLE_CHANGES and recorded.get(k) != v)
    if changed:
        details = ", ".join(f"{k}: {recorded.get(k)!r} -> {wanted[k]!r}" for k in changed)
        raise ResultsError(
            f"{run_dir}: trained with a different configuration ({details}); "
            "remove it or choose another --runs directory"
        )


def train_command(run: Run, settings: Settings, resume: bool) -> list[str]:
    command = [
        sys.executable, "-m", "om2p.cli", "train",
        "--env", run.env,
        "--dataset", str(settings.dataset(run.env, run.quality)),
        "--algo", run.algo,
        "--seed", str(run.seed),
        "--steps", str(settings.steps),
        "--eval-every", str(settings.eval_every),
        "--eval-episodes", str(settings.eval_episodes),
        "--device", settings.device,
        "--out", str(settings.run_dir(run)),
        "--no-progress",
    ]  # fmt: skip
    for override in settings.run_overrides(run):
        command += ["--set", override]
    return [*command, "--resume"] if resume else command


RunOutcome = Literal["skipped", "trained", "resumed", "busy", "failed"]


def empty_report() -> dict[str, list[Run]]:
    """Runs by outcome, every outcome present (in RunOutcome's order, which the summary line keeps)."""
    return {outcome: [] for outcome in get_args(RunOutcome)}


@contextmanager
def run_lock(run_dir: Path) -> Iterator[bool]:
    """An exclusive, non-blocking lock on one run (a file beside its directory, so that removing a stale
    run directory keeps the lock); yields whether this process holds it. Two grids sharing a --runs
    directory then never train, or delete, the same run at once. The kernel drops it if the process dies."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(run_dir.parent / f".{run_dir.name}.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def train_one(run: Run, settings: Settings) -> RunOutcome:
    """One `om2p train` subprocess under the run's lock, its output appended to the run's train.log.

    The state is read again under the lock: another grid may have finished or started the run since
    this one planned it."""
    run_dir = settings.run_dir(run)
    with run_lock(run_dir) as held:
        if not held:
            return "busy"
        state = run_state(run_dir, settings.steps)
        if state == "done":
            return "skipped"
        if state == "partial":
            try:
                check_recorded_config(run, settings, state)
            except ResultsError as error:
                with open(run_dir / LOG_FILE, "a") as log:
                    log.write(f"benchmarks.results: {error}\n")
                return "failed"
        if state == "new" and run_dir.exists():
            shutil.rmtree(run_dir)  # a start that never reached a checkpoint: its logs would be appended to
        run_dir.mkdir(parents=True, exist_ok=True)
        environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        command = train_command(run, settings, resume=state == "partial")
        with open(run_dir / LOG_FILE, "a") as log:
            log.write(f"$ {shlex.join(command)}\n")
            log.flush()
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=environment).returncode
    if code != 0:
        return "failed"
    return "resumed" if state == "partial" else "trained"


def log_tail(run_dir: Path, lines: int = 3) -> str:
    path = run_dir / LOG_FILE
    return " | ".join(path.read_text().strip().splitlines()[-lines:]) if path.is_file() else ""


def run_grid(runs: Sequence[Run], settings: Settings) -> dict[str, list[Run]]:
    """Train what is not finished, `settings.jobs` at a time, under one progress bar over the whole grid."""
    from tqdm import tqdm

    states = {run: run_state(settings.run_dir(run), settings.steps) for run in runs}
    for run, state in states.items():
        if state != "new":
            check_recorded_config(run, settings, state)
    todo = [run for run in runs if states[run] != "done"]
    report = empty_report()
    report["skipped"] = [r for r in runs if states[r] == "done"]
    bar = tqdm(total=len(runs), initial=len(report["skipped"]), unit="run", desc="results grid")
    with ThreadPoolExecutor(max_workers=settings.jobs) as pool:
        futures = {pool.submit(train_one, run, settings): run for run in todo}
        try:
            for future in as_completed(futures):
                run = futures[future]
                outcome = future.result()
                report[outcome].append(run)
                if outcome == "failed":
                    bar.write(
                        f"FAILED {settings.run_dir(run)}: {log_tail(settings.run_dir(run))}", file=sys.stderr
                    )
                elif outcome == "busy":
                    bar.write(
                        f"busy {settings.run_dir(run)}: another process is training it", file=sys.stderr
                    )
                bar.update(1)
        except KeyboardInterrupt:
            pool.shutdown(cancel_futures=True)
            raise
        finally:
            bar.close()
    return report


# ---------------------------------------------------------------- gathering


def read_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(step, normalised score) of every evaluation; a step logged twice (a resumed crash) keeps its last."""
    path = run_dir / "evaluations.csv"
    if not path.is_file():
        return []
    with open(path) as handle:
        points = {
            int(row["step"]): float(row["normalised_score"])
            for row in csv.DictReader(handle)
            if row["normalised_score"] not in ("", "None")
        }
    return sorted(points.items())


def read_outcome(run: Run, settings: Settings) -> dict[str, Any] | None:
    """The final evaluation of a finished run, from its final checkpoint.json; None if not finished."""
    path = final_checkpoint(settings.run_dir(run), settings.steps)
    if not path.is_file():
        return None
    info = json.loads(path.read_text())
    evaluation = info.get("evaluation") or {}
    return {
        "env": run.env,
        "quality": run.quality,
        "column": run.column,
        "algo": run.algo,
        "overrides": list(run.overrides),
        "seed": run.seed,
        "step": info["step"],
        "checkpoint": str(path.parent),
        "normalised_score": evaluation.get("normalised_score"),
        "mean_return": evaluation.get("mean_return"),
        "network_evaluations_per_action": info.get("network_evaluations_per_action", 1),
        "curve": read_curve(settings.run_dir(run)),
    }


def cell_summary(outcomes: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """Mean and (population) std of the final normalised score over seeds."""
    scores = [o["normalised_score"] for o in outcomes if o["normalised_score"] is not None]
    if not scores:
        return None
    return {"mean": float(np.mean(scores)), "std": float(np.std(scores)), "n": len(scores), "scores": scores}


def score_table(
    outcomes: Sequence[dict[str, Any]], cells: Iterable[tuple[str, str]], columns: Sequence[str]
) -> dict[str, dict[str, dict[str, dict[str, Any] | None]]]:
    """table[env][quality][column] = cell summary (None where no seed finished)."""
    table: dict[str, dict[str, dict[str, dict[str, Any] | None]]] = {}
    for env, quality in cells:
        row = table.setdefault(env, {}).setdefault(quality, {})
        for column in columns:
            row[column] = cell_summary(
                o for o in outcomes if (o["env"], o["quality"], o["column"]) == (env, quality, column)
            )
    return table


def best_column(row: dict[str, dict[str, Any] | None]) -> str | None:
    scored = {column: cell["mean"] for column, cell in row.items() if cell is not None}
    return max(scored, key=scored.__getitem__) if scored else None


def not_best_cells(table: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Cells where OM2P has a score and another algorithm's mean is higher."""
    flags = []
    for env, rows in table.items():
        for quality, row in rows.items():
            best = best_column(row)
            if row.get(BASE_ALGO) is not None and best not in (None, BASE_ALGO):
                flags.append(
                    {
                        "env": env,
                        "quality": quality,
                        "best": best,
                        "best_cell": row[best],
                        "om2p": row[BASE_ALGO],
                        "gap": row[best]["mean"] - row[BASE_ALGO]["mean"],
                        "gap_se": gap_standard_error(row[best]["scores"], row[BASE_ALGO]["scores"]),
                    }
                )
    return flags


def gap_standard_error(first: Sequence[float], second: Sequence[float]) -> float | None:
    """Standard error of the difference of two means over independent seeds (sample variances, Welch);
    each seed's score carries its evaluation noise too. None with fewer than two seeds on either side."""
    if len(first) < 2 or len(second) < 2:
        return None
    return float(np.sqrt(np.var(first, ddof=1) / len(first) + np.var(second, ddof=1) / len(second)))


# ---------------------------------------------------------------- inference cost


def fastest_ms(call: Callable[[], None], budget_s: float, warmup: int = 3) -> float:
    """Fastest wall time of `call` in ms, as `timeit` advises: slower repeats measure the machine's other
    work, not the call, and a shared 2-core machine moves a median by tens of percent between runs.
    Warm-up runs for `warmup` calls and a fifth of the budget (the first policy a process times pays for
    its thread pool and allocator); the repeat count then fits `budget_s` (5 to 10,000)."""
    import time

    warm_until = time.perf_counter() + budget_s / 5
    for index in itertools.count():
        call()
        if index + 1 >= warmup and time.perf_counter() >= warm_until:
            break
    started = time.perf_counter()
    call()
    first = time.perf_counter() - started
    fastest = first
    for _ in range(int(min(10_000, max(5, budget_s / max(first, 1e-9))))):
        started = time.perf_counter()
        call()
        fastest = min(fastest, time.perf_counter() - started)
    return fastest * 1e3


def time_checkpoint(checkpoint: str, budget_s: float) -> dict[str, Any]:
    """ms per batch of joint observations through the checkpoint's own policy (PyTorch, CPU, 1 thread)."""
    import torch

    from training.checkpoint import load_policy

    torch.set_num_threads(1)
    policy, info = load_policy(checkpoint, device="cpu")
    generator = torch.Generator().manual_seed(0)
    timings = {}
    for batch in INFERENCE_BATCHES:
        obs = torch.randn(batch, info.n_agents, info.obs_dim, generator=generator)
        noise = torch.zeros(batch, info.n_agents, info.act_dim)  # deterministic serving: e = 0

        def act(o: torch.Tensor = obs, e: torch.Tensor = noise) -> None:
            with torch.no_grad():
                policy(o, e)

        timings[batch] = fastest_ms(act, budget_s)
    return {"network_evaluations_per_action": info.network_evaluations_per_action, "ms": timings}


def measure_inference(outcomes: Sequence[dict[str, Any]], settings: Settings) -> list[dict[str, Any]]:
    """Per environment and main-table algorithm: one finished checkpoint timed (the first seed's, first
    quality's), and each algorithm's cost relative to OM2P's in the same environment."""
    rows = []
    for env in settings.envs:
        for column in settings.algos:
            found = next((o for o in outcomes if o["env"] == env and o["column"] == column), None)
            if found is not None:
                timed = time_checkpoint(found["checkpoint"], settings.timing_budget_s)
                rows.append({"env": env, "algo": column, "checkpoint": found["checkpoint"], **timed})
    for row in rows:
        base = next((r for r in rows if r["env"] == row["env"] and r["algo"] == BASE_ALGO), None)
        row["cost_vs_om2p"] = (
            {b: row["ms"][b] / base["ms"][b] for b in INFERENCE_BATCHES} if base is not None else None
        )
    return rows


# ---------------------------------------------------------------- report


def provenance(settings: Settings) -> dict[str, Any]:
    import torch

    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": settings.device,
        "cuda_device": torch.cuda.get_device_name(0) if settings.device == "cuda" else None,
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "load_average": ", ".join(f"{v:.1f}" for v in os.getloadavg()),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "git_commit": git_commit(),
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def format_cell(cell: dict[str, Any] | None, seeds: int, bold: bool = False) -> str:
    if cell is None:
        return "—"
    text = f"{cell['mean']:.1f} ± {cell['std']:.1f}"
    text = f"**{text}**" if bold else text
    return text if cell["n"] == seeds else f"{text} (n={cell['n']})"


def markdown_table(
    rows: dict[str, dict[str, dict[str, Any] | None]], columns: Sequence[str], first: str, seeds: int
) -> list[str]:
    """Rows of cells, the best mean per row in bold, and the best algorithm named in the last column."""
    lines = [
        f"| {first} | " + " | ".join(columns) + " | best |",
        "|---|" + "---:|" * len(columns) + "---|",
    ]
    for name, row in rows.items():
        best = best_column(row)
        cells = [format_cell(row[c], seeds, bold=c == best) for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {best or '—'} |")
    return lines


def command_template(settings: Settings) -> str:
    template = Run("ENV", "QUALITY", "ALGO", 0)
    command = train_command(template, settings, resume=False)
    command[0] = "python"
    text = shlex.join(command).replace("seed_0", "seed_SEED").replace("--seed 0", "--seed SEED")
    return text


def cell_override_lines(settings: Settings) -> list[str]:
    """The per-cell overrides (`--cell-set`) and the baselines' published per-dataset settings, which the
    command template above does not show."""
    lines = []
    published = {
        (algo, env, quality): overrides
        for algo in settings.algos
        for env, quality in settings.cells
        if (overrides := published_overrides(algo, env, quality))
    }
    if published:
        lines += [
            "Published per-dataset settings of the baselines (`training/published_settings.py`), given before"
            " the `--set`s above:",
            "",
            *(
                f"- {algo}, {env} / {quality}: " + ", ".join(f"`{o}`" for o in overrides)
                for (algo, env, quality), overrides in published.items()
            ),
            "",
        ]
    if settings.cell_overrides:
        lines += [
            "Per-dataset settings, given to every algorithm of the cell (after the `--set`s above):",
            "",
            *(
                f"- {env} / {quality}: " + ", ".join(f"`{o}`" for o in overrides)
                for (env, quality), overrides in settings.cell_overrides.items()
            ),
            "",
        ]
    return lines


def inference_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["No finished checkpoints to time."]
    lines = [
        "| env | algorithm | network evaluations per action | ms, batch 1 | ms, batch 1024 | "
        "cost vs OM2P, batch 1 | cost vs OM2P, batch 1024 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        ratio = row["cost_vs_om2p"]
        ratios = [f"{ratio[b]:.2f}x" if ratio else "—" for b in INFERENCE_BATCHES]
        lines.append(
            f"| {row['env']} | {row['algo']} | {row['network_evaluations_per_action']} | "
            f"{row['ms'][1]:.3f} | {row['ms'][1024]:.3f} | {ratios[0]} | {ratios[1]} |"
        )
    return lines


def cost_rows(env: str, inference: Sequence[dict[str, Any]], columns: Sequence[str]) -> list[str]:
    """Two rows under an environment's score table: what one action costs each column's checkpoint, so that
    score and cost are read side by side (the inference section below has the details)."""
    timed = {row["algo"]: row for row in inference if row["env"] == env}
    if not timed:
        return []
    evaluations = [str(timed[c]["network_evaluations_per_action"]) if c in timed else "—" for c in columns]
    ms = [f"{timed[c]['ms'][1]:.2f} / {timed[c]['ms'][1024]:.1f}" if c in timed else "—" for c in columns]
    return [
        "| *network evaluations per action* | " + " | ".join(evaluations) + " | |",
        "| *ms per batch of 1 / 1024 (CPU)* | " + " | ".join(ms) + " | |",
    ]


def render_markdown(
    settings: Settings,
    meta: dict[str, Any],
    table: dict[str, Any],
    ablations: dict[str, Any],
    flags: list[dict[str, Any]],
    inference: list[dict[str, Any]],
    images: dict[str, Path],
    unfinished: list[Path],
) -> str:
    seeds = len(settings.seeds)
    where = meta["device"] + (f" ({meta['cuda_device']})" if meta["cuda_device"] else "")
    lines = [
        "# Results",
        "",
        f"Measured on {meta['date']}: training on **{where}**, CPU {meta['cpu']} "
        f"({meta['cpus']} cores, load average {meta['load_average']} at the start), torch {meta['torch']}, "
        f"Python {meta['python']}, commit {meta['git_commit'] or 'unknown'}. Every number on this page comes "
        f"from the runs under `{settings.runs}` (raw numbers: `{settings.json_path}`).",
        "",
        "## How they were made",
        "",
        "```",
        settings.invocation,
        "```",
        "",
        f"Each run is one `om2p train` process (unfinished runs continue with `--resume`); budget "
        f"**{settings.steps} gradient steps** per run, seeds {', '.join(map(str, settings.seeds))}:",
        "",
        "```",
        command_template(settings),
        "```",
        "",
        *cell_override_lines(settings),
        f"A cell is the normalised score `100 (S - S_random) / (S_expert - S_random)` of the deterministic "
        f"policy (e = 0) at step {settings.steps}, {settings.eval_episodes} evaluation episodes with fixed "
        f"seeds, as `mean ± std` over seeds (population std; `n=` marks cells with fewer finished seeds). "
        "The best mean of each row is in bold.",
    ]
    if unfinished:
        lines += [
            "",
            f"**{len(unfinished)} run(s) have no final checkpoint** (their cells show `—` or `n=`; see each "
            "run's `train.log`): " + ", ".join(f"`{path}`" for path in unfinished),
        ]
    for env, rows in table.items():
        lines += ["", f"## {env}", "", *markdown_table(rows, settings.algos, "quality", seeds)]
        lines += cost_rows(env, inference, settings.algos)
        if env in images:
            image = os.path.relpath(images[env], settings.out.parent)
            lines += ["", f"![learning curves, {env}]({image})"]
    lines += ["", "## Where OM2P is not the best", ""]
    if BASE_ALGO not in settings.algos:
        lines.append("OM2P is not among the algorithms of this grid.")
    elif not flags:
        lines.append("OM2P has the best mean score in every cell it was run in.")
    for flag in flags:
        gap = f"; gap {flag['gap']:.1f}" + (
            f", {flag['gap'] / flag['gap_se']:.1f} standard errors over seeds" if flag["gap_se"] else ""
        )
        lines.append(
            f"- {flag['env']} / {flag['quality']}: best is **{flag['best']}** "
            f"({format_cell(flag['best_cell'], seeds)}) vs OM2P ({format_cell(flag['om2p'], seeds)}){gap}"
        )
    lines += ["", "## OM2P ablations", ""]
    if settings.ablations:
        rows = {
            f"{env} / {quality}": row
            for env, qualities in ablations.items()
            for quality, row in qualities.items()
        }
        lines += markdown_table(rows, [BASE_ALGO, *settings.ablations], "cell", seeds)
        lines += [
            "",
            *(f"- `{name}`: `om2p` with `--set {' '.join(ABLATIONS[name])}`" for name in settings.ablations),
        ]
    else:
        lines.append("No ablations in this run.")
    lines += [
        "",
        "## Inference cost",
        "",
        "Each algorithm's trained checkpoint (first finished seed of its first quality) through "
        "`training.checkpoint.load_policy`, PyTorch on CPU, one thread, `torch.no_grad`, deterministic noise; "
        "fastest of repeats after warm-up, ms per batch of joint observations. Network evaluations per action "
        "as recorded in checkpoint.json.",
        "",
        *inference_lines(inference),
        "",
    ]
    if settings.notes is not None:
        # A person's reading of the numbers: why a cell went the way it did. Kept in its own file so that
        # regenerating the tables never loses it.
        lines += ["## Notes", "", settings.notes.read_text().strip(), ""]
    return "\n".join(lines)


def plot_curves(outcomes: Sequence[dict[str, Any]], settings: Settings) -> dict[str, Path]:
    """docs/img/results_<env>.png: mean score over seeds against steps, one subplot per quality."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings.images.mkdir(parents=True, exist_ok=True)
    paths = {}
    for env in settings.envs:
        qualities = settings.qualities_of(env)
        figure, axes = plt.subplots(1, len(qualities), figsize=(4 * len(qualities), 3.4), squeeze=False)
        for axis, quality in zip(axes[0], qualities, strict=True):
            for column in settings.algos:
                curves = [
                    o["curve"]
                    for o in outcomes
                    if (o["env"], o["quality"], o["column"]) == (env, quality, column)
                ]
                steps, mean = mean_curve(curves)
                if steps:
                    axis.plot(steps, mean, marker=".", label=column)
            axis.set_title(quality)
            axis.set_xlabel("gradient step")
            axis.grid(alpha=0.3)
        axes[0][0].set_ylabel("normalised score")
        if axes[0][-1].get_lines():
            axes[0][-1].legend(fontsize=8)
        figure.suptitle(f"{env}: mean over seeds {', '.join(map(str, settings.seeds))}")
        figure.tight_layout()
        paths[env] = settings.images / f"results_{env}.png"
        figure.savefig(paths[env], dpi=110)
        plt.close(figure)
    return paths


def mean_curve(curves: Sequence[list[tuple[int, float]]]) -> tuple[list[int], list[float]]:
    """Mean score at each evaluation step, over the seeds that reached it."""
    by_step: dict[int, list[float]] = {}
    for curve in curves:
        for step, score in curve:
            by_step.setdefault(step, []).append(score)
    steps = sorted(by_step)
    return steps, [float(np.mean(by_step[s])) for s in steps]


# ---------------------------------------------------------------- main


def summarise(runs: Sequence[Run], settings: Settings, report: dict[str, list[Run]]) -> dict[str, Any]:
    """Gather the finished runs, time the checkpoints, write the JSON, the plots and the markdown."""
    found = {run: read_outcome(run, settings) for run in runs}
    outcomes = [o for o in found.values() if o is not None]
    unfinished = [settings.run_dir(run) for run, outcome in found.items() if outcome is None]
    cells = settings.cells
    table = score_table(outcomes, cells, settings.algos)
    ablations = score_table(outcomes, settings.ablation_cells, [BASE_ALGO, *settings.ablations])
    flags = not_best_cells(table)
    meta = provenance(settings)
    inference = measure_inference(outcomes, settings)
    images = plot_curves(outcomes, settings)
    results = {
        "meta": meta,
        "settings": {
            "invocation": settings.invocation,
            "train_command": command_template(settings),
            "steps": settings.steps,
            "seeds": settings.seeds,
            "eval_every": settings.eval_every,
            "eval_episodes": settings.eval_episodes,
            "overrides": settings.overrides,
            "cell_overrides": {f"{e}:{q}": o for (e, q), o in settings.cell_overrides.items()},
            "ablations": {name: list(ABLATIONS[name]) for name in settings.ablations},
        },
        "this_invocation": {key: len(value) for key, value in report.items()},
        "scores": table,
        "ablations": ablations,
        "om2p_not_best": flags,
        "inference": inference,
        "runs": outcomes,
        "unfinished": [str(path) for path in unfinished],
    }
    settings.json_path.parent.mkdir(parents=True, exist_ok=True)
    settings.json_path.write_text(json.dumps(results, indent=2) + "\n")
    settings.out.parent.mkdir(parents=True, exist_ok=True)
    settings.out.write_text(
        render_markdown(settings, meta, table, ablations, flags, inference, images, unfinished)
    )
    return results


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        # The report states the command that trains the grid, not the one that only re-read it.
        settings = resolve_settings(args, [a for a in argv if a != "--report-only"])
        runs = plan_runs(settings)
        check_configs(runs, settings)
        if args.report_only:
            report = empty_report()
        else:
            ensure_datasets(needed_datasets(runs), settings)
            report = run_grid(runs, settings)
        summarise(runs, settings, report)
    except ResultsError as error:
        print(f"benchmarks.results: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    counts = ", ".join(f"{len(v)} {k}" for k, v in report.items())
    print(f"{len(runs)} runs: {counts}; wrote {settings.out} and {settings.json_path}")
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())

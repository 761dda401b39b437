"""Running the grid: one run is one `om2p train` process (the validation curve) and one `om2p eval` process
(the test episodes) on the final checkpoint. Runs go to a local process pool (`--jobs`, one thread each) or,
with `--ray-address`, to Ray tasks on a Ray cluster. A worker returns its numbers; only the driver writes
records, so a run on another machine lands in this checkout's `records/`."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.grid.records import RunKey, config_hash, dataset_summary
from benchmarks.grid.settings import Cell, GridSettings
from training.checkpoint_files import CHECKPOINTS_DIR, INFO_FILE, step_dir

ROOT = Path(__file__).resolve().parents[2]
LOG_FILE = "train.log"
EPISODE_SEED_STRIDE = 1_000_003  # training.data.collect: dataset k's episodes use seeds k * stride + i


class GridError(Exception):
    """A problem the user must fix (missing or small data, overlapping seeds, a bad name): one line, exit 2."""


@dataclass(frozen=True)
class Job:
    """Everything a worker needs, and nothing it has to look up: plain data, picklable for Ray."""

    key: RunKey
    config_hash: str
    train_args: tuple[str, ...]
    run_dir: str
    steps: int
    test_seed: int
    test_episodes: int
    device: str
    cwd: str

    def train_command(self, resume: bool) -> list[str]:
        command = [sys.executable, "-m", "om2p.cli", "train", *self.train_args]
        return [*command, "--resume"] if resume else command

    def eval_command(self, checkpoint: Path) -> list[str]:
        return [
            sys.executable, "-m", "om2p.cli", "eval", str(checkpoint),
            "--seed", str(self.test_seed),
            "--episodes", str(self.test_episodes),
            "--envs", str(min(25, self.test_episodes)),
            "--device", self.device,
            "--json",
        ]  # fmt: skip


# ---------------------------------------------------------------- planning (driver)


def requested_config(settings: GridSettings, key: RunKey) -> dict[str, Any]:
    """The TrainConfig `om2p train` builds from the job's flags, as a dict (a typo in a `--set` fails here,
    before any process starts)."""
    from training.config import load_config

    budget, protocol = settings.budget(key.env), settings.protocol
    config = load_config(
        None,
        engine_overrides(settings, key),
        env=key.env,
        dataset=str(settings.dataset(key.cell)),
        algo=key.algo,
        steps=budget.steps,
        seed=key.seed,
        device=settings.device,
        eval_every=budget.eval_every,
        eval_episodes=protocol.validation_episodes,
    )
    return config.to_dict()


def engine_overrides(settings: GridSettings, key: RunKey) -> list[str]:
    """The settings' overrides, then the engine's own, which win: validation episodes for the curve, one
    thread per run (`--jobs` processes share the cores)."""
    episodes = settings.protocol.validation_episodes
    return [
        *settings.overrides(key.cell, key.algo, key.setting),
        f"eval_seed={settings.protocol.validation_seed}",
        f"eval_envs={min(25, episodes)}",
        "num_threads=1",
    ]


def make_job(settings: GridSettings, key: RunKey) -> Job:
    try:
        config = requested_config(settings, key)
    except ValueError as error:
        raise GridError(f"{key}: {error}") from None
    budget = settings.budget(key.env)
    test = {"seed": settings.protocol.test_seed, "episodes": budget.test_episodes}
    digest = config_hash(config, dataset_summary(settings.dataset(key.cell)), test)
    run_dir = settings.runs / key.relative().parent / f"{key.relative().name}-{digest}"
    args = [
        "--env", key.env,
        "--dataset", str(settings.dataset(key.cell)),
        "--algo", key.algo,
        "--seed", str(key.seed),
        "--steps", str(budget.steps),
        "--eval-every", str(budget.eval_every),
        "--eval-episodes", str(settings.protocol.validation_episodes),
        "--device", settings.device,
        "--out", str(run_dir),
        "--no-progress",
    ]  # fmt: skip
    for override in engine_overrides(settings, key):
        args += ["--set", override]
    return Job(
        key=key,
        config_hash=digest,
        train_args=tuple(args),
        run_dir=str(run_dir),
        steps=budget.steps,
        test_seed=test["seed"],
        test_episodes=test["episodes"],
        device=settings.device,
        cwd=os.getcwd(),
    )


def command_template(job: Job) -> str:
    """The `om2p train` command of one run, for the page."""
    return shlex.join(["python", "-m", "om2p.cli", "train", *job.train_args])


def ensure_datasets(cells: Sequence[Cell], settings: GridSettings) -> None:
    """Collect missing datasets (at `min_transitions`, as `om2p data collect` does), then check every one:
    large enough, and its episode seeds clear of the validation and test seeds."""
    from training.data.collect import collect
    from training.data.format import DatasetError, save_dataset

    missing = [cell for cell in cells if not settings.dataset(cell).is_file()]
    check_behaviour_checkpoints(missing, settings)
    for env, quality in missing:
        path = settings.dataset((env, quality))
        print(
            f"{path}: missing; collecting {settings.min_transitions:,} transitions "
            f"(om2p data collect --env {env} --quality {quality} --transitions {settings.min_transitions} "
            f"--out {path})"
        )
        save_dataset(path, collect(env, quality, settings.min_transitions, seed=0))
    for cell in cells:
        path = settings.dataset(cell)
        try:
            summary = dataset_summary(path)
        except (DatasetError, OSError) as error:
            raise GridError(f"{path}: {error}") from None
        check_dataset(path, summary, settings, cell)


def check_dataset(path: Path, summary: dict[str, Any], settings: GridSettings, cell: Cell) -> None:
    if summary["transitions"] < settings.min_transitions:
        raise GridError(
            f"{path}: {summary['transitions']:,} transitions; the grid needs at least "
            f"{settings.min_transitions:,}. Remake it with `om2p data collect --env {cell[0]} --quality {cell[1]} "
            f"--transitions {settings.min_transitions} --out {path}`"
        )
    protocol, budget = settings.protocol, settings.budget(cell[0])
    first = int(summary["seed"] or 0) * EPISODE_SEED_STRIDE
    spans = {
        "dataset episodes": (first, first + summary["episodes"]),
        "validation episodes": (
            protocol.validation_seed,
            protocol.validation_seed + protocol.validation_episodes,
        ),
        "test episodes": (protocol.test_seed, protocol.test_seed + budget.test_episodes),
    }
    names = list(spans)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            (a0, a1), (b0, b1) = spans[a], spans[b]
            if a0 < b1 and b0 < a1:
                raise GridError(
                    f"{path}: the seeds of the {a} [{a0}, {a1}) overlap those of the {b} [{b0}, {b1}); "
                    "the three sets must be disjoint"
                )


def check_behaviour_checkpoints(missing: Sequence[Cell], settings: GridSettings) -> None:
    from training.behaviour.registry import load_manifest

    for env in dict.fromkeys(env for env, _ in missing):
        try:
            load_manifest(env)
        except FileNotFoundError as error:
            files = ", ".join(str(settings.dataset(cell)) for cell in missing)
            raise GridError(
                f"datasets missing: {files}; they cannot be collected here ({error}). Collect them with "
                f"`om2p data collect --env ENV --quality QUALITY --transitions {settings.min_transitions} "
                "--out PATH`, or point --data at them"
            ) from None


# ---------------------------------------------------------------- one run (worker)


@contextmanager
def run_lock(run_dir: Path) -> Iterator[bool]:
    """An exclusive, non-blocking lock beside the run directory; yields whether this process holds it. Two
    grids sharing a runs directory never train the same run at once; the kernel drops it if one dies."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(run_dir.parent / f".{run_dir.name}.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def execute(job: Job) -> dict[str, Any]:
    """Train (or resume, or reuse a finished run directory), then evaluate the test episodes. Returns the
    record's measured part, or {"error": ...} with the log's last lines."""
    cwd = Path(job.cwd) if Path(job.cwd).is_dir() else ROOT  # another machine: its own checkout
    run_dir = cwd / job.run_dir
    environment = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    with run_lock(run_dir) as held:
        if not held:
            return {"error": f"busy: another process is training {run_dir}"}
        final = step_dir(run_dir, job.steps)
        started = time.perf_counter()
        resumed = False
        if not (final / INFO_FILE).is_file():
            resumed = any((run_dir / CHECKPOINTS_DIR).glob("step_*/" + INFO_FILE))
            if not resumed and run_dir.exists():
                shutil.rmtree(run_dir)  # a start that never reached a checkpoint
            run_dir.mkdir(parents=True, exist_ok=True)
            command = job.train_command(resume=resumed)
            with open(run_dir / LOG_FILE, "a") as log:
                log.write(f"$ {shlex.join(command)}\n")
                log.flush()
                code = subprocess.run(
                    command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=environment
                ).returncode
            if code != 0:
                return {"error": f"om2p train exited {code}: {log_tail(run_dir)}"}
        train_s = time.perf_counter() - started
        started = time.perf_counter()
        evaluated = subprocess.run(
            job.eval_command(final), cwd=cwd, capture_output=True, text=True, env=environment
        )
        if evaluated.returncode != 0:
            tail = " | ".join(evaluated.stderr.strip().splitlines()[-3:])
            return {"error": f"om2p eval exited {evaluated.returncode}: {tail}"}
        test = json.loads(evaluated.stdout)
        info = json.loads((final / INFO_FILE).read_text())
    return {
        "curve": read_curve(run_dir),
        "test_raw": {
            k: test[k] for k in ("first_seed", "episodes", "mean_return", "std_return", "normalised_score")
        },
        "steps": int(info["step"]),
        "network_evaluations_per_action": int(info.get("network_evaluations_per_action", 1)),
        "wall_s": {"train": round(train_s, 2), "test": round(time.perf_counter() - started, 2)},
        "resumed": resumed,
        "run_dir": str(run_dir),
        "machine": machine(job.device),
    }


def read_curve(run_dir: Path) -> list[list[float]]:
    """(step, normalised validation score) of every evaluation; a step logged twice (a resumed crash) keeps
    its last."""
    path = run_dir / "evaluations.csv"
    if not path.is_file():
        return []
    with open(path) as handle:
        points = {
            int(row["step"]): float(row["normalised_score"])
            for row in csv.DictReader(handle)
            if row["normalised_score"] not in ("", "None")
        }
    return [[step, score] for step, score in sorted(points.items())]


def log_tail(run_dir: Path, lines: int = 3) -> str:
    path = run_dir / LOG_FILE
    return " | ".join(path.read_text().strip().splitlines()[-lines:]) if path.is_file() else ""


def machine(device: str) -> dict[str, Any]:
    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    return {
        "host": platform.node(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "device": device,
        "torch": version("torch"),
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


# ---------------------------------------------------------------- executors (driver)


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A HOST:PORT that accepts no connection fails here in seconds; `ray.init` would retry for minutes."""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return  # `auto`, `ray://...`: Ray resolves those itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as error:
        raise GridError(
            f"--ray-address {address}: cannot connect ({error}); is the Ray head running?"
        ) from None


Done = Callable[[Job, dict[str, Any]], None]


def run_local(jobs: Sequence[Job], workers: int, done: Done) -> None:
    """A process pool of `workers`; each job's own processes are single-threaded."""
    if not jobs:
        return
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(execute, job): job for job in jobs}
        try:
            for future in as_completed(futures):
                job = futures[future]
                try:
                    result = future.result()
                except Exception as error:  # a worker that died: the run failed, the grid goes on
                    result = {"error": f"worker failed: {error!r}"}
                done(job, result)
        except KeyboardInterrupt:
            pool.shutdown(cancel_futures=True)
            raise


def run_ray(jobs: Sequence[Job], address: str, done: Done) -> None:
    """One Ray task per run (one CPU each) on the cluster at `address`. Every node needs this repository
    (its checkout on PYTHONPATH when `ray start` runs, the datasets at the same relative path)."""
    try:
        import ray
    except ImportError:
        raise GridError("--ray-address needs Ray: pip install -e '.[grid]'") from None
    if not jobs:
        return
    check_reachable(address)
    try:
        ray.init(address=address, log_to_driver=False, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise GridError(
            f"--ray-address {address}: {error} (a cluster with token authentication needs RAY_AUTH_MODE=token "
            "and its RAY_AUTH_TOKEN here too)"
        ) from None
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(execute)
        pending = {remote.remote(job): job for job in jobs}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except ray.exceptions.RayError as error:
                result = {"error": f"ray task failed: {str(error).splitlines()[0]}"}
            done(job, result)
    finally:
        ray.shutdown()

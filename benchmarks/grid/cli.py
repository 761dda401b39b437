"""`python -m benchmarks.grid` (`make results`): tune, then train the table, then write the page.

Phase 1 trains every candidate of every weighted algorithm on the tuning seeds; the validation scores choose
one per dataset (or per environment, `tune_on`). Phase 2 trains the chosen setting on the table seeds. Each
finished run becomes a record at once; a run whose record has the same config hash is skipped, so the grid
resumes after an interruption and accumulates across machines. The page is written from the records."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.grid import analysis, report, runner
from benchmarks.grid.records import (
    MACHINE_FIELDS,
    RECORD_VERSION,
    RunKey,
    dataset_summary,
    iter_records,
    read_record,
    record_path,
    write_record,
)
from benchmarks.grid.runner import GridError, Job
from benchmarks.grid.settings import GridSettings, full_grid, smoke_grid


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.grid",
        description="Tune and train the offline results grid (records are kept; resumable) and write the page.",
    )
    parser.add_argument("--jobs", type=int, help="local runs in parallel, one thread each (default 2)")
    parser.add_argument(
        "--ray-address", help="run as Ray tasks on this cluster (e.g. 127.0.0.1:6379 or auto)"
    )
    parser.add_argument("--cells", nargs="+", metavar="ENV:QUALITY", help="only these cells of the grid")
    parser.add_argument("--algos", nargs="+", help="only these algorithms")
    parser.add_argument("--seeds", nargs="+", type=int, help="table training seeds (default 0 1 2 3 4)")
    parser.add_argument(
        "--tuning-seeds", nargs="+", type=int, help="tuning training seeds (default 1000 1001)"
    )
    parser.add_argument("--data", help="dataset root DATA/<env>/<quality>.npz (default data/grid)")
    parser.add_argument("--records", help="record root (default benchmarks/results/records)")
    parser.add_argument("--runs", help="scratch run directories (default runs/grid; not committed)")
    parser.add_argument("--out", help="markdown page (default docs/results.md; plots go to its img/)")
    parser.add_argument("--json", help="raw numbers (default benchmarks/results/results.json)")
    parser.add_argument(
        "--notes",
        help="markdown file appended to the page as its Notes section (default docs/results_notes.md)",
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], help="training device (default cpu)")
    parser.add_argument("--report-only", action="store_true", help="train nothing: the page from the records")
    parser.add_argument(
        "--smoke", metavar="DIR", help="two cells, a few steps, one seed; everything under DIR"
    )
    return parser


def parse_cell(text: str) -> tuple[str, str]:
    env, sep, quality = text.partition(":")
    if not sep:
        raise GridError(f"--cells {text!r}: expected ENV:QUALITY")
    return env, quality


def whole_grid(args: argparse.Namespace) -> GridSettings:
    """The grid as defined (the smoke grid with --smoke), before this invocation's restrictions."""
    return smoke_grid(Path(args.smoke)) if args.smoke else full_grid()


def resolve(args: argparse.Namespace) -> GridSettings:
    settings = whole_grid(args)
    changes: dict[str, Any] = {}
    if args.cells:
        cells = [parse_cell(c) for c in args.cells]
        if stray := [f"{e}:{q}" for e, q in cells if (e, q) not in settings.cells]:
            raise GridError(f"--cells outside the grid: {', '.join(stray)}")
        changes["cells"] = tuple(cells)
    if args.algos:
        changes["algorithms"] = tuple(args.algos)
    if args.seeds or args.tuning_seeds:
        changes["protocol"] = dataclasses.replace(
            settings.protocol,
            **({"seeds": tuple(args.seeds)} if args.seeds else {}),
            **({"tuning_seeds": tuple(args.tuning_seeds)} if args.tuning_seeds else {}),
        )
    for name, attribute in (
        ("data", "data"),
        ("records", "records"),
        ("runs", "runs"),
        ("out", "out"),
        ("json", "json_path"),
        ("notes", "notes"),
    ):
        if getattr(args, name):
            changes[attribute] = Path(getattr(args, name))
    if args.device:
        changes["device"] = args.device
    if args.jobs is not None:
        changes["jobs"] = max(1, args.jobs)
    settings = dataclasses.replace(settings, **changes)
    validate(settings)
    if settings.notes is not None and not settings.notes.is_file():
        raise GridError(f"--notes {settings.notes}: no such file")
    return settings


# The options that say which grid the page shows and where it lives; the others (--cells, --algos, the
# seeds, --jobs, --ray-address, --report-only) only choose what one invocation trains, and how.
PAGE_OPTIONS = ("smoke", "data", "records", "runs", "out", "json", "notes", "device")


def page_settings(args: argparse.Namespace, settings: GridSettings) -> GridSettings:
    """The page always reports the whole grid: a run restricted to some cells, algorithms or seeds trains
    only those, and the page still shows every cell from the records (and the rest as missing runs)."""
    whole = whole_grid(args)
    return dataclasses.replace(
        settings, cells=whole.cells, algorithms=whole.algorithms, protocol=whole.protocol
    )


def page_invocation(args: argparse.Namespace) -> str:
    """The command that trains the whole grid the page shows (not the one that re-read or extended it)."""
    words = ["python", "-m", "benchmarks.grid"]
    for name in PAGE_OPTIONS:
        if value := getattr(args, name):
            words += [f"--{name}", value]
    return shlex.join(words)


def validate(settings: GridSettings) -> None:
    """Fail before any work on an unknown name, a missing budget or overlapping seed sets."""
    from training.algos import available_algorithms
    from training.envs import ENV_NAMES

    available = available_algorithms()
    if unknown := [a for a in settings.algorithms if a not in available]:
        raise GridError(
            f"algorithms not in this build: {', '.join(unknown)} (training/algos/ has {', '.join(available)})"
        )
    envs = list(dict.fromkeys(e for e, _ in settings.cells))
    if bad := [e for e in envs if e not in ENV_NAMES]:
        raise GridError(f"unknown environments: {', '.join(bad)}; choose from {', '.join(ENV_NAMES)}")
    if no_budget := [e for e in envs if e not in settings.budgets]:
        raise GridError(f"no step budget for {', '.join(no_budget)} in benchmarks/grid/settings.py")
    protocol = settings.protocol
    if not protocol.seeds or not protocol.tuning_seeds or set(protocol.seeds) & set(protocol.tuning_seeds):
        raise GridError("the table seeds and the tuning seeds must be non-empty and disjoint")


# ---------------------------------------------------------------- phases


class Progress:
    """Counts by outcome and one progress bar over a phase; writes each finished run's record at once."""

    def __init__(self, settings: GridSettings, total: int, skipped: int, phase: str) -> None:
        from tqdm import tqdm

        self.settings = settings
        self.counts = {"skipped": skipped, "trained": 0, "busy": 0, "failed": 0}
        self.bar = tqdm(total=total, initial=skipped, unit="run", desc=phase, file=sys.stderr)

    def done(self, job: Job, result: dict[str, Any]) -> None:
        if "error" in result:
            outcome = "busy" if result["error"].startswith("busy") else "failed"
            self.bar.write(f"{outcome.upper()} {job.key}: {result['error']}", file=sys.stderr)
        else:
            write_record(self.settings.records, make_record(self.settings, job, result))
            outcome = "trained"
        self.counts[outcome] += 1
        self.bar.update(1)


def make_record(settings: GridSettings, job: Job, result: dict[str, Any]) -> dict[str, Any]:
    key = job.key
    dataset = dataset_summary(settings.dataset(key.cell))
    raw = result.pop("test_raw")
    refs = dataset["reference_returns"]
    span = refs.get("expert", 0.0) - refs.get("random", 0.0)
    n = int(raw["episodes"])
    # The normalised score is linear in the mean return: its SE over test episodes scales the same way.
    se = 100.0 * raw["std_return"] / np.sqrt(n - 1) / span if span and n > 1 else None
    config = runner.requested_config(settings, key)
    return {
        "record_version": RECORD_VERSION,
        "env": key.env,
        "quality": key.quality,
        "algo": key.algo,
        "setting": key.setting,
        "seed": key.seed,
        "role": "table" if key.seed in settings.protocol.seeds else "tuning",
        "overrides": settings.overrides(key.cell, key.algo, key.setting),
        "config_hash": job.config_hash,
        "config": {k: v for k, v in config.items() if k not in MACHINE_FIELDS},
        "train_command": runner.command_template(job),
        "dataset": dataset,
        "validation": {
            "first_seed": settings.protocol.validation_seed,
            "episodes": settings.protocol.validation_episodes,
        },
        "test": {**raw, "normalised_se": se},
        **result,
    }


def run_phase(
    settings: GridSettings, keys: Sequence[RunKey], phase: str, ray_address: str | None
) -> dict[str, int]:
    jobs = [runner.make_job(settings, key) for key in dict.fromkeys(keys)]
    todo = []
    for job in jobs:
        recorded = read_record(record_path(settings.records, job.key))
        if recorded is None or recorded.get("config_hash") != job.config_hash:
            if recorded is not None:
                print(
                    f"{job.key}: recorded with config {recorded.get('config_hash')}, now {job.config_hash}: retraining"
                )
            todo.append(job)
    progress = Progress(settings, len(jobs), len(jobs) - len(todo), phase)
    try:
        if ray_address:
            runner.run_ray(todo, ray_address, progress.done)
        else:
            runner.run_local(todo, settings.jobs, progress.done)
    finally:
        progress.bar.close()
    return progress.counts


def tuning_keys(settings: GridSettings) -> list[RunKey]:
    return [
        RunKey(*cell, algo, setting, seed)
        for cell in dict.fromkeys(settings.tuning_cell(c) for c in settings.cells)
        for algo in settings.algorithms
        if len(candidates := settings.candidates_of(cell, algo)) > 1
        for setting in candidates
        for seed in settings.protocol.tuning_seeds
    ]


def table_keys(settings: GridSettings) -> list[RunKey]:
    tuned = analysis.tuning(settings, analysis.index(iter_records(settings.records)))
    return [
        RunKey(*cell, algo, setting, seed)
        for cell in settings.cells
        for algo in settings.algorithms
        if (setting := analysis.chosen_setting(settings, tuned, cell, algo)) is not None
        for seed in settings.protocol.seeds
    ]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    counts: dict[str, int] = {}
    try:
        settings = resolve(args)
        if not args.report_only:
            needed = list(
                dict.fromkeys([*settings.cells, *(settings.tuning_cell(c) for c in settings.cells)])
            )
            runner.ensure_datasets(needed, settings)
            for phase, keys in (("tuning", tuning_keys), ("table", table_keys)):
                for outcome, count in run_phase(settings, keys(settings), phase, args.ray_address).items():
                    counts[outcome] = counts.get(outcome, 0) + count
        records = analysis.index(iter_records(settings.records))
        template = next((r["train_command"] for r in records.values() if r["role"] == "table"), None)
        results = report.build(page_settings(args, settings), records, page_invocation(args), template)
    except GridError as error:
        print(f"benchmarks.grid: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    summary = ", ".join(f"{v} {k}" for k, v in counts.items()) or "report only"
    print(
        f"{len(records)} records ({summary}); {len(results['missing_runs'])} runs missing; "
        f"wrote {settings.out} and {settings.json_path}"
    )
    return 1 if counts.get("failed") else 0


if __name__ == "__main__":
    raise SystemExit(main())

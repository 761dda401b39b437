"""Why OMAR as published stays below behaviour cloning on cooperative_navigation expert: one change at a time.

Each variant is the grid's run of OMAR's published pair (coefficient 1, CQL weight 5; `docs/results.md`)
with one thing changed towards the setting the published numbers come from (github.com/ling-pan/OMAR):

- `force2d`: the original particle environments' 2-D force actions (env `cooperative_navigation_force2d`,
  the same transitions with their actions rewritten by `om2p data force2d`) instead of mpe2's 5-D actions,
  three directions of which move nothing;
- `reward_scale=10`, `reward_scale=100`: larger rewards. The search's softmax and CQL's log-sum-exp act on
  the raw Q at temperature 1, so their sharpness depends on Q's scale; the published code's reward (a sum
  of min(1/d, 10) terms) is far larger than mpe2's (about -0.5 per step here);
- `samples=100`: a denser search (3 x 100 samples instead of 3 x 10);
- `gamma=0.95`: the published discount and target rate (0.95, 0.01);
- `published schedule`: the published code's optimisation (2,000 updates of batch 1,024 at learning rate
  0.01, discount 0.95, target rate 0.01).

Scores are what the grid's tuning reads: the mean normalised validation score over the last third of the
curve (validation episodes only; no test episode is used here). The references are the grid's own records
of the same dataset: OMAR's published pair (tuning seeds) and bc (its table seeds' validation curves).

    python -m benchmarks.omar_diagnostics                # runs what is missing (resumable), then reports
    python -m benchmarks.omar_diagnostics --report-only  # the table and plot from the committed records

Records: benchmarks/results/omar_diagnostics.json (committed); runs: runs/omar_diagnostics (not).
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.grid.analysis import mean_se, validation_score
from benchmarks.grid.records import iter_records

ENV, FORCE_ENV = "cooperative_navigation", "cooperative_navigation_force2d"
DATASET = Path("data/grid/cooperative_navigation/expert.npz")
FORCE_DATASET = Path("data/diag/cooperative_navigation_force2d/expert.npz")
PUBLISHED_PAIR = "omar.coef=1,omar.cql_weight=5"
BASE_SETS = (
    "actor_hidden=[128,128]", "critic_hidden=[128,128]", "bf16_autocast=false", "compile_update=true",
    "omar.coef=1", "omar.cql_weight=5", "eval_seed=100000", "eval_envs=10", "num_threads=1",
)  # fmt: skip
GRID_BUDGET = ("--steps", "20000", "--eval-every", "1000", "--set", "batch_size=128")


@dataclass(frozen=True)
class Variant:
    name: str
    sets: tuple[str, ...] = ()
    force2d: bool = False
    budget: tuple[str, ...] = GRID_BUDGET


PUBLISHED_SCHEDULE = ("--steps", "2000", "--eval-every", "100", "--set", "batch_size=1024")
VARIANTS = (
    Variant("force2d", force2d=True),
    Variant("reward_scale=10", ("reward_scale=10",)),
    Variant("reward_scale=100", ("reward_scale=100",)),
    Variant("gamma=0.95", ("gamma=0.95", "tau=0.01")),
    Variant("samples=100", ("omar.samples=100",)),
    Variant(
        "published schedule",
        ("gamma=0.95", "tau=0.01", "actor_lr=0.01", "critic_lr=0.01"),
        budget=PUBLISHED_SCHEDULE,
    ),
)


def train_command(variant: Variant, seed: int, out: Path) -> list[str]:
    env, dataset = (FORCE_ENV, FORCE_DATASET) if variant.force2d else (ENV, DATASET)
    command = [sys.executable, "-m", "om2p.cli", "train", "--env", env, "--dataset", str(dataset)]
    command += ["--algo", "omar", "--seed", str(seed), "--eval-episodes", "10", "--device", "cpu"]
    command += ["--no-progress", "--out", str(out), *variant.budget]
    for override in (*BASE_SETS, *variant.sets):
        command += ["--set", override]
    return command


def read_curve(run_dir: Path) -> list[tuple[int, float]]:
    path = run_dir / "evaluations.csv"
    if not path.is_file():
        return []
    with path.open() as handle:
        return [(int(row["step"]), float(row["normalised_score"])) for row in csv.DictReader(handle)]


def final_step(variant: Variant) -> int:
    return int(variant.budget[variant.budget.index("--steps") + 1])


def ensure_force_dataset() -> None:
    """The 2-D force copy of the grid's dataset (`om2p data force2d`), made once before any run needs it."""
    if FORCE_DATASET.is_file():
        return
    if not DATASET.is_file():
        raise SystemExit(f"{DATASET}: missing; `python -m benchmarks.grid --cells {ENV}:expert` collects it")
    from training.data.force2d import SOURCE_ENV, to_force_actions
    from training.data.format import load_dataset, save_dataset

    save_dataset(FORCE_DATASET, to_force_actions(load_dataset(DATASET, env=SOURCE_ENV), DATASET))


def run_variant(variant: Variant, seed: int, runs: Path) -> dict[str, Any]:
    """Train (or resume, or reuse a finished run directory) and return the run's record."""
    out = runs / variant.name.replace(" ", "_") / f"seed_{seed}"
    command = train_command(variant, seed, out)
    curve = read_curve(out)
    if not curve or curve[-1][0] < final_step(variant):
        resume = ["--resume"] if (out / "checkpoints").is_dir() else []
        subprocess.run([*command, *resume], check=True, stdout=subprocess.DEVNULL)
        curve = read_curve(out)
    record = {"variant": variant.name, "seed": seed, "curve": curve}
    record["score"] = validation_score(record)
    record["command"] = shlex.join(["python", *command[1:]])
    return record


def grid_references(records_root: Path) -> dict[str, list[dict[str, Any]]]:
    """The grid's records on the same dataset that the variants are read against."""
    found: dict[str, list[dict[str, Any]]] = {"published pair (grid)": [], "bc (grid)": []}
    for record in iter_records(records_root):
        if (record["env"], record["quality"]) != (ENV, "expert"):
            continue
        if record["algo"] == "omar" and record["setting"] == PUBLISHED_PAIR:
            found["published pair (grid)"].append(record)
        elif record["algo"] == "bc":
            found["bc (grid)"].append(record)
    return found


def summary(
    records: list[dict[str, Any]], references: dict[str, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    rows = []
    for name, group in references.items():
        rows.append({"variant": name, **(mean_se([validation_score(r) for r in group]) or {})})
    for variant in VARIANTS:
        scores = [r["score"] for r in records if r["variant"] == variant.name and r["score"] is not None]
        rows.append({"variant": variant.name, **(mean_se(scores) or {"n": 0})})
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| OMAR variant | validation score (last third) | seeds |", "|---|---:|---:|"]
    for row in rows:
        if not row.get("n"):
            lines.append(f"| {row['variant']} | — | 0 |")
            continue
        se = f" ± {row['se']:.1f}" if row.get("se") is not None else " (one seed)"
        lines.append(f"| {row['variant']} | {row['mean']:.1f}{se} | {row['n']} |")
    return "\n".join(lines)


PLOT_FLOOR = -60.0
"""The plot's lowest score: curves that fall further say their minimum in the legend."""


def plot(records: list[dict[str, Any]], references: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[list[tuple[int, float]]]] = {}
    for name, group in references.items():
        groups[name] = [record["curve"] for record in group]
    for record in records:
        groups.setdefault(record["variant"], []).append(record["curve"])
    figure, axis = plt.subplots(figsize=(10.5, 4.5))
    lowest = np.inf
    for name, curves in groups.items():
        curves = [c for c in curves if c]
        if not curves:
            continue
        length = min(len(c) for c in curves)
        final = curves[0][length - 1][0]
        fraction = np.array([s for s, _ in curves[0][:length]]) / final
        mean = np.mean([[v for _, v in c[:length]] for c in curves], axis=0)
        style = "--" if "grid" in name else "-"
        label = f"{name} (n={len(curves)})"
        low = float(mean.min())
        if low < PLOT_FLOOR:  # one collapsing variant would squash every other curve
            label += f", min {low:.0f} (off the axis)"
        axis.plot(fraction, mean, style, label=label)
        lowest = min(lowest, low)
    if lowest < PLOT_FLOOR:
        axis.set_ylim(bottom=PLOT_FLOOR)
    axis.set_xlabel("fraction of the run's updates")
    axis.set_ylabel("normalised validation score")
    axis.set_title("OMAR on cooperative_navigation expert: one change at a time")
    axis.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside the curves, not on them
    axis.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.omar_diagnostics", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=[1000, 1001], help="training seeds per variant"
    )
    parser.add_argument("--variants", nargs="+", choices=[v.name for v in VARIANTS], help="only these")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel, one thread each")
    parser.add_argument("--runs", type=Path, default=Path("runs/omar_diagnostics"), help="run directories")
    parser.add_argument(
        "--records", type=Path, default=Path("benchmarks/results/records"), help="grid records"
    )
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/omar_diagnostics.json"))
    parser.add_argument("--plot", type=Path, default=Path("docs/img/omar_diagnostics.png"))
    parser.add_argument(
        "--report-only", action="store_true", help="train nothing: report the committed records"
    )
    args = parser.parse_args(argv)

    stored = json.loads(args.json.read_text())["runs"] if args.json.is_file() else []
    done = {(r["variant"], r["seed"]) for r in stored}
    failed: list[tuple[str, int]] = []
    if not args.report_only:
        from tqdm import tqdm

        wanted = [v for v in VARIANTS if not args.variants or v.name in args.variants]
        # Every variant's first seed before any second seed: a cut-off session leaves the widest evidence.
        todo = [(v, s) for s in args.seeds for v in wanted if (v.name, s) not in done]
        if any(v.force2d for v, _ in todo):
            ensure_force_dataset()  # here, not in the workers: two force2d runs must not both write it
        with (
            ThreadPoolExecutor(max_workers=args.jobs) as pool,
            tqdm(total=len(todo), unit="run", desc="omar diagnostics", file=sys.stderr) as bar,
        ):
            futures = {pool.submit(run_variant, v, s, args.runs): (v.name, s) for v, s in todo}
            for future in as_completed(futures):
                bar.update()
                try:
                    stored.append(future.result())
                except subprocess.CalledProcessError as error:
                    failed.append(futures[future])
                    print(f"{futures[future]}: om2p train exited with {error.returncode}", file=sys.stderr)
                    continue
                write(args.json, stored)  # after every run: a cut-off session keeps what finished
    references = grid_references(args.records)
    rows = summary(stored, references)
    write(args.json, stored, rows)
    plot(stored, references, args.plot)
    print(markdown(rows))
    print(f"wrote {args.json} and {args.plot}")
    return 1 if failed else 0


def write(path: Path, runs: list[dict[str, Any]], rows: list[dict[str, Any]] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ordered = sorted(runs, key=lambda r: ([v.name for v in VARIANTS].index(r["variant"]), r["seed"]))
    content: dict[str, Any] = {"runs": ordered}
    if rows is not None:
        content["summary"] = rows
    path.write_text(json.dumps(content, indent=1) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())

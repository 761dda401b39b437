"""docs/results.md, benchmarks/results/results.json and the learning-curve plots, from records alone."""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.grid import analysis
from benchmarks.grid.records import RunKey
from benchmarks.grid.settings import DEFAULT_SETTING, GridSettings

BASE_ALGO = "om2p"


def build(
    settings: GridSettings, records: analysis.Records, invocation: str, template: str | None
) -> dict[str, Any]:
    """Analyse the records and write the JSON, the plots and the page; returns the JSON's content."""
    tuned = analysis.tuning(settings, records)
    scores = analysis.table(settings, records, tuned)
    standing = analysis.standing(scores, BASE_ALGO)
    datasets = dataset_rows(settings, records)
    missing = missing_runs(settings, records, tuned)
    results = {
        "protocol": protocol_dict(settings),
        "invocation": invocation,
        "train_command": template,
        "written": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "datasets": datasets,
        "tuning": [{"env": e, "quality": q, "algo": a, **entry} for (e, q, a), entry in tuned.items()],
        "scores": scores,
        "om2p_standing": standing,
        "missing_runs": missing,
        "records": len(records),
    }
    settings.json_path.parent.mkdir(parents=True, exist_ok=True)
    settings.json_path.write_text(json.dumps(results, indent=1) + "\n")
    images = plot_curves(settings, records, scores)
    settings.out.parent.mkdir(parents=True, exist_ok=True)
    settings.out.write_text(render(settings, results, images))
    return results


def protocol_dict(settings: GridSettings) -> dict[str, Any]:
    p = settings.protocol
    return {
        "seeds": list(p.seeds),
        "tuning_seeds": list(p.tuning_seeds),
        "validation": {"first_seed": p.validation_seed, "episodes": p.validation_episodes},
        "test_first_seed": p.test_seed,
        "budgets": {env: vars(b) for env, b in settings.budgets.items()},
        "common": list(settings.common),
        "algo_set": {a: list(o) for a, o in settings.algo_set.items()},
        "cell_set": {
            f"{e}:{q}": {a: list(o) for a, o in m.items()} for (e, q), m in settings.cell_set.items()
        },
        "tune_on": settings.tune_on,
        "min_transitions": settings.min_transitions,
    }


def dataset_rows(settings: GridSettings, records: analysis.Records) -> list[dict[str, Any]]:
    """Per cell, the dataset summary its records carry (size, own mean return, references with SEs)."""
    rows = []
    for cell in settings.cells:
        found = next((r["dataset"] for k, r in records.items() if k.cell == cell), None)
        if found is not None:
            rows.append({"env": cell[0], "quality": cell[1], **found})
    return rows


def missing_runs(settings: GridSettings, records: analysis.Records, tuned: dict) -> list[str]:
    out = []
    for cell in dict.fromkeys(settings.tuning_cell(c) for c in settings.cells):
        for algo in settings.algorithms:
            candidates = settings.candidates_of(cell, algo)
            if len(candidates) > 1:
                out += [
                    str(key)
                    for setting in candidates
                    for seed in settings.protocol.tuning_seeds
                    if (key := RunKey(*cell, algo, setting, seed)) not in records
                ]
    for cell in settings.cells:
        for algo in settings.algorithms:
            setting = analysis.chosen_setting(settings, tuned, cell, algo)
            if setting is None:
                out.append(f"{cell[0]}/{cell[1]}/{algo}: tuning unfinished")
                continue
            out += [
                str(key)
                for seed in settings.protocol.seeds
                if (key := RunKey(*cell, algo, setting, seed)) not in records
            ]
    return out


# ---------------------------------------------------------------- markdown


def fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def fmt_stat(stat: dict[str, Any] | None, seeds: int) -> str:
    if stat is None:
        return "—"
    text = f"{stat['mean']:.1f} ± {fmt(stat['se'])}"
    return text if stat["n"] == seeds else f"{text} (n={stat['n']})"


def score_cell(cell: dict[str, Any], seeds: int) -> str:
    if cell["test"] is None:
        return "—"
    text = fmt_stat(cell["test"], seeds)
    if cell["verdict"] in ("best", "tied best"):
        text = f"**{text}**" + (" (tie)" if cell["verdict"] == "tied best" else "")
    elif cell["gap"] is not None:
        text += f"<br>gap {cell['gap']:.1f} ± {fmt(cell['gap_se'])} ({cell['verdict']})"
    status = cell["convergence"]["status"]
    if status == "too short":
        text += "<br>*curve too short to judge convergence*"
    elif status != "flat":
        text += f"<br>*not converged ({status})*"
    if cell["setting"] != DEFAULT_SETTING:
        text += f"<br>`{cell['setting']}`"
    return text


def render(settings: GridSettings, results: dict[str, Any], images: dict[str, Path]) -> str:
    p = settings.protocol
    seeds = len(p.seeds)
    algos = list(settings.algorithms)
    lines = [
        "# Results",
        "",
        f"Written {results['written']} from {results['records']} run records under `{settings.records}` "
        f"(raw numbers: `{settings.json_path}`); `python -m benchmarks.grid --report-only` rebuilds this page "
        "from the records alone.",
        "",
        "## Protocol",
        "",
        "```",
        results["invocation"],
        "```",
        "",
        f"- **Training seeds** {', '.join(map(str, p.seeds))} for the table; the tuning runs use seeds "
        f"{', '.join(map(str, p.tuning_seeds))}, so no table run is a tuning run.",
        f"- **Validation episodes** (seeds {p.validation_seed}..{p.validation_seed + p.validation_episodes - 1}, "
        f"{p.validation_episodes} per evaluation) give the learning curve and are the only numbers the tuning "
        "reads: a candidate's score is the mean over its tuning seeds of each run's mean validation score over "
        "the last third of its curve.",
        f"- **Test episodes** (seeds from {p.test_seed}, evaluated once on the final checkpoint with `om2p eval`) "
        "are the only numbers the table reads. Dataset episodes, validation and test seeds are checked disjoint.",
        "- A cell is the normalised score `100 (S - S_random) / (S_expert - S_random)` of the deterministic "
        "policy (e = 0), `mean ± SE` over training seeds (`n=` marks fewer finished seeds). The best mean is in "
        f"bold; every other cell gives its gap to the best ± the Welch SE, a gap within {analysis.TIE_SE:g} SE "
        "is a **tie**. A cell is *not converged* when the last third of its validation curve rises or falls by "
        f"more than {analysis.FLAT_SE:g} SE (a within-seed least-squares line).",
        "",
        "| environment | steps | validation every | test episodes | tuned on |",
        "|---|---:|---:|---:|---|",
    ]
    for env in dict.fromkeys(e for e, _ in settings.cells):
        b = settings.budget(env)
        where = (
            f"{settings.tune_on[env]} only, for every quality" if env in settings.tune_on else "each dataset"
        )
        lines.append(f"| {env} | {b.steps:,} | {b.eval_every:,} | {b.test_episodes:,} | {where} |")
    lines += ["", "One run (the grid adds only seeds, validation settings and `--set`s per cell):", "", "```"]
    lines += [results["train_command"] or "(no runs)", "```", ""]
    lines += references_lines(results["datasets"])
    standing = results["om2p_standing"]
    lines += ["", "## OM2P's standing, as measured", ""]
    for key, words in (
        ("wins", "wins"),
        ("ties", "ties for the best"),
        ("loses", "loses"),
        ("unclear", "one seed, no SE"),
    ):
        lines.append(f"- {words}: " + (", ".join(standing[key]) if standing[key] else "none"))
    for env, rows in results["scores"].items():
        lines += ["", f"## {env}", "", "| quality | " + " | ".join(algos) + " | best |"]
        lines.append("|---|" + "---:|" * len(algos) + "---|")
        for quality, row in rows.items():
            cells = [score_cell(row["algos"][a], seeds) for a in algos]
            lines.append(f"| {quality} | " + " | ".join(cells) + f" | {row['best'] or '—'} |")
        nfe = [
            str(next(iter(rows.values()))["algos"][a]["network_evaluations_per_action"] or "—") for a in algos
        ]
        lines.append("| *network evaluations per action* | " + " | ".join(nfe) + " | |")
        if env in images:
            lines += ["", f"![validation curves, {env}]({os.path.relpath(images[env], settings.out.parent)})"]
    lines += ["", "## Tuning", "", tuning_intro(settings), ""]
    lines += tuning_lines(results["tuning"])
    if settings.notes is not None:
        lines += ["", "## Notes", "", settings.notes.read_text().strip()]
    if results["missing_runs"]:
        lines += ["", f"## Missing runs ({len(results['missing_runs'])})", ""]
        lines += [f"- `{m}`" for m in results["missing_runs"][:200]]
    return "\n".join(lines) + "\n"


def tuning_intro(settings: GridSettings) -> str:
    return (
        "Every algorithm with a weight is tuned over its own candidates (the same number each), on the "
        f"validation episodes, over {len(settings.protocol.tuning_seeds)} tuning seed(s); on the datasets listed "
        "in `WIDENED_CELLS` (benchmarks/grid/settings.py: where a tuning chose the largest candidate) every "
        "weight grid has the same two larger candidates per widening. Each candidate's validation score `mean ± SE` "
        "over the tuning seeds; the chosen one in bold."
    )


def tuning_lines(entries: Sequence[dict[str, Any]]) -> list[str]:
    if not entries:
        return ["No algorithm of this grid has candidates."]
    lines = ["| dataset | algorithm | applies to | candidates (validation score) |", "|---|---|---|---|"]
    for entry in entries:
        parts = []
        for setting, stat in entry["candidates"].items():
            text = f"`{setting}` {fmt_stat(stat, stat['n']) if stat else '—'}"
            parts.append(f"**{text}**" if setting == entry["chosen"] else text)
        applies = ", ".join(entry["applies_to"])
        lines.append(
            f"| {entry['env']} / {entry['quality']} | {entry['algo']} | {applies} | "
            + "; ".join(parts)
            + " |"
        )
    return lines


def references_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    lines = [
        "## Datasets and references",
        "",
        "Reference returns from each dataset's metadata, with their standard errors where the metadata has them; "
        "the dataset's own mean episode return beside them.",
        "",
        "| dataset | transitions | episodes | own mean return | S_random | S_expert |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        refs, errors = row["reference_returns"], row["reference_se"]

        def ref(name: str, refs: dict = refs, errors: dict = errors) -> str:
            if name not in refs:
                return "—"
            return f"{refs[name]:.2f}" + (f" ± {errors[name]:.2f}" if name in errors else " (no SE recorded)")

        own = fmt(row["mean_return"], 2) + (
            f" ± {row['mean_return_se']:.2f}" if row.get("mean_return_se") else ""
        )
        lines.append(
            f"| {row['env']} / {row['quality']} | {row['transitions']:,} | {row['episodes']:,} | {own} | "
            f"{ref('random')} | {ref('expert')} |"
        )
    return lines


# ---------------------------------------------------------------- plots


def plot_curves(settings: GridSettings, records: analysis.Records, scores: dict[str, Any]) -> dict[str, Path]:
    """<out dir>/img/results_<env>.png: mean validation score over the table seeds against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = settings.out.parent / "img"
    images.mkdir(parents=True, exist_ok=True)
    # An algorithm keeps its colour in every panel and every environment's figure.
    palette = plt.get_cmap("tab10").colors
    colours = {algo: palette[i % len(palette)] for i, algo in enumerate(settings.algorithms)}
    paths = {}
    for env, rows in scores.items():
        if not any(cell["seeds"] for row in rows.values() for cell in row["algos"].values()):
            continue  # nothing trained yet: no empty figure
        figure, axes = plt.subplots(1, len(rows), figsize=(4 * len(rows), 3.4), squeeze=False)
        handles: dict[str, Any] = {}  # one legend for the figure, whichever panels an algorithm has runs in
        for axis, (quality, row) in zip(axes[0], rows.items(), strict=True):
            for algo, cell in row["algos"].items():
                curves = [
                    records[RunKey(env, quality, algo, cell["setting"], s)]["curve"] for s in cell["seeds"]
                ]
                steps, mean = mean_curve(curves)
                if steps:
                    (handles[algo],) = axis.plot(steps, mean, marker=".", color=colours[algo], label=algo)
            if not axis.get_lines():
                axis.text(0.5, 0.5, "no runs yet", ha="center", va="center", transform=axis.transAxes)
            axis.set_title(quality)
            axis.set_xlabel("gradient step")
            axis.grid(alpha=0.3)
        axes[0][0].set_ylabel("normalised validation score")
        figure.legend(list(handles.values()), list(handles), loc="upper right", fontsize=8, ncol=len(handles))
        figure.suptitle(f"{env}: mean over training seeds", x=0.01, ha="left")
        figure.tight_layout(rect=(0, 0, 1, 0.93))
        paths[env] = images / f"results_{env}.png"
        figure.savefig(paths[env], dpi=110)
        plt.close(figure)
    return paths


def mean_curve(curves: Sequence[Sequence[Sequence[float]]]) -> tuple[list[float], list[float]]:
    by_step: dict[float, list[float]] = {}
    for curve in curves:
        for step, score in curve:
            by_step.setdefault(step, []).append(score)
    steps = sorted(by_step)
    return steps, [float(np.mean(by_step[s])) for s in steps]

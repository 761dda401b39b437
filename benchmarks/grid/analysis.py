"""From records to conclusions: the tuning choice (validation episodes only), each cell's test statistics,
the gap of every algorithm to the best with its Welch standard error (a lead within 2 SE is a tie), and the
convergence flag of every cell's validation curve."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from benchmarks.grid.records import RunKey, key_of
from benchmarks.grid.settings import DEFAULT_SETTING, Cell, GridSettings

TIE_SE = 2.0  # a lead of at most this many standard errors is a tie
FLAT_SE = 2.0  # a last-third rise within this many standard errors of zero is flat

Records = dict[RunKey, dict[str, Any]]


def index(records: Iterable[dict[str, Any]]) -> Records:
    return {key_of(record): record for record in records}


def mean_se(values: Sequence[float]) -> dict[str, Any] | None:
    """Mean and standard error over independent seeds (sample std; None with one seed)."""
    if not values:
        return None
    array = np.asarray(values, dtype=float)
    se = float(array.std(ddof=1) / np.sqrt(array.size)) if array.size > 1 else None
    return {"mean": float(array.mean()), "se": se, "n": int(array.size), "scores": [float(v) for v in array]}


def last_third(curve: Sequence[Sequence[float]]) -> list[tuple[float, float]]:
    """The points of a curve at or after two thirds of its final step."""
    if not curve:
        return []
    final = curve[-1][0]
    return [(float(s), float(v)) for s, v in curve if s >= 2 * final / 3]


def validation_score(record: dict[str, Any]) -> float | None:
    """What the tuning reads of one run: the mean validation score over the last third of its curve (a few
    episodes per point, so one point alone is noisy)."""
    points = last_third(record.get("curve") or [])
    return float(np.mean([v for _, v in points])) if points else None


# ---------------------------------------------------------------- tuning


def tuning(settings: GridSettings, records: Records) -> dict[tuple[str, str, str], dict[str, Any]]:
    """(env, tuning quality, algo) -> every candidate's validation score over the tuning seeds and the
    chosen label (None until every candidate has all its seeds: a choice must not depend on which runs
    happened to finish first). Only algorithms with more than one candidate appear."""
    out = {}
    for cell in dict.fromkeys(settings.tuning_cell(cell) for cell in settings.cells):
        for algo in settings.algorithms:
            candidates = settings.candidates_of(cell, algo)
            if len(candidates) < 2:
                continue
            scores = {}
            for setting in candidates:
                values = [
                    validation_score(records[key])
                    for seed in settings.protocol.tuning_seeds
                    if (key := RunKey(*cell, algo, setting, seed)) in records
                ]
                scores[setting] = mean_se([v for v in values if v is not None])
            complete = all(
                s is not None and s["n"] == len(settings.protocol.tuning_seeds) for s in scores.values()
            )
            chosen = max(scores, key=lambda s: scores[s]["mean"]) if complete else None
            applies = [q for e, q in settings.cells if e == cell[0] and settings.tuning_cell((e, q)) == cell]
            out[(*cell, algo)] = {"candidates": scores, "chosen": chosen, "applies_to": applies}
    return out


def chosen_setting(
    settings: GridSettings, tuned: dict[tuple[str, str, str], Any], cell: Cell, algo: str
) -> str | None:
    """The label `cell`'s table runs of `algo` use; None while its tuning is unfinished."""
    candidates = settings.candidates_of(settings.tuning_cell(cell), algo)
    if len(candidates) < 2:
        return next(iter(candidates), DEFAULT_SETTING)
    return tuned[(*settings.tuning_cell(cell), algo)]["chosen"]


# ---------------------------------------------------------------- convergence


def convergence(curves: Sequence[Sequence[Sequence[float]]]) -> dict[str, Any]:
    """Is the last third of the validation curve flat within its noise? A within-seed least-squares line
    through the last-third points of every seed (each seed's own mean removed, so seed offsets are not
    mistaken for noise); `rise` is its slope times the span of the last third, with its standard error.
    `flat` when |rise| <= 2 SE; else `rising` or `falling`, both "not converged"."""
    xs, ys = [], []
    for curve in curves:
        points = last_third(curve)
        if len(points) < 2:
            continue
        steps = np.array([s for s, _ in points])
        values = np.array([v for _, v in points])
        xs.append(steps - steps.mean())
        ys.append(values - values.mean())
    if not xs:
        return {"status": "too short", "rise": None, "rise_se": None}
    x, y = np.concatenate(xs), np.concatenate(ys)
    sxx = float(x @ x)
    dof = x.size - len(xs) - 1
    if sxx == 0.0 or dof < 1:
        return {"status": "too short", "rise": None, "rise_se": None}
    slope = float(x @ y) / sxx
    residual = y - slope * x
    slope_se = float(np.sqrt(residual @ residual / dof / sxx))
    span = max(float(c[-1][0]) for c in curves if c) / 3
    rise, rise_se = slope * span, slope_se * span
    status = (
        "flat" if abs(rise) <= FLAT_SE * rise_se or rise == 0.0 else ("rising" if rise > 0 else "falling")
    )
    return {"status": status, "rise": rise, "rise_se": rise_se}


# ---------------------------------------------------------------- the table


def welch_se(first: dict[str, Any], second: dict[str, Any]) -> float | None:
    """Standard error of the difference of two means over independent seeds (sample variances, Welch); each
    seed's score carries its test-episode noise too. None with fewer than two seeds on either side."""
    if first["se"] is None or second["se"] is None:
        return None
    return float(np.sqrt(first["se"] ** 2 + second["se"] ** 2))


def cell_result(
    settings: GridSettings, records: Records, cell: Cell, algo: str, setting: str | None
) -> dict[str, Any]:
    runs = [
        records[key]
        for seed in settings.protocol.seeds
        if setting is not None and (key := RunKey(*cell, algo, setting, seed)) in records
    ]
    test = [r["test"]["normalised_score"] for r in runs if r["test"].get("normalised_score") is not None]
    eval_se = [r["test"]["normalised_se"] for r in runs if r["test"].get("normalised_se") is not None]
    return {
        "setting": setting,
        "test": mean_se(test),
        "test_episode_se": float(np.sqrt(np.mean(np.square(eval_se)) / len(eval_se))) if eval_se else None,
        "convergence": convergence([r["curve"] for r in runs if r.get("curve")]),
        "seeds": [int(r["seed"]) for r in runs],
        "steps": sorted({int(r["steps"]) for r in runs}),
        "wall_s": float(sum(r["wall_s"]["train"] + r["wall_s"]["test"] for r in runs)),
        "machines": sorted({f"{r['machine']['host']} ({r['machine']['device']})" for r in runs}),
        "network_evaluations_per_action": runs[0]["network_evaluations_per_action"] if runs else None,
    }


def compare(row: dict[str, dict[str, Any]]) -> str | None:
    """Mark each algorithm of a row against the best mean: `best`, `tie` (within 2 SE of it), `behind`, or
    `no SE` (a side with one seed); the best is a `tied best` when another algorithm ties it. Returns the
    best's name."""
    scored = {algo: cell for algo, cell in row.items() if cell["test"] is not None}
    if not scored:
        return None
    best = max(scored, key=lambda a: scored[a]["test"]["mean"])
    for algo, cell in row.items():
        if algo not in scored:
            cell.update(gap=None, gap_se=None, verdict="missing")
            continue
        gap = scored[best]["test"]["mean"] - cell["test"]["mean"]
        se = welch_se(scored[best]["test"], cell["test"])
        verdict = (
            "best" if algo == best else "no SE" if se is None else "tie" if gap <= TIE_SE * se else "behind"
        )
        cell.update(gap=gap, gap_se=se, verdict=verdict)
    if any(cell.get("verdict") == "tie" for cell in row.values()):
        row[best]["verdict"] = "tied best"
    return best


def table(settings: GridSettings, records: Records, tuned: dict[tuple[str, str, str], Any]) -> dict[str, Any]:
    """table[env][quality] = {"algos": {algo: cell result with gap and verdict}, "best": algo}."""
    out: dict[str, Any] = {}
    for cell in settings.cells:
        row = {
            algo: cell_result(settings, records, cell, algo, chosen_setting(settings, tuned, cell, algo))
            for algo in settings.algorithms
        }
        best = compare(row)
        out.setdefault(cell[0], {})[cell[1]] = {"algos": row, "best": best}
    return out


def standing(scores: dict[str, Any], algo: str = "om2p") -> dict[str, list[str]]:
    """Where `algo` wins (best, every other more than 2 SE behind), ties (within 2 SE of the best, or best by
    less than 2 SE) and loses (more than 2 SE behind the best); `unclear` where a side has one seed."""
    out: dict[str, list[str]] = {"wins": [], "ties": [], "loses": [], "unclear": []}
    for env, rows in scores.items():
        for quality, row in rows.items():
            cell = row["algos"].get(algo)
            if cell is None or cell["test"] is None:
                continue
            name = f"{env} / {quality}"
            verdict = cell["verdict"]
            if verdict == "best":
                others = [
                    c["verdict"] for a, c in row["algos"].items() if a != algo and c["test"] is not None
                ]
                out["unclear" if "no SE" in others else "wins"].append(name)
            else:
                key = {"tied best": "ties", "tie": "ties", "behind": "loses"}.get(verdict, "unclear")
                out[key].append(name)
    return out

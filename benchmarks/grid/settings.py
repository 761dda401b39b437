"""What the grid is, as data: which datasets, which algorithms with which `--set` overrides, which candidates
each weighted algorithm is tuned over, the step budget per environment and the evaluation protocol.

Override precedence for one run (later wins): `common` < `algo_set[algo]` < `cell_set[cell][algo]` < the
candidate's overrides < what the engine sets itself (evaluation seeds and episodes, one thread). Field names
appear only in these tables, so a config field that moves or is renamed is changed here and nowhere else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from training.data.format import QUALITIES
from training.published_settings import omar_search_overrides, omar_weights

Cell = tuple[str, str]  # (environment, dataset quality)
DEFAULT_SETTING = "default"  # the label of an algorithm that has no candidates to tune


@dataclass(frozen=True)
class Budget:
    """Per environment: gradient steps per run, steps between validation evaluations, test episodes."""

    steps: int
    eval_every: int
    test_episodes: int


@dataclass(frozen=True)
class Protocol:
    """Three disjoint seed sets. Training seeds initialise the networks and sample the batches; validation
    episodes (seeds `validation_seed ..`) are evaluated every `eval_every` steps and are the only numbers the
    tuning reads; test episodes (seeds `test_seed ..`) are evaluated once, on the final checkpoint, and are
    the only numbers the table reads. The dataset's own episodes use seeds `k * 1_000_003 + [0, episodes)`
    (training/data/collect.py), which the engine checks do not reach either range."""

    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    """training seeds of the table runs (the chosen setting)"""
    tuning_seeds: tuple[int, ...] = (1000, 1001)
    """training seeds of the tuning runs: disjoint from `seeds`, so the table never reuses a tuning run"""
    validation_seed: int = 100_000
    validation_episodes: int = 10
    test_seed: int = 200_000


@dataclass(frozen=True)
class GridSettings:
    cells: tuple[Cell, ...]
    algorithms: tuple[str, ...]
    budgets: dict[str, Budget]
    protocol: Protocol = Protocol()
    common: tuple[str, ...] = ()
    """`--set` overrides of every run"""
    algo_set: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """algorithm -> `--set` overrides in every cell"""
    cell_set: dict[Cell, dict[str, tuple[str, ...]]] = field(default_factory=dict)
    """cell -> algorithm -> `--set` overrides (published per-dataset settings)"""
    candidates: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)
    """algorithm -> label -> `--set` overrides: the tuning grid (an algorithm absent here is not tuned)"""
    cell_candidates: dict[Cell, dict[str, dict[str, tuple[str, ...]]]] = field(default_factory=dict)
    """cell -> algorithm -> label -> overrides, where the candidates centre on per-dataset published values"""
    tune_on: dict[str, str] = field(default_factory=dict)
    """environment -> the one quality the tuning runs on, its choice then serving every quality of the
    environment (where the budget forces it); an environment absent here is tuned per dataset"""
    min_transitions: int = 100_000
    data: Path = Path("data/grid")
    records: Path = Path("benchmarks/results/records")
    runs: Path = Path("runs/grid")
    out: Path = Path("docs/results.md")
    json_path: Path = Path("benchmarks/results/results.json")
    notes: Path | None = None
    """a person's reading of the numbers, appended to the page as its Notes section (kept in its own file so
    that regenerating the tables never loses it)"""
    device: str = "cpu"
    jobs: int = 2

    def dataset(self, cell: Cell) -> Path:
        return self.data / cell[0] / f"{cell[1]}.npz"

    def candidates_of(self, cell: Cell, algo: str) -> dict[str, tuple[str, ...]]:
        """label -> overrides; one `default` entry for an algorithm that is not tuned."""
        per_cell = self.cell_candidates.get(cell, {}).get(algo)
        found = per_cell if per_cell is not None else self.candidates.get(algo)
        return dict(found) if found else {DEFAULT_SETTING: ()}

    def tuning_cell(self, cell: Cell) -> Cell:
        """The cell whose tuning runs choose `cell`'s setting."""
        env, quality = cell
        return (env, self.tune_on.get(env, quality))

    def overrides(self, cell: Cell, algo: str, setting: str) -> list[str]:
        candidates = self.candidates_of(self.tuning_cell(cell), algo)
        return [
            *self.common,
            *self.algo_set.get(algo, ()),
            *self.cell_set.get(cell, {}).get(algo, ()),
            *candidates.get(setting, ()),
        ]

    def budget(self, env: str) -> Budget:
        return self.budgets[env]


def label(overrides: tuple[str, ...]) -> str:
    """A candidate's directory-safe name from its overrides: `alpha=10`, `omar.coef=0.9,omar.cql_weight=5`."""
    return re.sub(r"[^A-Za-z0-9_.=,+-]", "", ",".join(overrides)) or DEFAULT_SETTING


def grid_of(field_name: str, values: tuple[float, ...]) -> dict[str, tuple[str, ...]]:
    """Candidates varying one config field."""
    return {label((f"{field_name}={v:g}",)): (f"{field_name}={v:g}",) for v in values}


# ---------------------------------------------------------------- the published grid

MPE = ("cooperative_navigation", "predator_prey")
LARGE = ("world", "halfcheetah_2x3")
FULL_CELLS: tuple[Cell, ...] = (
    *((env, q) for env in MPE for q in QUALITIES),
    *((env, q) for env in LARGE for q in ("expert", "medium", "medium-replay")),
)
FULL_ALGORITHMS = ("om2p", "bc", "bc_mse", "matd3bc", "omar", "flow", "diffusion")

# Provisional budgets, to be replaced by the pilot on OM2P and the strongest baseline (issue 17, item 4): long
# enough that the last third of the validation curve is flat; the report flags every cell where it is not.
FULL_BUDGETS = {
    "cooperative_navigation": Budget(steps=20_000, eval_every=1_000, test_episodes=1_000),
    "predator_prey": Budget(steps=20_000, eval_every=1_000, test_episodes=1_000),
    "world": Budget(steps=20_000, eval_every=1_000, test_episodes=1_000),
    # 1000-step episodes: 500 test episodes are half a million environment steps per run.
    "halfcheetah_2x3": Budget(steps=50_000, eval_every=2_500, test_episodes=500),
}

# Sized for one CPU core per run. bf16 autocast is pinned off: where it is on by default depends on the CPU,
# and a grid spread over machines must train the same thing on each.
FULL_COMMON = (
    "actor_hidden=[128,128]",
    "critic_hidden=[128,128]",
    "batch_size=128",
    "bf16_autocast=false",
    "compile_update=true",  # om2p: about 1.3x the eager step here (docs/training.md); a machine field, not hashed
    # The Q weight of the algorithms that are not tuned on it (bc, bc_mse, matd3bc, omar do not read it) stays
    # at the value their records were made with, so that `om2p train`'s default can follow the tuning
    # without retraining them; om2p, flow and diffusion set it per candidate.
    "alpha=1",
)

# One candidate grid per weighted algorithm, five candidates each: the same tuning budget for every one.
WEIGHT_GRID = (1.0, 3.0, 10.0, 30.0, 100.0)
MATD3BC_GRID = (0.5, 1.0, 2.5, 5.0, 10.0)  # TD3+BC's published 2.5 in the middle


def weight_candidates(
    weights: tuple[float, ...], matd3bc_weights: tuple[float, ...]
) -> dict[str, dict[str, tuple[str, ...]]]:
    """The tuning grids of the weighted algorithms: om2p, flow and diffusion share `alpha`'s."""
    alpha = grid_of("alpha", weights)
    return {
        "om2p": alpha,
        "flow": alpha,
        "diffusion": alpha,
        "matd3bc": grid_of("matd3bc.alpha", matd3bc_weights),
    }


FULL_CANDIDATES = weight_candidates(WEIGHT_GRID, MATD3BC_GRID)

# Datasets where a tuned weight came out as the largest candidate, so the optimum may lie beyond the grid:
# each widening gives every weighted algorithm's grid there the same two larger candidates (the same tuning
# budget again). A dataset whose widened grid again peaks at its top edge takes the next widening too.
WIDENINGS: tuple[tuple[tuple[float, ...], tuple[float, ...]], ...] = (
    ((300.0, 1000.0), (20.0, 50.0)),  # (alpha of om2p, flow and diffusion; matd3bc.alpha)
    ((3000.0, 10000.0), (100.0, 200.0)),
)
WIDENED_CELLS: dict[Cell, int] = {  # dataset -> how many widenings it has had
    ("cooperative_navigation", "medium"): 1,
    ("cooperative_navigation", "medium-replay"): 2,  # matd3bc peaked at 50, the top of the first widening
}


def widened_candidates(widenings: int) -> dict[str, dict[str, tuple[str, ...]]]:
    """The weight grids after the first `widenings` widenings: the five candidates, then two per widening."""
    weights, matd3bc_weights = WEIGHT_GRID, MATD3BC_GRID
    for extra, matd3bc_extra in WIDENINGS[:widenings]:
        weights, matd3bc_weights = (*weights, *extra), (*matd3bc_weights, *matd3bc_extra)
    return weight_candidates(weights, matd3bc_weights)


def omar_candidates(env: str, quality: str) -> dict[str, tuple[str, ...]]:
    """Five candidates around OMAR's published (coefficient, CQL weight) of the dataset
    (`training/published_settings.py`): the pair itself, the coefficient lowered twice, the CQL weight halved
    and doubled; every one with the environment's published action search."""
    weights = omar_weights(env, quality)
    if weights is None:
        raise ValueError(f"OMAR published no weights for {env}/{quality}: give the cell its own candidates")
    coef, cql = weights
    pairs = [
        (coef, cql),
        (max(0.0, coef - 0.1), cql),
        (max(0.0, coef - 0.3), cql),
        (coef, cql / 2),
        (coef, cql * 2),
    ]
    out = {}
    for c, w in dict.fromkeys(pairs):
        weight_overrides = (f"omar.coef={c:g}", f"omar.cql_weight={w:g}")
        out[label(weight_overrides)] = (*omar_search_overrides(env), *weight_overrides)
    return out


def full_cell_candidates(cells: tuple[Cell, ...]) -> dict[Cell, dict[str, dict[str, tuple[str, ...]]]]:
    """OMAR's candidates centre on the published pair of each dataset; the widened datasets take the longer
    weight grids."""
    return {
        cell: {"omar": omar_candidates(*cell), **widened_candidates(WIDENED_CELLS.get(cell, 0))}
        for cell in cells
    }


def full_grid() -> GridSettings:
    """The grid docs/results.md publishes: 5 seeds, every algorithm, all four benchmarks. The two large
    environments are tuned on their medium dataset only (the budget forces it; the page says so)."""
    return GridSettings(
        cells=FULL_CELLS,
        algorithms=FULL_ALGORITHMS,
        budgets=FULL_BUDGETS,
        common=FULL_COMMON,
        candidates=FULL_CANDIDATES,
        cell_candidates=full_cell_candidates(FULL_CELLS),
        tune_on={"world": "medium", "halfcheetah_2x3": "medium"},
        notes=Path("docs/results_notes.md"),
    )


def smoke_grid(directory: Path) -> GridSettings:
    """Two cells, two algorithms (OM2P tuned over two candidates on the expert dataset alone), one seed,
    four steps with tiny networks; everything under `directory`."""
    return replace(
        full_grid(),
        cells=(("cooperative_navigation", "expert"), ("cooperative_navigation", "random")),
        algorithms=("om2p", "bc"),
        budgets={"cooperative_navigation": Budget(steps=4, eval_every=2, test_episodes=4)},
        protocol=Protocol(seeds=(0,), tuning_seeds=(1000,), validation_episodes=2),
        common=("actor_hidden=[32,32]", "critic_hidden=[32,32]", "batch_size=32", "log_every=1"),
        candidates={"om2p": grid_of("alpha", (1.0, 10.0))},
        cell_candidates={},
        tune_on={"cooperative_navigation": "expert"},
        min_transitions=1,
        data=directory / "data",
        records=directory / "records",
        runs=directory / "runs",
        out=directory / "results.md",
        json_path=directory / "results.json",
        notes=None,
    )

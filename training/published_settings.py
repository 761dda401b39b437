"""Per-dataset settings of the published baselines, as `--set` overrides of `om2p train` (torch-free, so the
results grid can read it without importing the trainer).

OMAR: `env_config_map` in `MATD3.init_from_env` of `algorithms/maddpg.py` of the published code
(github.com/ling-pan/OMAR), one `omar_coe` and `cql_alpha` per environment and dataset quality, and the
MaMuJoCo search of `main.py` (`omar_iters` 2, `omar_num_samples` 20, `omar_num_elites` 5 for HalfCheetah,
with the elite update of `maddpg.py`). OMAR's names: simple_spread = cooperative_navigation, simple_tag =
predator_prey, simple_world = world, HalfCheetah-v2 = halfcheetah_2x3. Note that its simple_tag medium-replay
entry is `cql_alpha` 0.5, not 1 as on simple_spread.
"""

from __future__ import annotations

_OMAR_WEIGHTS: dict[str, dict[str, tuple[float, float]]] = {
    # env: {quality: (omar.coef, omar.cql_weight)}
    "cooperative_navigation": {
        "random": (1.0, 0.5),
        "medium-replay": (1.0, 1.0),
        "medium": (1.0, 5.0),
        "expert": (1.0, 5.0),
    },
    "predator_prey": {
        "random": (0.9, 0.5),
        "medium-replay": (0.9, 0.5),
        "medium": (0.7, 5.0),
        "expert": (0.9, 5.0),
    },
    "world": {
        "random": (1.0, 0.5),
        "medium-replay": (0.7, 1.0),
        "medium": (0.1, 0.5),
        "expert": (0.9, 5.0),
    },
    "halfcheetah_2x3": {
        "random": (1.0, 1.0),
        "medium-replay": (0.9, 5.0),
        "medium": (0.7, 1.0),
        "expert": (0.5, 5.0),
    },
}
# Per environment, beyond the section's defaults (which are the particle environments' search).
_OMAR_ENV: dict[str, tuple[str, ...]] = {
    "halfcheetah_2x3": ("omar.search=elite", "omar.iterations=2", "omar.samples=20", "omar.elites=5"),
}


def omar_weights(env: str, quality: str) -> tuple[float, float] | None:
    """OMAR's published `(omar.coef, omar.cql_weight)` for a dataset, None where it published none."""
    return _OMAR_WEIGHTS.get(env, {}).get(quality)


def omar_search_overrides(env: str) -> tuple[str, ...]:
    """The environment's published action search, beyond the section's (particle-environment) defaults."""
    return _OMAR_ENV.get(env, ())


def published_overrides(algo: str, env: str, quality: str) -> list[str]:
    """The `--set key=value` overrides that give `algo` its published settings on `env`/`quality` (empty
    where the published code has none for it)."""
    if algo != "omar" or env not in _OMAR_WEIGHTS or quality not in _OMAR_WEIGHTS[env]:
        return []
    coef, cql_weight = _OMAR_WEIGHTS[env][quality]
    return [*_OMAR_ENV.get(env, ()), f"omar.coef={coef}", f"omar.cql_weight={cql_weight}"]

"""`make results`: the offline results grid as a small engine.

- `settings`: what the grid is, as data: cells, algorithms, per-dataset `--set` overrides, tuning candidates,
  per-environment step budgets and the evaluation protocol (training seeds, validation and test episodes).
- `runner`: one run = one `om2p train` process (validation episodes for the curve) and one `om2p eval`
  process (test episodes for the table), sent to a local process pool or to Ray tasks (`--ray-address`).
- `records`: one small JSON file per run under `benchmarks/results/records/`, keyed by a config hash, so a
  run already recorded is never trained again and the page rebuilds from the records alone.
- `analysis`: tuning choice on validation scores, per-cell statistics, Welch gaps, ties, convergence flags.
- `report`: docs/results.md, benchmarks/results/results.json and the learning-curve plots.

    python -m benchmarks.grid --jobs 2                    # the full grid (days of CPU; resumable)
    python -m benchmarks.grid --report-only               # the page from the committed records
    python -m benchmarks.grid --smoke /tmp/smoke          # two cells, a few steps: checks the plumbing
"""

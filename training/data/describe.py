"""Summaries of a dataset: size, episode-return statistics, normalised score, return histogram."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from training.data.format import OfflineDataset
from training.data.references import return_stats
from training.data.score import normalised_score


def describe(dataset: OfflineDataset, path: Path | str | None = None) -> dict[str, Any]:
    returns = dataset.episode_returns
    meta = dataset.metadata
    mean = float(returns.mean()) if len(returns) else float("nan")
    return {
        "file": str(path) if path is not None else None,
        "env": meta["env"],
        "quality": meta["quality"],
        "agents": meta["agents"],
        "obs_dim": meta["obs_dim"],
        "act_dim": meta["act_dim"],
        "transitions": dataset.transitions,
        "episodes": int(meta["episodes"]),
        "mean_return": mean,
        "mean_return_se": return_stats(returns)["se"],
        "std_return": float(returns.std()) if len(returns) else float("nan"),
        "min_return": float(returns.min()) if len(returns) else float("nan"),
        "max_return": float(returns.max()) if len(returns) else float("nan"),
        "normalised_score": _score_or_nan(mean, meta["reference_returns"]),
        "reference_returns": meta["reference_returns"],
        "references": meta["references"],
        "behaviour_checkpoint_sha256": meta["behaviour_checkpoint_sha256"],
        "format_version": meta["format_version"],
    }


def _score_or_nan(mean: float, reference_returns: dict[str, float]) -> float:
    # Imported data may come without distinct references; the summary is still useful without a score.
    try:
        return normalised_score(mean, reference_returns)
    except ValueError:
        return float("nan")


def _with_se(mean: float, se: float | None) -> str:
    return f"{mean:.2f} +- {se:.2f}" if se is not None and se == se else f"{mean:.2f} (SE unknown)"


def format_summary(summary: dict[str, Any]) -> str:
    refs = summary["references"]
    lines = [
        f"  {name} reference{'':<{7 - len(name)}} {_with_se(entry['mean'], entry.get('se'))}"
        + (f"  ({entry['episodes']} episodes)" if entry.get("episodes") else "")
        for name, entry in refs.items()
    ]
    return "\n".join(
        [
            f"{summary['file']}: {summary['env']} / {summary['quality']} ({len(summary['agents'])} agents, "
            f"obs {summary['obs_dim']}, act {summary['act_dim']})",
            f"  transitions       {summary['transitions']}",
            f"  episodes          {summary['episodes']}",
            f"  return            mean {summary['mean_return']:.2f}  std {summary['std_return']:.2f}  "
            f"min {summary['min_return']:.2f}  max {summary['max_return']:.2f}",
            f"  mean return       {_with_se(summary['mean_return'], summary['mean_return_se'])}  "
            f"({summary['episodes']} episodes)",
            *lines,
            f"  normalised score  {summary['normalised_score']:.1f}",
        ]
    )


def plot_returns(datasets: list[tuple[str, OfflineDataset]], path: Path | str) -> Path:
    """Episode-return histogram(s) as a PNG, one colour per dataset, reference returns as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    all_returns = np.concatenate([d.episode_returns for _, d in datasets])
    bins = np.linspace(all_returns.min(), all_returns.max(), 50)
    for label, dataset in datasets:
        ax.hist(
            dataset.episode_returns,
            bins=bins,
            alpha=0.55,
            label=f"{label} (n={len(dataset.episode_returns)})",
        )
    refs = datasets[0][1].metadata["reference_returns"]
    for name, style in (("expert", "-"), ("random", "--")):
        ax.axvline(refs[name], color="black", linestyle=style, linewidth=1, label=f"{name} reference")
    ax.set_xlabel("episode return (team)")
    ax.set_ylabel("episodes")
    ax.set_title(f"{datasets[0][1].metadata['env']}: episode returns")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

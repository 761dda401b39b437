"""The normalised score of the OMAR protocol."""

from __future__ import annotations

from collections.abc import Mapping


def normalised_score(mean_return: float, reference_returns: Mapping[str, float]) -> float:
    """`100 (S - S_random) / (S_expert - S_random)` with the references stored in the dataset metadata."""
    expert, random = float(reference_returns["expert"]), float(reference_returns["random"])
    if expert == random:
        raise ValueError(f"reference returns must differ to normalise (expert = random = {expert})")
    return 100.0 * (float(mean_return) - random) / (expert - random)

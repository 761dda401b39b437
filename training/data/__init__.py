"""Offline multi-agent datasets: one npz format, a validating loader, collection and the normalised score."""

from training.data.format import (
    FORMAT_VERSION,
    QUALITIES,
    DatasetError,
    OfflineDataset,
    episode_returns,
    load_dataset,
    save_dataset,
)
from training.data.score import normalised_score

__all__ = [
    "FORMAT_VERSION",
    "QUALITIES",
    "DatasetError",
    "OfflineDataset",
    "episode_returns",
    "load_dataset",
    "normalised_score",
    "save_dataset",
]

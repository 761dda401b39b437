"""om2p: train, export and serve one-step mean-flow multi-agent policies."""

__version__ = "0.1.0"

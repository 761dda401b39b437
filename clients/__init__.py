"""om2p clients."""

"""om2p export."""

"""om2p server."""

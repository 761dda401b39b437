"""Errors every part of om2p may raise for the command line, in a leaf module (no imports), so that no
part has to import the CLI shell to say "one line, exit 2"."""


class CommandError(Exception):
    """A user-facing error: printed as one line with exit code 2, never a traceback."""

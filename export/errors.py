"""The one error type of export: a check that failed, with what differed."""

from __future__ import annotations


class ExportError(ValueError):
    """An export that must not be published (a failed check, an unusable input); nothing was written."""

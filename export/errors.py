"""The error every step of an export raises; the CLI prints its first line."""

from __future__ import annotations


class ExportError(RuntimeError):
    """An export that failed; nothing was published."""

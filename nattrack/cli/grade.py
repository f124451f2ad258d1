"""`nattrack grade` (being written; see docs)."""
from __future__ import annotations


def register(sub) -> None:
    """Add the `grade` subcommand to the top-level parser."""

"""`nattrack record` (being written; see docs)."""
from __future__ import annotations


def register(sub) -> None:
    """Add the `record` subcommand to the top-level parser."""

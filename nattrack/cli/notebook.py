"""`nattrack notebook` (being written; see docs)."""
from __future__ import annotations


def register(sub) -> None:
    """Add the `notebook` subcommand to the top-level parser."""

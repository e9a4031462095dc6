"""`ranker data ...`: produce the raw tables (simulate, later import)."""

from __future__ import annotations

import click


def register(cli: click.Group) -> None:
    @cli.group()
    def data() -> None:
        """Produce the raw marketplace tables under data/raw/."""

"""`ranker features ...`: batch feature tables, Feast apply and materialization."""

from __future__ import annotations

import click


def register(cli: click.Group) -> None:
    @cli.group()
    def features() -> None:
        """Build feature tables, register them with Feast and load the online store."""

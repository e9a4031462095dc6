"""The `ranker` command: one entry point for every job. Commands orchestrate; logic lives in `ranker/`.

Each stage registers its commands from its own module (pipelines/cmd_*.py) so stages stay separate.
"""

from __future__ import annotations

import sys

import click

from ranker.config import Settings
from ranker.errors import RankerError


class RankerGroup(click.Group):
    """A click group that turns RankerError into a one-line message and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except RankerError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)


@click.group(cls=RankerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Learning-to-rank platform for a second-hand fashion marketplace.

    Settings come from the environment: RANKER_HOME (folder with feature_repo/ and data/, default
    the current folder), RANKER_ONLINE_STORE (sqlite | redis), REDIS_URL, RANKER_REGISTRY_URI.
    """
    ctx.obj = Settings.from_env()


def _register() -> None:
    from pipelines import cmd_batch, cmd_data, cmd_dataset, cmd_features, cmd_registry, cmd_serve
    from pipelines import cmd_pipeline
    from pipelines import cmd_monitor
    from pipelines import cmd_stream

    modules = (
        cmd_data,
        cmd_features,
        cmd_dataset,
        cmd_registry,
        cmd_batch,
        cmd_serve,
        cmd_pipeline,
        cmd_monitor,
        cmd_stream,
    )
    for module in modules:
        module.register(cli)


def main(argv: list[str] | None = None) -> None:
    _register()
    try:
        cli.main(args=argv, prog_name="ranker", standalone_mode=True)
    except RankerError as exc:  # raised while building settings, before a subcommand runs
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()

"""`ranker batch-score`: precomputed top-k lists per user."""

from __future__ import annotations

from pathlib import Path

import click


def register(cli: click.Group) -> None:
    @cli.command("batch-score")
    @click.option("--surface", type=click.Choice(["search", "recs"]), default="recs", show_default=True)
    @click.option(
        "--users",
        "users_file",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="Users to score: one id per line, or a CSV/parquet with a user_id column.",
    )
    @click.option("--all", "all_users", is_flag=True, help="Score every user in data/raw/users.parquet.")
    @click.option("--k", default=50, show_default=True, type=click.IntRange(1), help="List length per user.")
    @click.option(
        "--candidates",
        default=500,
        show_default=True,
        type=click.IntRange(1),
        help="Most engaged live listings scored for each user.",
    )
    @click.option("--to-online", is_flag=True, help="Also write each list to the online store for cheap lookups.")
    @click.pass_obj
    def batch_score_cmd(settings, surface, users_file, all_users, k, candidates, to_online) -> None:
        """Score users' candidates with the production model through the scorer's feature path and
        write artifacts/batch/SURFACE/topk.parquet (and the online store with --to-online)."""
        from tqdm import tqdm

        from ranker.serving.batch import BatchOptions, batch_score, read_users

        options = BatchOptions(
            surface=surface, k=k, candidates=candidates, users_file=users_file, all_users=all_users, to_online=to_online
        )
        total = len(read_users(users_file)) if users_file else None
        with tqdm(total=total, desc=f"batch {surface}", unit="users") as bar:
            summary = batch_score(settings, options, progress=bar)
        click.echo(
            f"{summary['rows']:,} rows for {summary['users']:,} users ({summary['candidates']} candidates each) "
            f"with {summary['model']} in {summary['seconds']} s ({summary['users_per_s']} users/s)\n{summary['path']}"
            + ("\nlists written to the online store" if to_online else "")
        )

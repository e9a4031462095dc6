"""`ranker features ...`: batch feature tables, Feast apply and materialization."""

from __future__ import annotations

import json
from datetime import datetime

import click


def _parse_end(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO date/time such as 2026-11-25T00:00:00+00:00") from None
    if ts.tzinfo is None:
        raise click.BadParameter(f"{value!r} has no timezone; add +00:00 for UTC")
    return ts


def register(cli: click.Group) -> None:
    @cli.group()
    def features() -> None:
        """Build feature tables, register them with Feast and load the online store."""

    @features.command("build")
    @click.option(
        "--memory-limit", default="4GB", show_default=True, help="DuckDB memory limit (spills to disk beyond it)."
    )
    @click.option("--threads", default=2, show_default=True, type=click.IntRange(1, 64), help="DuckDB threads.")
    @click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
    @click.option(
        "--engine",
        type=click.Choice(["duckdb", "spark"]),
        default=None,
        help="duckdb: this process; spark: PySpark on RANKER_SPARK_MASTER (default local[2], needs Java 17). "
        "Default: RANKER_FEATURE_ENGINE, else duckdb.",
    )
    @click.pass_obj
    def build(settings, memory_limit: str, threads: int, as_json: bool, engine: str | None) -> None:
        """Compute the daily feature snapshots from data/raw into data/features (replaces them)."""
        from tqdm import tqdm

        from ranker.features.build import TABLES, BuildOptions
        from ranker.features.text import TEXT_TABLES
        from ranker.jobs.feature_tables import build_feature_tables

        with tqdm(total=len(TABLES) + len(TEXT_TABLES), desc="features", unit="table", disable=as_json) as bar:

            def done(name: str) -> None:
                bar.set_postfix_str(name)
                bar.update(1)

            # The daily tables, then the real-time views' backfill from the same log.
            summary = build_feature_tables(
                settings,
                engine=engine or settings.feature_engine,
                options=BuildOptions(memory_limit=memory_limit, threads=threads),
                progress=done,
                threads=threads,
            )
        if as_json:
            click.echo(json.dumps(summary, indent=2))
            return
        for name, info in summary["tables"].items():
            click.echo(f"  {name:<22} {info['rows']:>10,} rows  {info['path']}")
        for name, info in summary["realtime"]["views"].items():
            click.echo(f"  {name:<22} {info['rows']:>10,} rows  {info['path']}")
        for name, info in summary.get("coengagement", {}).get("tables", {}).items():
            click.echo(f"  {name:<22} {info['rows']:>10,} rows  {info['path']}")
        click.echo(
            f"snapshots {summary['snapshots']['first']} .. {summary['snapshots']['last']}, {summary['seconds']} s"
        )

    @features.command("apply")
    @click.pass_obj
    def apply_cmd(settings) -> None:
        """Register feature_repo/ with Feast (same as `cd feature_repo && feast apply`)."""
        from ranker.features.store import apply

        summary = apply(settings)
        for kind, names in summary.items():
            click.echo(f"  {kind:<24} {', '.join(names)}")

    @features.command("materialize")
    @click.option("--end", default=None, help="Load rows up to this time (ISO, with timezone). Default: now.")
    @click.option(
        "--full", is_flag=True, help="Reload everything, not only rows since the last run (after rebuilding history)."
    )
    @click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
    @click.pass_obj
    def materialize_cmd(settings, end: str | None, full: bool, as_json: bool) -> None:
        """Load the latest feature values into the online store (sqlite, or Redis with
        RANKER_ONLINE_STORE=redis). Incremental: safe to rerun."""
        from tqdm import tqdm

        from ranker.features.materialize import materialize

        with tqdm(desc="materialize", unit="rows", disable=as_json) as bar:
            summary = materialize(settings, end=_parse_end(end), full=full, progress=bar)
        if as_json:
            click.echo(json.dumps(summary, indent=2))
            return
        for name, info in summary["views"].items():
            rate = f"{info['rows_per_s']:,} rows/s" if info.get("rows_per_s") else info.get("note", "")
            click.echo(f"  {name:<20} {info['rows']:>9,} rows  {info.get('load', ''):<11} {rate}")
        click.echo(f"{summary['rows']:,} rows into {summary['online_store']} in {summary['seconds']} s")

    @features.command("status")
    @click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
    @click.pass_obj
    def status_cmd(settings, as_json: bool) -> None:
        """Show, per feature view, what the online store holds and how old it is (the marker that
        `ranker features materialize` writes into the store with the data). Exit 1 when a view holds no rows."""
        from ranker.features.online_state import status

        summary = status(settings)
        if as_json:
            click.echo(json.dumps(summary, indent=2))
        else:
            click.echo(f"online store: {summary['store']} (project {summary['project']})")
            for name, info in summary["views"].items():
                if not info["loaded"]:
                    click.echo(f"  {name:<26} EMPTY   {info['reason']}")
                    continue
                newest = f"{info['newest_event'][:19]} ({_age(info['age_s'])} old)" if info["newest_event"] else "?"
                click.echo(
                    f"  {name:<26} loaded  ~{info['rows_total']:>7,} rows, newest {newest}; "
                    f"last run {_age(info['since_run_s'])} ago wrote {info['rows_last_run']:,}"
                )
        empty = [name for name, info in summary["views"].items() if not info["loaded"]]
        if empty:
            if not as_json:
                click.echo(
                    f"{len(empty)} view(s) hold no rows in this store: run `ranker features materialize`", err=True
                )
            raise SystemExit(1)


def _age(seconds: float) -> str:
    """A short human duration: 45 s, 12 min, 5.2 h, 3.1 d."""
    seconds = abs(float(seconds))
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"

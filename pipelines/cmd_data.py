"""`ranker data ...`: produce the raw tables (simulate, or import an external log)."""

from __future__ import annotations

from pathlib import Path

import click


def register(cli: click.Group) -> None:
    @cli.group()
    def data() -> None:
        """Produce the raw marketplace tables under data/raw/."""

    # The library's SimConfig holds the defaults, so the CLI and the library cannot drift apart.
    from ranker.data.simulate import SimConfig

    defaults = SimConfig()

    @data.command()
    @click.option(
        "--seed",
        type=click.IntRange(min=0),
        default=defaults.seed,
        show_default=True,
        help="Random seed; the same seed and options give byte-identical files.",
    )
    @click.option(
        "--users",
        type=click.IntRange(min=1),
        default=defaults.users,
        show_default=True,
        help="Buyers (before --scale).",
    )
    @click.option(
        "--items",
        type=click.IntRange(min=1),
        default=defaults.items,
        show_default=True,
        help="Listings in stock at the start (before --scale).",
    )
    @click.option(
        "--new-items-per-day",
        type=click.IntRange(min=0),
        default=defaults.new_items_per_day,
        show_default=True,
        help="New listings per day (before --scale).",
    )
    @click.option(
        "--days",
        type=click.IntRange(min=1, max=3660),
        default=defaults.days,
        show_default=True,
        help="Days of traffic to simulate.",
    )
    @click.option(
        "--start",
        type=click.DateTime(formats=["%Y-%m-%d"]),
        default=defaults.start.isoformat(),
        show_default=True,
        help="First simulated day (UTC), YYYY-MM-DD.",
    )
    @click.option(
        "--scale",
        type=click.FloatRange(min=0, min_open=True, max=1000),
        default=defaults.scale,
        show_default=True,
        help="Multiplies users, initial and daily listings (requests per user stay the same).",
    )
    @click.option(
        "--within-day/--no-within-day",
        default=defaults.within_day,
        show_default=True,
        help="Within-day dynamics a daily batch cannot see: session intent and the hype of new listings "
        "(docs/concepts/simulator.md). Off: the files are exactly those of earlier versions.",
    )
    @click.pass_obj
    def simulate(settings, seed, users, items, new_items_per_day, days, start, scale, within_day) -> None:
        """Simulate a second-hand fashion marketplace into data/raw/ (+ hidden utility).

        Writes events, listings, users and sellers to data/raw/*.parquet, the hidden true utility
        of every impression to data/ground_truth/utility.parquet (evaluation only, never a
        feature) and data/raw/manifest.json (options, counts, sha256 of each file).

        Size and cost (measured on 2 cores): the defaults give ~0.53M impressions over 21 days
        in ~4 s and ~0.2 GB RAM. --scale 20 is the size for >= 10M impressions (10.4M, 44k users,
        290k listings) in ~50 s and ~0.6 GB peak RSS; events are generated and written a day at a
        time, so memory follows one day of traffic plus the catalogue, not the whole run.
        """
        from ranker.data.simulate import simulate as run

        config = SimConfig(
            seed=seed,
            users=users,
            items=items,
            new_items_per_day=new_items_per_day,
            days=days,
            start=start.date(),
            scale=scale,
            within_day=within_day,
        )
        summary = run(config, raw_dir=settings.raw_dir, ground_truth_dir=settings.ground_truth_dir)
        click.echo(_describe(summary))

    @data.command("import")
    @click.option(
        "--format",
        "fmt",
        type=click.Choice(["events", "interactions", "open-bandit"]),
        required=True,
        help="events: our schema (impressions + engagement); interactions: user_id, item_id, timestamp "
        "[, event_type, value, session_id, query]; open-bandit: the Open Bandit Dataset folder.",
    )
    @click.argument("path", type=click.Path(path_type=Path))
    @click.option(
        "--items",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="Listing attributes: item_id plus any of category, brand, price, created_at, sold_at, ...",
    )
    @click.option(
        "--users",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="User profiles: user_id [, signup_at, size].",
    )
    @click.option("--strict", is_flag=True, help="Fail (write nothing) if any row is rejected.")
    @click.option(
        "--min-value",
        type=float,
        default=None,
        help="interactions: reject (and count) rows whose value (e.g. a rating) is below this.",
    )
    @click.option(
        "--sold-on-purchase",
        is_flag=True,
        help="A purchase sells the listing (unique second-hand items): sets its sold_at.",
    )
    @click.option(
        "--campaign",
        type=click.Choice(["all", "men", "women"]),
        default="all",
        show_default=True,
        help="open-bandit: which campaign.",
    )
    @click.option(
        "--policies",
        default="random,bts",
        show_default=True,
        help="open-bandit: logging policies to import, comma-separated.",
    )
    @click.option(
        "--sample-rows",
        type=click.IntRange(min=1),
        default=None,
        help="open-bandit: seeded sample of rows per policy file (fast trials).",
    )
    @click.pass_obj
    def import_cmd(
        settings, fmt, path, items, users, strict, min_value, sold_on_purchase, campaign, policies, sample_rows
    ) -> None:
        """Import an external log at PATH into data/raw/ (events, listings, users, sellers).

        Every rejected row is counted per reason (missing value, unparsable timestamp, duplicate,
        unknown id, ...); --strict fails on any. Rerunning replaces the raw tables. Use a separate
        RANKER_HOME (with its own copy of feature_repo/) to keep another dataset's data apart.
        """
        from ranker.data.importers import ImportOptions, describe, import_log

        options = ImportOptions(
            fmt=fmt,
            path=path,
            items=items,
            users=users,
            strict=strict,
            min_value=min_value,
            sold_on_purchase=sold_on_purchase,
            campaign=campaign,
            policies=tuple(p.strip() for p in policies.split(",") if p.strip()),
            sample_rows=sample_rows,
        )
        click.echo(describe(import_log(settings, options)))


def _describe(summary: dict) -> str:
    """One paragraph saying what the simulation produced and how long it took."""
    rows, events, eff = summary["rows"], summary["events"], summary["effective"]
    return (
        f"Simulated {summary['config']['days']} day(s) from {eff['start']} (seed {summary['seed']}, "
        f"scale {summary['config']['scale']:g}): {rows['users']:,} users, {rows['listings']:,} listings "
        f"({summary['listings_sold']:,} sold), {rows['sellers']:,} sellers; {summary['requests']:,} requests "
        f"with {summary['impressions']:,} impressions, {events['click']:,} clicks (CTR {summary['ctr']:.2%}), "
        f"{events['save']:,} saves, {events['add_to_bag']:,} add-to-bags, {summary['purchases']:,} purchases; "
        f"{rows['events']:,} event rows. Wrote {summary['raw_dir']}/ (events, listings, users, sellers, "
        f"manifest.json) and {summary['ground_truth']} "
        f"in {summary['seconds']:.1f} s."
    )

"""`ranker dataset build` and `ranker train`: point-in-time training sets and LambdaRank models."""

from __future__ import annotations

from pathlib import Path

import click


def register(cli: click.Group) -> None:
    @cli.group()
    def dataset() -> None:
        """Point-in-time training sets from Feast."""

    @dataset.command("build")
    @click.option("--surface", type=click.Choice(["search", "recs"]), required=True, help="Which ranked lists.")
    @click.option("--start", default=None, help="First impression time (UTC date or date-time). Default: all data.")
    @click.option("--end", default=None, help="Impressions before this time (UTC). Default: all data.")
    @click.option(
        "--attribution-hours",
        default=24.0,
        show_default=True,
        type=float,
        help="Engagement up to this long after an impression counts towards its label.",
    )
    @click.option(
        "--feature-service", default=None, help="Override the surface's feature service (e.g. search_ranker_v2)."
    )
    @click.option(
        "--chunk-rows",
        default=1_000_000,
        show_default=True,
        type=click.IntRange(1000),
        help="Entity rows sent to Feast per call (bounds memory: ~5 GB peak at 1M).",
    )
    @click.option(
        "--negatives",
        default=0,
        show_default=True,
        type=click.IntRange(0),
        help="Implicit feedback: each engagement event becomes a group with this many negatives sampled "
        "from the listings available at that moment (0 = the logged impressions).",
    )
    @click.option(
        "--negatives-seed", default=0, show_default=True, type=click.IntRange(0), help="Seed of the sampling."
    )
    @click.option(
        "--negatives-popular",
        default=0.0,
        show_default=True,
        type=click.FloatRange(0.0, 1.0),
        help="Share of the sampled negatives drawn in proportion to the listings' engagements on the 7 days "
        "before (hard negatives: what popularity would rank first); the rest uniform.",
    )
    @click.option(
        "--engine",
        type=click.Choice(["duckdb", "spark"]),
        default=None,
        help="Point-in-time join: duckdb (Feast's offline store) or spark (as-of join on RANKER_SPARK_MASTER, "
        "needs Java 17). Default: RANKER_FEATURE_ENGINE, else duckdb.",
    )
    @click.pass_obj
    def build(
        settings,
        surface,
        start,
        end,
        attribution_hours,
        feature_service,
        chunk_rows,
        negatives,
        negatives_seed,
        negatives_popular,
        engine,
    ) -> None:
        """Label impressions (purchase 4 > add_to_bag 3 > save 2 > click 1 > shown 0) and fetch
        their features from Feast at impression time; writes artifacts/datasets/SURFACE/."""
        from tqdm import tqdm

        from ranker.training.dataset import DatasetOptions, build_dataset, parse_utc

        options = DatasetOptions(
            surface=surface,
            start=parse_utc(start, option="--start"),
            end=parse_utc(end, option="--end"),
            attribution_hours=attribution_hours,
            feature_service=feature_service,
            chunk_rows=chunk_rows,
            negatives=negatives,
            negatives_seed=negatives_seed,
            negatives_popular=negatives_popular,
        )
        with tqdm(desc=f"dataset {surface}", unit="rows") as bar:
            manifest = build_dataset(settings, options, progress=bar, engine=engine)
        click.echo(
            f"{manifest['rows']:,} rows, {manifest['groups']:,} requests, {manifest['positives']:,} positives, "
            f"{len(manifest['features'])} features from {manifest['feature_service']} in {manifest['seconds']} s\n"
            f"fingerprint {manifest['fingerprint']}\n{manifest['path']}"
        )

    @cli.command("train")
    @click.option("--surface", type=click.Choice(["search", "recs"]), required=True, help="Which ranked lists.")
    @click.option("--seed", default=42, show_default=True, type=click.IntRange(0), help="LightGBM seed.")
    @click.option(
        "--position-debias/--no-position-debias",
        default=False,
        show_default=True,
        help="LightGBM's position-debiased LambdaRank (the `position` of lgb.Dataset).",
    )
    @click.option(
        "--engine",
        type=click.Choice(["local", "dask"]),
        default=None,
        help="local: one LightGBM process; dask: lightgbm.dask on RANKER_DASK_SCHEDULER (or a LocalCluster). "
        "Default: RANKER_TRAIN_ENGINE, else local.",
    )
    @click.pass_obj
    def train(settings, surface, seed, position_debias, engine) -> None:
        """Train a LambdaRank model on the surface's training set (time-based split, early
        stopping on validation NDCG@10); writes artifacts/models/NAME/VERSION/{model.txt,card.json}."""
        import json

        from ranker.training.train import TrainOptions, train_model

        if engine:
            settings = settings.with_(train_engine=engine)
        out = train_model(settings, TrainOptions(surface=surface, seed=seed, position_debias=position_debias))
        card = json.loads((out / "card.json").read_text())
        validation = card.get("validation") or {}
        basis = (
            f" (full catalogue at {validation['at']}: {validation['users']} users x "
            f"{validation['listings_live']:,} live listings)"
            if validation.get("basis") == "full_catalogue"
            else ""
        )
        click.echo(
            f"{card['name']} {card['version']}: best iteration {card['best_iteration']}, "
            f"validation NDCG@10 {card['valid_ndcg@10']:.4f}{basis}, {card['training_seconds']} s\n{out}"
        )

    @cli.command("evaluate")
    @click.argument("model_dir", type=click.Path(path_type=Path, file_okay=False))
    @click.option(
        "--bootstrap",
        default=1000,
        show_default=True,
        type=click.IntRange(100),
        help="Bootstrap resamples for intervals.",
    )
    @click.option(
        "--seed",
        default=0,
        show_default=True,
        type=click.IntRange(0),
        help="Seed of the random baseline, the bootstrap and the full catalogue's user sample.",
    )
    @click.option(
        "--full-catalogue/--no-full-catalogue",
        default=None,
        help="Also rank every listing live at the test window's start for each test user (popularity, "
        "7-day popularity, EASE and random beside the model). Default: on for sampled-group training sets "
        "(logs without impressions).",
    )
    @click.option(
        "--catalogue-users",
        default=500,
        show_default=True,
        type=click.IntRange(1),
        help="Test users sampled (seeded by --seed) for the full catalogue; the catalogue itself is never sampled.",
    )
    @click.option("--json", "as_json", is_flag=True, help="Print the metrics (and the full catalogue) as JSON.")
    @click.pass_obj
    def evaluate(
        settings, model_dir: Path, bootstrap: int, seed: int, full_catalogue, catalogue_users: int, as_json: bool
    ) -> None:
        """Compare MODEL_DIR with the random, popularity, logged and (on simulated data) oracle
        rankings on its test requests; store the metrics in its card.json and write report.html."""
        import json

        from ranker.training.evaluate import evaluate_model
        from ranker.training.report import evaluation_table, full_catalogue_table

        evaluation = evaluate_model(
            settings,
            model_dir,
            n_boot=bootstrap,
            seed=seed,
            full_catalogue=full_catalogue,
            catalogue_users=catalogue_users,
        )
        if as_json:
            out = {k: evaluation[k] for k in ("model", "metrics", "test_window", "full_catalogue") if k in evaluation}
            click.echo(json.dumps(out, indent=2, default=float))
            return
        click.echo(evaluation_table(evaluation))
        failures = evaluation["metrics"]["quality_bar_failures"]
        click.echo(
            "quality bar: " + ("PASS (beats every baseline)" if not failures else "NOT MET: " + "; ".join(failures))
        )
        if "full_catalogue" in evaluation:
            click.echo(full_catalogue_table(evaluation))
        click.echo(f"report: {Path(model_dir) / 'report.html'}")
        if (settings.raw_dir / "propensities.parquet").exists():  # a log with logging propensities
            from ranker.training.ips import evaluate_ips, ips_table

            click.echo(ips_table(evaluate_ips(settings, Path(model_dir), n_boot=bootstrap, seed=seed)))

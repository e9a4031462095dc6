"""`ranker features build` as one job: the daily batch tables (ranker.features.build or its Spark
twin) and the backfill of the real-time views (ranker.streaming.backfill) from the same raw log.

The composition lives here because ranker.features must not import ranker.streaming. The backfill is
written before `feast apply` reads the repository: the real-time views' sources are directories of
parquet files, so each always holds at least the backfill's file (possibly with no rows).
"""

from __future__ import annotations

import pandas as pd

from ranker.config import Settings

BACKFILL_GLOB = "backfill-*.parquet"


def write_realtime_backfill(settings: Settings, *, threads: int = 2) -> dict:
    """Replace the backfill of every real-time view with one computed from ``data/raw`` (the files the
    stream appended are kept). Listings are optional (an imported log may have none): without them the
    first-hours counts are empty and the session lists blank."""
    from ranker.data.schema import EVENTS, LISTINGS, read_table
    from ranker.streaming.backfill import backfill
    from ranker.streaming.windows import VIEWS

    events = read_table(settings.raw_dir, EVENTS)
    if (settings.raw_dir / LISTINGS.file).exists():
        listings = read_table(settings.raw_dir, LISTINGS)
    else:
        listings = pd.DataFrame(
            {
                "item_id": pd.Series([], dtype=str),
                "category": pd.Series([], dtype=object),
                "brand": pd.Series([], dtype=object),
                "created_at": pd.Series([], dtype="datetime64[us, UTC]"),
            }
        )
    out = settings.realtime_dir  # feature_repo/data_sources.py: REALTIME_TABLES
    for view in VIEWS:
        for old in (out / view).glob(BACKFILL_GLOB):
            old.unlink()
    return backfill(events, listings, out, threads=threads)


def build_feature_tables(
    settings: Settings, *, engine: str = "duckdb", options=None, progress=None, threads: int = 2
) -> dict:
    """The batch tables, then the real-time backfill; the batch summary with ``realtime`` added
    (rows and path per view, seconds)."""
    if engine == "spark":
        from ranker.features.spark_build import build_features_spark

        summary = build_features_spark(settings.with_(feature_engine="spark"), progress=progress)
        from ranker.features.build import build_text_features

        text = build_text_features(settings, options=options, progress=progress)  # scikit-learn: one process
        summary["tables"].update(text["tables"])
        summary["text"] = text["text"]
    else:
        from ranker.features.build import build_features

        summary = build_features(settings, options=options, progress=progress)
    summary["realtime"] = write_realtime_backfill(settings, threads=threads)
    from ranker.features.coengagement import build_coengagement

    # co-engagement tables (feature_repo/features/coengagement.py): numpy on the event log, any engine
    summary["coengagement"] = build_coengagement(settings.raw_dir, settings.features_dir)
    return summary

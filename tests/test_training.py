"""Point-in-time training sets (labels, chunking, the offline store's join against Feast's own) and
deterministic LambdaRank training; evaluation and the quality bar are in test_evaluation.py."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ranker.training.dataset import DatasetError, DatasetOptions, build_dataset, load_dataset, parse_utc


@pytest.fixture(scope="module")
def search_set(world):
    manifest = build_dataset(world, DatasetOptions(surface="search", chunk_rows=20_000))
    return world, manifest


def test_dataset_labels_and_manifest(search_set):
    settings, manifest = search_set
    df, m = load_dataset(settings, "search")
    assert m["fingerprint"] == manifest["fingerprint"] and len(df) == m["rows"]
    assert list(df.columns[7:]) == m["features"]
    events = pd.read_parquet(settings.raw_dir / "events.parquet")
    imps = events[(events.event_type == "impression") & (events.surface == "search")]
    assert len(df) == len(imps), "one row per impression"
    # Labels: the best later event on the same (request, item) within 24 h.
    grade = {"click": 1, "save": 2, "add_to_bag": 3, "purchase": 4}
    eng = events[events.event_type.isin(list(grade))].assign(g=lambda d: d.event_type.map(grade))
    best = eng.groupby(["request_id", "item_id"]).g.max()
    got = df.set_index(["request_id", "item_id"]).label
    expected = best.reindex(got.index).fillna(0).astype(int)
    assert (got == expected).all()
    # Rows of a request are contiguous (LightGBM groups).
    change = (df.request_id != df.request_id.shift()).sum()
    assert change == df.request_id.nunique()
    assert df[m["features"]].dtypes.eq(np.float32).all()


def test_chunking_does_not_change_the_dataset(search_set, world):
    _, manifest = search_set
    again = build_dataset(world, DatasetOptions(surface="search", chunk_rows=7_000))
    assert again["fingerprint"] == manifest["fingerprint"]


def test_retraining_is_byte_identical(search_set, tmp_path):
    from ranker.training.train import TrainOptions, train_model

    settings, _ = search_set
    a = train_model(settings, TrainOptions(surface="search", num_boost_round=30), out_root=tmp_path / "a")
    b = train_model(settings, TrainOptions(surface="search", num_boost_round=30), out_root=tmp_path / "b")
    assert (a / "model.txt").read_bytes() == (b / "model.txt").read_bytes()
    card = json.loads((a / "card.json").read_text())
    for key in ("feature_service", "features", "model_sha256", "dataset", "split", "params", "feature_distributions"):
        assert key in card
    assert card["feature_service"] == "search_ranker_v1"
    assert pd.Timestamp(card["split"]["train_end"]) < pd.Timestamp(card["split"]["valid_end"])


def test_bad_windows_and_services(world):
    with pytest.raises(DatasetError, match="no search impressions"):
        build_dataset(world, DatasetOptions(surface="search", start=parse_utc("2030-01-01", option="--start")))
    with pytest.raises(DatasetError, match="not before"):
        DatasetOptions(
            surface="search",
            start=parse_utc("2026-10-05", option="--start"),
            end=parse_utc("2026-10-01", option="--end"),
        )
    with pytest.raises(DatasetError, match="unknown surface"):
        DatasetOptions(surface="email")
    from ranker.features.store import FeatureRepoError

    with pytest.raises(FeatureRepoError, match="not registered"):
        build_dataset(world, DatasetOptions(surface="search", feature_service="search_ranker_v9"))
    with pytest.raises(DatasetError, match="not a date"):
        parse_utc("last tuesday", option="--start")


def test_request_time_features_use_the_impression_time(search_set):
    """listing_age_hours in the training set = impression time - listing creation (catches unit
    mistakes in the request timestamp handed to Feast's on-demand views)."""
    settings, _ = search_set
    df, _ = load_dataset(settings, "search")
    listings = pd.read_parquet(settings.raw_dir / "listings.parquet")[["item_id", "created_at"]]
    merged = df[["item_id", "event_timestamp", "listing_age_hours"]].merge(listings, on="item_id")
    expected = ((merged.event_timestamp - merged.created_at).dt.total_seconds() // 1) / 3600.0
    assert (merged.listing_age_hours >= 0).all()
    np.testing.assert_allclose(merged.listing_age_hours.to_numpy(float), expected.to_numpy(float), atol=1 / 3600 + 1e-3)


def test_asof_offline_store_returns_exactly_feasts_rows(world):
    """The dataset builder's offline store (time-bounded sources, one ASOF join per view) must
    return exactly what Feast's own DuckDB store returns: on a chunk from the middle of the data
    (older and newer snapshots both exist), on all rows, on rows past every TTL and on unknown
    entities, for both services, row for row and column for column."""
    from feast import FeatureStore

    from ranker.features.offline import TYPE
    from ranker.features.store import feature_store, in_feature_repo, repo_config, service_spec
    from ranker.training.dataset import _entity_frame, _labelled_table

    ours = feature_store(world)
    assert ours.config.offline_store.type == TYPE
    from feast.infra.offline_stores.duckdb import DuckDBOfflineStoreConfig

    config = repo_config(world)
    config._offline_store = DuckDBOfflineStoreConfig()  # Feast's own store, otherwise the same config
    plain = FeatureStore(repo_path=str(world.feature_repo), config=config)
    assert plain.config.offline_store.type == "duckdb"
    rows = _labelled_table(world, DatasetOptions(surface="search"))
    ts = rows.column("event_timestamp").to_numpy()
    lo, hi = np.quantile(ts.astype("int64"), [0.45, 0.55]).astype("datetime64[us]")
    import pyarrow as pa
    import pyarrow.compute as pc

    middle = rows.filter(
        pc.and_(
            pc.greater_equal(rows.column("event_timestamp"), pa_ts(lo)),
            pc.less_equal(rows.column("event_timestamp"), pa_ts(hi)),
        )
    )
    assert 0 < middle.num_rows < rows.num_rows
    # Impressions 3 days after the last snapshot: every TTL'd view's latest row is too old (empty
    # features), listing_fv (no TTL) still answers; and unknown users and listings.
    tail = rows.slice(rows.num_rows - 3000, 3000)
    late = tail.set_column(
        tail.schema.get_field_index("event_timestamp"),
        "event_timestamp",
        pc.add(tail.column("event_timestamp"), pa.scalar(3 * 86_400_000_000, pa.duration("us"))),
    )
    strangers = tail.set_column(tail.schema.get_field_index("user_id"), "user_id", pa.array(["nobody"] * 3000))
    strangers = strangers.set_column(
        strangers.schema.get_field_index("item_id"), "item_id", pa.array([f"new{i % 7}" for i in range(3000)])
    )
    for service_name in ("search_ranker_v1", "recs_ranker_v1"):
        spec = service_spec(ours, service_name)
        # (middle + late: the call spans more than a TTL, so the TTL itself must cut the late rows)
        for chunk in (middle, rows, late, pa.concat_tables([middle, late]), strangers):
            entity_df = _entity_frame(chunk, spec)
            with in_feature_repo(world.feature_repo):
                got = ours.get_historical_features(
                    entity_df=entity_df, features=ours.get_feature_service(service_name)
                ).to_df()
                want = plain.get_historical_features(
                    entity_df=entity_df, features=plain.get_feature_service(service_name)
                ).to_df()
            got = got.sort_values("_row").reset_index(drop=True)
            want = want.sort_values("_row").reset_index(drop=True)
            assert list(got.columns) == list(want.columns)
            if chunk is late:
                assert got["user_clicks_30d"].isna().all() and got["price"].notna().any()
            elif chunk is not strangers:
                assert got[list(spec.features)].notna().to_numpy().sum() > 0
            pd.testing.assert_frame_equal(got, want, check_exact=True)


def pa_ts(value):
    import pyarrow as pa

    return pa.scalar(value.astype("datetime64[us]").item(), type=pa.timestamp("us", tz="UTC"))

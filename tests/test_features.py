"""Feature pipelines, Feast point-in-time retrieval and materialization into sqlite and Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from ranker.features.store import feature_store, in_feature_repo, service_spec

TABLE_KEYS = {
    "item_stats": ["item_id"],
    "user_stats": ["user_id"],
    "seller_stats": ["seller_id"],
    "user_category_stats": ["user_id", "category"],
    "query_category_stats": ["query", "category"],
    "user_brand_stats": ["user_id", "brand"],
    "user_size_stats": ["user_id"],
}
VIEW_OF = {
    "item_stats": "item_stats_fv",
    "user_stats": "user_stats_fv",
    "seller_stats": "seller_stats_fv",
    "user_category_stats": "user_category_fv",
    "query_category_stats": "query_category_fv",
    "user_brand_stats": "user_brand_fv",
    "user_size_stats": "user_size_fv",
    "listings": "listing_fv",
}


def _table(settings, name):
    return pd.read_parquet(settings.features_dir / f"{name}.parquet")


def _historical(settings, entity_df, refs):
    store = feature_store(settings)
    with in_feature_repo(settings.feature_repo):
        return store.get_historical_features(entity_df=entity_df, features=refs).to_df()


def _impressions_entity_df(settings, n, seed):
    events = pd.read_parquet(settings.raw_dir / "events.parquet")
    listings = pd.read_parquet(settings.raw_dir / "listings.parquet")
    imp = events[events.event_type == "impression"].sample(n, random_state=seed)
    imp = imp.merge(listings[["item_id", "seller_id", "category", "brand"]], on="item_id", how="left")
    query = imp["query"].astype(object).where(imp["query"].notna(), "")
    return pd.DataFrame(
        {
            "user_id": imp.user_id.astype(object),
            "item_id": imp.item_id.astype(object),
            "seller_id": imp.seller_id.astype(object),
            "category": imp.category.astype(object),
            "brand": imp.brand.astype(object),
            "query": query,
            "query_text": query,
            "event_timestamp": imp.timestamp,
            "request_ts": imp.timestamp.astype("int64") // 10**6,
        }
    ).reset_index(drop=True)


def test_feature_names_unique_and_described(world):
    store = feature_store(world)
    for name in ("search_ranker_v1", "recs_ranker_v1"):
        spec = service_spec(store, name)
        assert len(spec.features) == len(set(spec.features)) >= 25
    for view in store.list_feature_views():
        for field in view.features:
            assert field.description, f"{view.name}.{field.name} has no description"
    recs = service_spec(store, "recs_ranker_v1")
    assert "query_title_match" not in recs.features and "query" not in recs.entity_keys


def test_windows_use_only_events_before_the_snapshot(world):
    """item_clicks_1d / item_impressions_7d recomputed by brute force from raw events."""
    events = pd.read_parquet(world.raw_dir / "events.parquet")
    stats = _table(world, "item_stats").sample(300, random_state=0)
    for row in stats.itertuples():
        mine = events[events.item_id == row.item_id]
        s = row.event_timestamp
        clicks_1d = (
            (mine.event_type == "click") & (mine.timestamp < s) & (mine.timestamp >= s - pd.Timedelta(days=1))
        ).sum()
        imps_7d = (
            (mine.event_type == "impression") & (mine.timestamp < s) & (mine.timestamp >= s - pd.Timedelta(days=7))
        ).sum()
        assert row.item_clicks_1d == clicks_1d
        assert row.item_impressions_7d == imps_7d


def _engagements_with_listings(settings):
    events = pd.read_parquet(settings.raw_dir / "events.parquet")
    listings = pd.read_parquet(settings.raw_dir / "listings.parquet", columns=["item_id", "brand", "size"])
    return events.merge(listings, on="item_id", how="left")


def _in_window(ev, s, days):
    return ev[(ev.timestamp < s) & (ev.timestamp >= s - pd.Timedelta(days=days))]


def test_user_brand_windows_by_brute_force(world):
    """user_brand_stats recomputed row by row from the raw events; every pair the user engaged with
    in the last 32 days has a row, and every row has an engagement or a search naming the brand."""
    ev = _engagements_with_listings(world)
    table = _table(world, "user_brand_stats")
    brands = sorted(set(pd.read_parquet(world.raw_dir / "listings.parquet").brand) - {""})
    assert len(table) > 0 and (table.ub_searches_30d > 0).any()
    for row in table.sample(150, random_state=1).itertuples():
        mine = ev[ev.user_id == row.user_id]
        win = _in_window(mine, row.event_timestamp, 30)
        pair = win[win.brand == row.brand]
        kinds = pair.event_type.value_counts()
        assert row.ub_impressions_30d == kinds.get("impression", 0)
        assert row.ub_clicks_30d == kinds.get("click", 0)
        assert row.ub_saves_30d == kinds.get("save", 0)
        assert row.ub_bag_or_buy_30d == kinds.get("add_to_bag", 0) + kinds.get("purchase", 0)
        user_clicks = (win.event_type == "click").sum()
        user_imps = (win.event_type == "impression").sum()
        share = kinds.get("click", 0) / user_clicks if user_clicks else 0.0
        assert row.ub_click_share_30d == pytest.approx(share, rel=1e-6)
        if user_clicks:
            ctr = user_clicks / user_imps
            lift = (kinds.get("click", 0) + 10.0 * ctr) / (kinds.get("impression", 0) + 10.0) / ctr
            assert row.ub_ctr_lift_30d == pytest.approx(lift, rel=1e-5)
        searches = win[(win.surface == "search") & win["query"].notna()].drop_duplicates("request_id")
        named = searches["query"].map(lambda q, b=row.brand: f" {b} " in f" {q} ")
        assert row.ub_searches_30d == named.sum()
        all_named = sum(searches["query"].map(lambda q, b=b: f" {b} " in f" {q} ").sum() for b in brands)
        assert row.ub_search_share_30d == pytest.approx(named.sum() / all_named if all_named else 0.0, rel=1e-6)
        retained = _in_window(mine, row.event_timestamp, 32)
        engaged = (retained.brand == row.brand) & (retained.event_type != "impression")
        searched = retained["query"].map(lambda q, b=row.brand: isinstance(q, str) and f" {b} " in f" {q} ")
        assert (engaged | searched).any()
    # completeness: at the last snapshot every engaged pair of the last 32 days has its row
    last = table.event_timestamp.max()
    recent = _in_window(ev, last, 32)
    engaged = recent[recent.event_type != "impression"][["user_id", "brand"]].drop_duplicates()
    rows = table[table.event_timestamp == last][["user_id", "brand"]]
    # (pairs only searched for have rows too; checked above row by row)
    assert len(engaged.merge(rows, how="left", indicator=True).query("_merge == 'left_only'")) == 0


def test_user_size_stats_by_brute_force(world):
    from ranker.features.transforms import size_scale

    ev = _engagements_with_listings(world)
    ev = ev[ev.event_type != "impression"]
    weight = ev.event_type.map({"click": 1, "save": 2, "add_to_bag": 3, "purchase": 4})
    scales = [size_scale(s) for s in ev["size"]]
    ev = ev.assign(w=weight, kind=[k for k, _ in scales], value=[v for _, v in scales])
    table = _table(world, "user_size_stats")
    assert len(table) > 0
    for row in table.sample(150, random_state=2).itertuples():
        win = _in_window(ev[ev.user_id == row.user_id], row.event_timestamp, 30)
        for kind, mean_col, n_col in (
            (1, "user_clothing_size_30d", "user_clothing_engaged_30d"),
            (2, "user_shoe_size_30d", "user_shoe_engaged_30d"),
        ):
            part = win[win.kind == kind]
            assert getattr(row, n_col) == len(part)
            if len(part):
                assert getattr(row, mean_col) == pytest.approx((part.w * part.value).sum() / part.w.sum(), rel=1e-6)
            else:
                assert np.isnan(getattr(row, mean_col))


def test_listing_rows_follow_sales(world):
    listings = pd.read_parquet(world.raw_dir / "listings.parquet")
    table = _table(world, "listings")
    sold = listings[listings.sold_at.notna()]
    assert len(sold) > 0
    assert len(table) == len(listings) + len(sold)
    sold_rows = table[table.is_sold == 1].set_index("item_id")
    assert (sold_rows.loc[sold.item_id, "event_timestamp"].values == sold.set_index("item_id").sold_at.values).all()


def test_point_in_time_before_and_after_a_change(world):
    """Just before a snapshot Feast returns the previous value, at/after it the new one."""
    stats = _table(world, "user_stats").sort_values(["user_id", "event_timestamp"])
    stats["prev"] = stats.groupby("user_id").user_clicks_30d.shift()
    changed = stats[stats.prev.notna() & (stats.prev != stats.user_clicks_30d)].sample(40, random_state=1)
    s = changed.event_timestamp
    entity_df = pd.DataFrame(
        {
            "user_id": pd.concat([changed.user_id, changed.user_id]).astype(object).values,
            "event_timestamp": pd.concat([s - pd.Timedelta(seconds=1), s + pd.Timedelta(seconds=1)]).values,
        }
    )
    entity_df["event_timestamp"] = pd.to_datetime(entity_df.event_timestamp, utc=True)
    out = _historical(world, entity_df, ["user_stats_fv:user_clicks_30d"])
    out = out.sort_values(["user_id", "event_timestamp"]).reset_index(drop=True)
    expected = []
    for row in changed.sort_values(["user_id", "event_timestamp"]).itertuples():
        expected += [row.prev, row.user_clicks_30d]
    got = out.user_clicks_30d.to_numpy(dtype=float)
    # Sorting by user then time pairs each before/after in order.
    ref = pd.DataFrame(
        {"user_id": np.repeat(changed.sort_values(["user_id", "event_timestamp"]).user_id.values, 2), "v": expected}
    )
    assert list(out.user_id) == list(ref.user_id)
    np.testing.assert_array_equal(got, ref.v.to_numpy(dtype=float))


def test_historical_matches_merge_asof_reference(world):
    """Every view's features for real impressions equal an independent pandas merge_asof."""
    entity_df = _impressions_entity_df(world, 400, seed=3)
    store = feature_store(world)
    spec = service_spec(store, "search_ranker_v3")
    refs = [r for r in spec.refs if r.split(":")[0] in VIEW_OF.values()]
    out = _historical(world, entity_df, refs)
    out = out.sort_values(["event_timestamp", "user_id", "item_id"]).reset_index(drop=True)
    base = entity_df.sort_values("event_timestamp").reset_index(drop=True)
    ttl = {"listings": None}
    for name, view in VIEW_OF.items():
        table = _table(world, name).sort_values("event_timestamp")
        keys = ["item_id"] if name == "listings" else TABLE_KEYS[name]
        cols = [r.split(":")[1] for r in refs if r.split(":")[0] == view]
        ref = pd.merge_asof(
            base,
            table[["event_timestamp", *keys, *cols]],
            on="event_timestamp",
            by=keys,
            direction="backward",
            tolerance=None if name in ttl else pd.Timedelta(days=1),
        )
        ref = ref.sort_values(["event_timestamp", "user_id", "item_id"]).reset_index(drop=True)
        for col in cols:
            a = pd.to_numeric(out[col], errors="coerce").to_numpy(dtype=float)
            b = pd.to_numeric(ref[col], errors="coerce").to_numpy(dtype=float)
            np.testing.assert_allclose(a, b, rtol=0, atol=0, equal_nan=True, err_msg=f"{view}:{col}")


def test_on_demand_features_offline(world):
    entity_df = _impressions_entity_df(world, 200, seed=5)
    out = _historical(
        world, entity_df, ["listing_request_features:listing_age_hours", "listing_fv:listing_created_epoch"]
    )
    age = (out.request_ts - out.listing_created_epoch) / 3600.0
    np.testing.assert_allclose(out.listing_age_hours.to_numpy(float), age.astype("float32").to_numpy(float), rtol=1e-6)
    assert (out.listing_age_hours >= 0).all(), "an impression happened before its listing was created"


def _latest(settings, name):
    table = _table(settings, name)
    keys = ["item_id"] if name == "listings" else TABLE_KEYS[name]
    return table.sort_values("event_timestamp").groupby(keys).tail(1).set_index(keys)


def _check_online_equals_latest(settings):
    store = feature_store(settings)
    for name, view_name in VIEW_OF.items():
        latest = _latest(settings, name).sample(60, random_state=2, replace=False)
        view = store.get_feature_view(view_name)
        keys = [c.name for c in view.entity_columns]
        rows = [dict(zip(keys, idx if isinstance(idx, tuple) else (idx,), strict=False)) for idx in latest.index]
        features = [f"{view_name}:{f.name}" for f in view.features]
        online = store.get_online_features(features=features, entity_rows=rows).to_df()
        for field in view.features:
            got, want = online[field.name], latest[field.name].reset_index(drop=True)
            if str(field.dtype) == "String":
                assert list(got) == list(want), f"{view_name}:{field.name}"
            else:
                np.testing.assert_array_equal(
                    pd.to_numeric(got).to_numpy(float), want.to_numpy(float), err_msg=f"{view_name}:{field.name}"
                )


def test_materialize_sqlite_online_equals_latest_offline(world, tmp_path):
    from ranker.features.materialize import materialize

    first = materialize(world, full=True)
    assert first["rows"] > 0
    _check_online_equals_latest(world)
    again = materialize(world)
    assert again["rows"] == 0, "an incremental rerun with no new data must write nothing"
    _check_online_equals_latest(world)


@pytest.mark.redis
def test_materialize_redis_online_equals_latest_offline(world, redis_server):
    from ranker.features.materialize import materialize

    settings = world.with_(online_store="redis", redis_url=f"{redis_server}/1")
    summary = materialize(settings, full=True)
    assert summary["rows"] > 0
    _check_online_equals_latest(settings)
    # A full reload of the same rows is skipped row by row: nothing newer than what is stored.
    assert materialize(settings, full=True)["rows"] == 0
    _check_online_equals_latest(settings)


@pytest.mark.redis
def test_redis_writer_is_byte_identical_to_feast(world, redis_server):
    """Our vectorised writer and Feast's own online_write_batch produce the same Redis hashes."""
    import redis as redis_py
    from ranker.features.feast_compat import arrow_to_online_rows, online_write_batch, redis_ts_view_name
    from ranker.features.materialize import _latest_rows, write_redis

    ours = world.with_(online_store="redis", redis_url=f"{redis_server}/2")
    feasts = world.with_(online_store="redis", redis_url=f"{redis_server}/3")
    for settings in (ours, feasts):
        redis_py.Redis.from_url(settings.redis_url).flushdb()  # private server: only our data
    end = datetime.now(timezone.utc)
    for view_name in ("listing_fv", "user_stats_fv", "user_category_fv", "item_stats_fv"):
        store = feature_store(ours)
        view = store.get_feature_view(view_name)
        table = _latest_rows(view, str((world.feature_repo / view.batch_source.path).resolve()), None, end)
        write_redis(
            redis_py.Redis.from_url(ours.redis_url),
            project=store.project,
            view=view,
            table=table,
            ts_key_view=redis_ts_view_name(view, store.config),
        )
        fstore = feature_store(feasts)
        rows = arrow_to_online_rows(table, view, {c.name: c.dtype.to_value_type() for c in view.entity_columns})
        online_write_batch(fstore, view, rows)
    a, b = redis_py.Redis.from_url(ours.redis_url), redis_py.Redis.from_url(feasts.redis_url)
    keys_a, keys_b = sorted(a.keys("*")), sorted(b.keys("*"))
    assert keys_a == keys_b and len(keys_a) > 100
    for key in keys_a:
        assert a.hgetall(key) == b.hgetall(key)


def _ranker(settings, *args, env_extra=None):
    env = {**os.environ, "RANKER_HOME": str(settings.home), **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_bad_input_gives_one_line_errors(tmp_path):
    from tests.conftest import make_home

    home = make_home(tmp_path / "empty")
    r = _ranker(home, "features", "build")
    assert r.returncode != 0
    assert "not found" in r.stderr and "ranker data simulate" in r.stderr and "Traceback" not in r.stderr

    home.raw_dir.mkdir(parents=True)
    for name in ("events", "listings", "users", "sellers"):
        (home.raw_dir / f"{name}.parquet").write_bytes(b"not parquet")
    r = _ranker(home, "features", "build")
    assert r.returncode != 0 and "not a readable parquet file" in r.stderr and "Traceback" not in r.stderr

    r = _ranker(home, "features", "materialize")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "ranker features apply" in r.stderr or "ranker features build" in r.stderr

    r = _ranker(home, "features", "materialize", "--end", "yesterday")
    assert r.returncode == 2 and "ISO" in r.stderr

    r = _ranker(home, "features", "materialize", env_extra={"RANKER_ONLINE_STORE": "cassandra"})
    assert r.returncode == 2 and "RANKER_ONLINE_STORE" in r.stderr and "Traceback" not in r.stderr

"""Real-time feature state (ranker/streaming/windows.py) and its offline twin (backfill.py): window
counts equal a brute-force count over the event log, late / duplicate / out-of-order records, sold
listings, checkpoint and restore, bounded memory, and the stream's rows == the backfill's."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pandas as pd
import pytest

from ranker.streaming.records import StreamRecord
from ranker.streaming.windows import (
    CTR_PRIOR,
    CTR_SMOOTHING,
    FIRST_HOURS_US,
    HOUR_US,
    ITEM_VIEW,
    LISTING_VIEW,
    SESSION_US,
    USER_VIEW,
    WindowState,
)

T0 = pd.Timestamp("2026-10-01", tz="UTC")
T0_US = T0.value // 1000


def _world(seed: int = 3, n_users: int = 12, n_items: int = 25, n_events: int = 1500, hours: float = 30.0):
    """A small event log and its listings, dense enough for every window to take several values."""
    rng = np.random.default_rng(seed)
    items = [f"i{k}" for k in range(n_items)]
    listings = pd.DataFrame(
        {
            "item_id": items,
            "category": rng.choice(["dresses", "jeans", "sneakers", "bags"], n_items),
            "brand": rng.choice(["acme", "zeta", "nova"], n_items),
            "created_at": T0 + pd.to_timedelta(rng.uniform(-10, hours / 2, n_items), unit="h"),
        }
    )
    ts = T0 + pd.to_timedelta(np.sort(rng.uniform(0, hours * 3600, n_events)).round(3), unit="s")
    # A few exact ties, as a real log has.
    ts = pd.Series(ts).where(rng.random(n_events) > 0.05, pd.Series(ts).shift(1).fillna(ts[0]))
    events = pd.DataFrame(
        {
            "event_id": [f"e{k}" for k in range(n_events)],
            "event_type": rng.choice(
                ["impression", "click", "save", "add_to_bag", "purchase"], n_events, p=[0.6, 0.22, 0.12, 0.04, 0.02]
            ),
            "timestamp": ts.values,
            "user_id": rng.choice([f"u{k}" for k in range(n_users)], n_events),
            "item_id": rng.choice(items, n_events),
        }
    )
    events["timestamp"] = pd.to_datetime(events["timestamp"], utc=True).astype("datetime64[us, UTC]")
    listings["created_at"] = listings["created_at"].astype("datetime64[us, UTC]")
    return events, listings


def records_of(events: pd.DataFrame) -> list[StreamRecord]:
    """Both routed copies of every event, in log order."""
    out = []
    for e in events.itertuples(index=False):
        ts = int(pd.Timestamp(e.timestamp).value // 1000)
        for route in (e.item_id, e.user_id):
            out.append(
                StreamRecord(
                    record_id=e.event_id,
                    kind="event",
                    ts_us=ts,
                    item_id=e.item_id,
                    user_id=e.user_id,
                    event_type=e.event_type,
                    route=route,
                )
            )
    return out


def shuffle_within(records: list[StreamRecord], lateness_us: int, seed: int) -> list[StreamRecord]:
    """Arrival order: each record delayed by a random amount below the lateness."""
    rng = random.Random(seed)
    keyed = [(r.ts_us + rng.randrange(0, max(lateness_us // 2, 1)), i, r) for i, r in enumerate(records)]
    return [r for _, _, r in sorted(keyed)]


def run_stream(state: WindowState, records, batch: int):
    parts: dict[str, list[pd.DataFrame]] = {}
    totals = {"accepted": 0, "rejected": {}, "sold": []}
    for k in range(0, len(records), batch):
        applied = state.apply(records[k : k + batch])
        totals["accepted"] += applied.accepted
        for reason, n in applied.rejected.items():
            totals["rejected"][reason] = totals["rejected"].get(reason, 0) + n
        totals["sold"] += applied.sold_items
        for view, table in applied.updates.items():
            parts.setdefault(view, []).append(table.to_pandas())
    return {v: pd.concat(p, ignore_index=True) for v, p in parts.items()}, totals


# -- brute force (a python loop over the log) -------------------------------------------------------
# A row stamped E holds the windows over the events strictly before E: [E - W, E).
def brute_item(events, listings, item, t_us):
    ev = [
        (int(r.timestamp.value // 1000), r.event_type)
        for r in events.itertuples()
        if r.item_id == item and int(r.timestamp.value // 1000) < t_us
    ]
    created = listings.set_index("item_id").created_at[item].value // 1000

    def n(kind, width):
        return sum(1 for ts, k in ev if k == kind and t_us - width <= ts)

    def first(kind):
        return sum(1 for ts, k in ev if k == kind and created <= ts < created + FIRST_HOURS_US)

    imp, clk = n("impression", 24 * HOUR_US), n("click", 24 * HOUR_US)
    return {
        "item_impressions_1h": n("impression", HOUR_US),
        "item_clicks_1h": n("click", HOUR_US),
        "item_saves_1h": n("save", HOUR_US),
        "item_impressions_24h": imp,
        "item_clicks_24h": clk,
        "item_saves_24h": n("save", 24 * HOUR_US),
        "item_ctr_24h_rt": np.float32((clk + CTR_SMOOTHING * CTR_PRIOR) / (imp + CTR_SMOOTHING)),
        "item_first6h_impressions": first("impression"),
        "item_first6h_clicks": first("click"),
        "item_first6h_saves": first("save"),
    }


def brute_user(events, listings, user, t_us):
    cat = listings.set_index("item_id").category.to_dict()
    brand = listings.set_index("item_id").brand.to_dict()
    recent = [
        r
        for r in events.itertuples()
        if r.user_id == user and t_us - SESSION_US <= int(r.timestamp.value // 1000) < t_us
    ]
    clicks = [r for r in recent if r.event_type == "click"]
    return {
        "user_clicks_30m": len(clicks),
        "user_saves_30m": sum(1 for r in recent if r.event_type == "save"),
        "user_session_categories": ",".join(sorted({cat[r.item_id] for r in clicks})),
        "user_session_brands": ",".join(sorted({brand[r.item_id] for r in clicks})),
    }


def _ts_us(series) -> np.ndarray:
    return pd.to_datetime(series, utc=True).astype("datetime64[us, UTC]").astype("int64").to_numpy()


def test_window_counts_equal_brute_force():
    events, listings = _world()
    state = WindowState(lateness_s=300)
    state.seed_listings(listings)
    rows, totals = run_stream(state, records_of(events), batch=1)
    assert totals["accepted"] == 2 * len(events) and not totals["rejected"]
    items, users = rows[ITEM_VIEW], rows[USER_VIEW]
    rng = np.random.default_rng(0)
    for k in rng.choice(len(items), 40, replace=False):
        row = items.iloc[k]
        expect = brute_item(events, listings, row.item_id, int(row.event_timestamp.value // 1000))
        assert {c: row[c] for c in expect} == expect, row.item_id
    for k in rng.choice(len(users), 40, replace=False):
        row = users.iloc[k]
        expect = brute_user(events, listings, row.user_id, int(row.event_timestamp.value // 1000))
        assert {c: row[c] for c in expect} == expect, row.user_id
    # The windows take several values (the test is not vacuous).
    assert items.item_clicks_1h.nunique() > 2 and items.item_first6h_impressions.nunique() > 2
    assert users.user_session_categories.str.contains(",").any()


def test_out_of_order_within_lateness_is_exact_late_and_duplicates_counted():
    events, listings = _world(seed=5, n_events=800)
    records = records_of(events)
    lateness_us = 300 * 1_000_000
    exact = WindowState(lateness_s=300)
    exact.seed_listings(listings)
    in_order, _ = run_stream(exact, records, batch=len(records))

    state = WindowState(lateness_s=300)
    state.seed_listings(listings)
    shuffled = shuffle_within(records, lateness_us, seed=1)
    assert shuffled != records
    # Redelivered copies shortly after the original are duplicates; a replay of old records is late.
    with_dupes = []
    for k, r in enumerate(shuffled):
        with_dupes.append(r)
        if k % 7 == 0:
            with_dupes.append(r)
    n_dupes = len(with_dupes) - len(shuffled)
    replay = shuffled[:10]
    late = StreamRecord(
        record_id="late-1",
        kind="event",
        ts_us=records[-1].ts_us - lateness_us - 1_000_000,
        item_id="i0",
        user_id="u0",
        event_type="click",
        route="i0",
    )
    rows, totals = run_stream(state, with_dupes + replay + [late], batch=97)
    assert totals["accepted"] == len(records)
    assert totals["rejected"] == {"duplicate": n_dupes, "late": 1 + len(replay)}
    # The last row of each entity equals the in-order run's (windows are on event time).
    for view, key in ((ITEM_VIEW, "item_id"), (USER_VIEW, "user_id")):
        a = rows[view].sort_values("created").groupby(key).tail(1).set_index(key).sort_index()
        b = in_order[view].set_index(key).sort_index()
        pd.testing.assert_frame_equal(a.drop(columns="created"), b.drop(columns="created"))


def test_sold_by_record_or_purchase_once():
    state = WindowState()
    base = dict(kind="listing", user_id=None)
    sold = StreamRecord(record_id="i1:sold:10", ts_us=T0_US + 10, item_id="i1", change="sold", route="i1", **base)
    buy = StreamRecord(
        record_id="e9", kind="event", ts_us=T0_US + 20, item_id="i2", user_id="u1", event_type="purchase", route="i2"
    )
    buy_user_copy = StreamRecord(
        record_id="e9", kind="event", ts_us=T0_US + 20, item_id="i2", user_id="u1", event_type="purchase", route="u1"
    )
    applied = state.apply([sold, buy, buy_user_copy])
    assert applied.sold_items == ["i1", "i2"] and applied.accepted == 3
    table = applied.updates[LISTING_VIEW].to_pandas()
    assert table.columns.tolist() == ["item_id", "event_timestamp", "created", "is_sold"]
    assert table.is_sold.tolist() == [1, 1]
    assert _ts_us(table.event_timestamp).tolist() == [T0_US + 10, T0_US + 20]
    again = StreamRecord(record_id="i1:sold:30", ts_us=T0_US + 30, item_id="i1", change="sold", route="i1", **base)
    assert state.apply([again]).sold_items == []


def test_snapshot_restore_resumes_exactly():
    events, listings = _world(seed=8, n_events=900)
    records = records_of(events)
    whole = WindowState()
    whole.seed_listings(listings)
    full, _ = run_stream(whole, records, batch=50)

    first = WindowState()
    first.seed_listings(listings)
    cut = 1000
    head, _ = run_stream(first, records[:cut], batch=50)
    first.seed_listings(pd.DataFrame({"item_id": ["x"], "category": [None], "brand": ["b"], "created_at": [pd.NaT]}))
    blob = first.snapshot()
    resumed = WindowState.restore(blob)
    assert pickle.loads(resumed.snapshot()) == pickle.loads(blob) and resumed.sizes == first.sizes
    # At-least-once: the consumer replays some records it had applied before the checkpoint.
    # (ids still within the lateness are duplicates, older ones late: none is applied twice).
    tail, totals = run_stream(resumed, records[cut - 100 :], batch=50)
    assert sum(totals["rejected"].values()) == 100 and totals["rejected"]["duplicate"] > 0
    assert resumed.watermark_us == whole.watermark_us
    for view in (ITEM_VIEW, USER_VIEW):
        got = pd.concat([head[view], tail[view]], ignore_index=True).drop(columns="created")
        pd.testing.assert_frame_equal(got, full[view].drop(columns="created"))


def test_memory_is_bounded():
    """A long stream keeps only ids that could still be accepted and the last day of window events."""
    events, listings = _world(seed=9, n_events=6000, hours=96)
    state = WindowState(lateness_s=60)
    state.seed_listings(listings)
    records = records_of(events)
    for k in range(0, len(records), 500):
        state.apply(records[k : k + 500])
    end = records[-1].ts_us
    ts = _ts_us(events.timestamp)
    counted = events.event_type.isin(["impression", "click", "save"]).to_numpy()
    last_day = int((counted & (ts > end - 60 * 1_000_000 - 24 * HOUR_US)).sum())
    last_ids = int((ts >= end - 60 * 1_000_000).sum()) * 2
    sizes = state.sizes
    assert sizes["item_events"] <= last_day and sizes["item_events"] < counted.sum() / 3
    assert sizes["dedup_ids"] == last_ids
    assert sizes["user_events"] < 200


def test_bad_lateness():
    with pytest.raises(ValueError):
        WindowState(lateness_s=-1)


# -- backfill == stream -----------------------------------------------------------------------------
def _final_rows(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    """The stream's rows as Feast reads them: per (entity, event time), the latest written."""
    frame = frame.sort_values("created", kind="stable")
    return frame.drop_duplicates([key, "event_timestamp"], keep="last").drop(columns="created")


def _mismatches(stream: pd.DataFrame, back: pd.DataFrame, key: str) -> tuple[int, int]:
    s = _final_rows(stream, key).set_index([key, "event_timestamp"]).sort_index()
    b = back.drop(columns="created").set_index([key, "event_timestamp"]).sort_index()
    missing = s.index.difference(b.index)
    joined = s.join(b, rsuffix="_b", how="inner")
    bad = 0
    for col in s.columns:
        x, y = joined[col], joined[f"{col}_b"]
        bad += int((~((x == y) | (x.isna() & y.isna()))).sum())
    return bad + len(missing), len(joined)


@pytest.mark.parametrize("shuffle,batch", [(False, 1), (False, 64), (True, 97)])
def test_backfill_equals_stream_row_for_row(shuffle, batch):
    from ranker.streaming.backfill import backfill_tables

    events, listings = _world(seed=21, n_events=1200)
    back = {v: t.to_pandas() for v, t in backfill_tables(events, listings).items()}
    records = records_of(events)
    if shuffle:
        records = shuffle_within(records, 300 * 1_000_000, seed=4)
    state = WindowState(lateness_s=300)
    state.seed_listings(listings)
    stream, totals = run_stream(state, records, batch=batch)
    assert not totals["rejected"]
    for view, key in ((ITEM_VIEW, "item_id"), (USER_VIEW, "user_id")):
        bad, compared = _mismatches(stream[view], back[view], key)
        assert bad == 0, (view, bad, compared)
        assert compared == len(_final_rows(stream[view], key))
        if batch == 1 and not shuffle:  # one row per entity per event time, as the backfill
            assert compared == len(back[view])
    # The backfill's rows are the brute-force windows too.
    items = back[ITEM_VIEW]
    for k in np.random.default_rng(1).choice(len(items), 15, replace=False):
        row = items.iloc[k]
        expect = brute_item(events, listings, row.item_id, int(row.event_timestamp.value // 1000))
        assert {c: row[c] for c in expect} == expect


def test_backfill_window_bounds_and_rerun(tmp_path):
    from ranker.streaming.backfill import backfill

    events, listings = _world(seed=2, n_events=600)
    start, end = T0 + pd.Timedelta(hours=10), T0 + pd.Timedelta(hours=20)
    full = backfill(events, listings, tmp_path)
    part = backfill(events, listings, tmp_path, start=start, end=end)
    again = backfill(events, listings, tmp_path, start=start, end=end)
    assert part["views"] == again["views"]
    files = sorted(p.name for p in (tmp_path / ITEM_VIEW).iterdir())
    assert files == ["backfill-20261001T100000Z-20261001T200000Z.parquet", "backfill-first-last.parquet"]
    whole = pd.read_parquet(full["views"][ITEM_VIEW]["path"]).drop(columns="created")
    cut = pd.read_parquet(part["views"][ITEM_VIEW]["path"]).drop(columns="created")
    assert cut.event_timestamp.min() >= start and cut.event_timestamp.max() < end
    inside = whole[(whole.event_timestamp >= start) & (whole.event_timestamp < end)].reset_index(drop=True)
    pd.testing.assert_frame_equal(cut.reset_index(drop=True), inside)  # windows reach before start


# -- Feast: the v2 services read the backfilled rows point in time ----------------------------------
def test_feast_point_in_time_with_v2_returns_the_backfill(world):
    """`ranker features build` (the world fixture) wrote the backfill, apply registered the views: a
    point-in-time training set through search_ranker_v2 gets, per impression, the backfill's row at
    the entity's latest event time <= the impression time (within the views' 1 day TTL)."""
    from ranker.features.store import feature_store, in_feature_repo
    from tests.test_features import _impressions_entity_df

    from ranker.features.store import service_spec

    for surface in ("search", "recs"):  # v1 + the 10 listing and 2 numeric session features
        v1, v2 = (service_spec(feature_store(world), f"{surface}_ranker_v{n}").features for n in (1, 2))
        assert v2[: len(v1)] == v1 and len(v2) == len(v1) + 12
    entity_df = _impressions_entity_df(world, 300, seed=5)
    # Half of them half an hour later: the row is then an earlier event's, not the impression's own.
    entity_df.loc[::2, "event_timestamp"] += pd.Timedelta(minutes=30)
    entity_df["request_ts"] = entity_df.event_timestamp.astype("int64") // 10**9
    store = feature_store(world)
    with in_feature_repo(world.feature_repo):
        got = store.get_historical_features(
            entity_df=entity_df, features=store.get_feature_service("search_ranker_v2")
        ).to_df()
    assert "item_ctr_24h_rt" in got.columns and "user_clicks_30m" in got.columns
    assert "user_session_categories" not in got.columns  # strings stay out of the model's matrix

    realtime = world.features_dir / "realtime"
    for view, key, cols in (
        (ITEM_VIEW, "item_id", ["item_clicks_1h", "item_impressions_24h", "item_ctr_24h_rt", "item_first6h_saves"]),
        (USER_VIEW, "user_id", ["user_clicks_30m", "user_saves_30m"]),
    ):
        back = pd.read_parquet(realtime / view).sort_values("event_timestamp")
        assert len(back) > 1000
        probe = got[[key, "event_timestamp", *cols]].copy()
        probe["event_timestamp"] = pd.to_datetime(probe.event_timestamp, utc=True).astype("datetime64[us, UTC]")
        probe = probe.sort_values("event_timestamp").reset_index(drop=True)
        expect = pd.merge_asof(
            probe[[key, "event_timestamp"]],
            back.astype({"event_timestamp": "datetime64[us, UTC]"}),
            on="event_timestamp",
            by=key,
            tolerance=pd.Timedelta(days=1),
        )
        assert expect[cols[0]].notna().sum() > 100, view  # most impressions have a real-time row
        for col in cols:
            a = pd.to_numeric(probe[col]).astype("float64")
            b = pd.to_numeric(expect[col]).astype("float64")
            bad = ~((a == b) | (a.isna() & b.isna()))
            assert int(bad.sum()) == 0, (view, col, probe[bad].head(), expect[bad].head())


def test_backfill_without_listings_or_events():
    """An imported log may have no listings: the first-hours counts are missing, the session lists
    blank, the windows still counted; an empty log gives empty tables of the views' schemas."""
    from ranker.streaming.backfill import backfill_tables
    from ranker.streaming.windows import SCHEMAS

    events, listings = _world(seed=4, n_events=300)
    tables = backfill_tables(events, listings.iloc[0:0])
    items, users = tables[ITEM_VIEW].to_pandas(), tables[USER_VIEW].to_pandas()
    assert items.item_first6h_clicks.isna().all() and items.item_clicks_24h.sum() > 0
    assert (users.user_session_categories == "").all() and users.user_clicks_30m.sum() > 0
    empty = backfill_tables(events.iloc[0:0], listings)
    for view, table in empty.items():
        assert table.num_rows == 0 and table.schema == SCHEMAS[view]


@pytest.mark.slow  # four CLI processes (Feast imports): ~25 s
def test_features_build_cli_writes_the_backfill_before_apply(tmp_path):
    """`ranker features build` writes the real-time backfill (replacing earlier backfills), so
    `ranker features apply` and `materialize` find non-empty directory sources."""
    import json
    import os
    import subprocess
    import sys
    from datetime import date

    from ranker.data.simulate import SimConfig, simulate
    from tests.conftest import REPO_ROOT, make_home

    home = make_home(tmp_path / "home")
    simulate(
        SimConfig(seed=3, users=60, items=150, new_items_per_day=10, days=2, start=date(2026, 10, 1)),
        raw_dir=home.raw_dir,
        ground_truth_dir=home.ground_truth_dir,
    )
    env = {**os.environ, "RANKER_HOME": str(home.home), "PYTHONPATH": str(REPO_ROOT)}

    def ranker(*args):
        r = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, env=env)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        return r.stdout

    (home.features_dir / "realtime" / ITEM_VIEW).mkdir(parents=True)
    (home.features_dir / "realtime" / ITEM_VIEW / "backfill-20261001T000000Z-last.parquet").write_bytes(b"stale")
    built = json.loads(ranker("features", "build", "--json"))["realtime"]["views"]
    assert built[ITEM_VIEW]["rows"] > 100 and built[USER_VIEW]["rows"] > 10
    for view in (ITEM_VIEW, USER_VIEW):
        assert [p.name for p in (home.features_dir / "realtime" / view).iterdir()] == ["backfill-first-last.parquet"]
    assert "item_realtime_fv" in ranker("features", "apply")
    assert "item_realtime_fv" in json.loads(ranker("features", "materialize", "--json"))["views"]


def test_restore_refuses_another_snapshot_version():
    with pytest.raises(ValueError, match="snapshot version"):
        WindowState.restore(pickle.dumps({"old": "layout"}))

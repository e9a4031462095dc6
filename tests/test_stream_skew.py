"""Training equals serving for the real-time views, per impression.

The scorer ranks an impression at time T with what the online store holds *before* that impression
(and the others of its ranking) reach the stream. A point-in-time join at T (Feast: the latest row
with ``event_timestamp <= T`` and within the view's TTL) must return exactly that: not the row the
impression itself wrote, and nothing once the row expired. These tests replay a log through the
stream's state, keep an online store the way the writer does (newest event_timestamp wins, an equal
one is rewritten), read it just before each impression, and compare with the point-in-time join over
the backfill and over the stream's own rows (what the processor appends offline)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ranker.streaming.windows import (
    AVAILABLE_AFTER_US,
    ITEM_FEATURES,
    ITEM_VIEW,
    TTL_US,
    USER_FEATURES,
    USER_VIEW,
    WindowState,
)
from tests.test_stream_windows import _world, records_of

KEYS = {ITEM_VIEW: "item_id", USER_VIEW: "user_id"}
FEATURES = {ITEM_VIEW: [n for n, _ in ITEM_FEATURES], USER_VIEW: [n for n, _ in USER_FEATURES]}


def _sparse_world():
    """Four days, entities that go quiet for more than a day and come back: rows expire."""
    events, listings = _world(seed=11, n_users=9, n_items=14, n_events=1400, hours=96.0)
    # A day-long lull for half the items and users from hour 30 to hour 58.
    t = events.timestamp
    lull = (t > events.timestamp.min() + pd.Timedelta(hours=30)) & (t < events.timestamp.min() + pd.Timedelta(hours=58))
    quiet = events.item_id.isin([f"i{k}" for k in range(7)]) | events.user_id.isin([f"u{k}" for k in range(4)])
    events = events[~(lull & quiet)].reset_index(drop=True)
    return events, listings


def _write(online: dict, updates: dict) -> None:
    """The online writer's rule: a row replaces the stored one unless that one is newer."""
    for view, table in updates.items():
        if view not in KEYS:
            continue
        df = table.to_pandas()
        for row in df.itertuples(index=False):
            key = getattr(row, KEYS[view])
            stamp = row.event_timestamp.value // 1000
            old = online[view].get(key)
            if old is None or old[0] <= stamp:
                online[view][key] = (stamp, {f: getattr(row, f) for f in FEATURES[view]})


def _served(events, listings):
    """Per impression (its row in ``events``): the online values just before its batch, and every row
    the stream wrote."""
    state = WindowState(lateness_s=0)
    state.seed_listings(listings)
    online: dict = {ITEM_VIEW: {}, USER_VIEW: {}}
    written: dict = {ITEM_VIEW: [], USER_VIEW: []}
    served = {ITEM_VIEW: {}, USER_VIEW: {}}
    records = records_of(events)
    ts = np.array([r.ts_us for r in records])
    starts = np.flatnonzero(np.r_[True, ts[1:] != ts[:-1]])
    imp_rows = events.index[events.event_type == "impression"]
    by_ts = pd.Series(
        imp_rows, index=events.timestamp[imp_rows].astype("datetime64[us, UTC]").astype("int64").to_numpy()
    )
    for a, b in zip(starts, [*starts[1:], len(records)], strict=True):
        t = int(ts[a])
        # The partition's event time reaches the instant before T: what the store holds then.
        for applied in (state.tick(t - 1),):
            _write(online, applied.updates)
            for view in written:
                if view in applied.updates:
                    written[view].append(applied.updates[view].to_pandas())
        if t in by_ts.index:
            for row in np.atleast_1d(by_ts.loc[t]):
                e = events.loc[row]
                for view, key in ((ITEM_VIEW, e.item_id), (USER_VIEW, e.user_id)):
                    held = online[view].get(key)
                    served[view][row] = None if held is None else held[1]
        applied = state.apply(records[a:b])
        _write(online, applied.updates)
        for view in written:
            if view in applied.updates:
                written[view].append(applied.updates[view].to_pandas())
    return served, {v: pd.concat(p, ignore_index=True) for v, p in written.items()}


def _point_in_time(rows: pd.DataFrame, key: str, entity: pd.DataFrame) -> pd.DataFrame:
    """Feast's join: per entity row, the latest row with event_timestamp <= T (the latest created on
    a tie) and event_timestamp >= T - ttl."""
    rows = rows.sort_values(["event_timestamp", "created"]).drop_duplicates([key, "event_timestamp"], keep="last")
    rows = rows.astype({"event_timestamp": "datetime64[us, UTC]"})
    probe = entity[[key, "event_timestamp"]].reset_index().sort_values("event_timestamp")
    probe["event_timestamp"] = probe.event_timestamp.astype("datetime64[us, UTC]")
    got = pd.merge_asof(
        probe, rows, on="event_timestamp", by=key, tolerance=pd.Timedelta(microseconds=TTL_US), allow_exact_matches=True
    )
    return got.set_index("index").sort_index()


def _mismatches(served: dict, joined: pd.DataFrame, features: list[str]) -> tuple[int, int, int]:
    bad = present = 0
    for row, held in served.items():
        got = joined.loc[row]
        values = [None if pd.isna(got[f]) else got[f] for f in features]
        expect = [None] * len(features) if held is None else [None if pd.isna(held[f]) else held[f] for f in features]
        if held is not None and any(v is not None for v in expect):
            present += 1
        bad += values != expect
    return bad, present, len(served)


@pytest.fixture(scope="module")
def replay():
    from ranker.streaming.backfill import backfill_tables

    events, listings = _sparse_world()
    served, written = _served(events, listings)
    back = {v: t.to_pandas() for v, t in backfill_tables(events, listings).items()}
    impressions = events[events.event_type == "impression"].rename(columns={"timestamp": "event_timestamp"})
    return events, impressions, served, written, back


@pytest.mark.parametrize("source", ["backfill", "stream"])
@pytest.mark.parametrize("view", [ITEM_VIEW, USER_VIEW])
def test_training_row_equals_what_the_scorer_read(replay, source, view):
    """0 mismatches per impression between the point-in-time value and the online value just before
    the impression, for the backfill's rows and for the stream's own rows."""
    events, impressions, served, written, back = replay
    rows = back[view] if source == "backfill" else written[view]
    joined = _point_in_time(rows, KEYS[view], impressions)
    bad, present, total = _mismatches(served[view], joined, FEATURES[view])
    assert bad == 0, (view, source, bad, total)
    assert total > 500 and 0.3 * total < present < total  # most read a row, some a missing or expired one


def test_expired_rows_are_tombstones_on_both_sides(replay):
    """The lull makes rows expire: the backfill and the stream both wrote tombstones (all features
    null, one TTL + 1 µs after the entity's last row), and the same ones up to the stream's watermark."""
    events, impressions, served, written, back = replay
    for view in (ITEM_VIEW, USER_VIEW):
        feats = FEATURES[view]
        tomb_b = back[view][back[view][feats].isna().all(axis=1)]
        tomb_s = written[view][written[view][feats].isna().all(axis=1)]
        assert len(tomb_b) >= 3, view
        key = KEYS[view]
        assert set(zip(tomb_s[key], tomb_s.event_timestamp, strict=True)) == set(
            zip(tomb_b[key], tomb_b.event_timestamp, strict=True)
        ), view
        # Each comes exactly one TTL + 1 µs after the entity's previous row.
        rows = back[view].sort_values([key, "event_timestamp"])
        prev = rows.groupby(key).event_timestamp.shift(1)
        is_tomb = rows[feats].isna().all(axis=1)
        gap = (rows.event_timestamp - prev)[is_tomb]
        assert (gap == pd.Timedelta(microseconds=TTL_US + 1)).all(), view


def test_the_old_stamping_would_leak_the_impression_into_its_own_row(replay):
    """The check has teeth: stamped at the event's own time (no ``AVAILABLE_AFTER_US``), the join at
    an impression's time reads the row that impression wrote, and most item rows differ."""
    events, impressions, served, written, back = replay
    rows = back[ITEM_VIEW].copy()
    rows["event_timestamp"] -= pd.Timedelta(microseconds=AVAILABLE_AFTER_US)
    joined = _point_in_time(rows, "item_id", impressions)
    bad, _, total = _mismatches(served[ITEM_VIEW], joined, FEATURES[ITEM_VIEW])
    assert bad > 0.5 * total


def test_views_ttl_is_the_stream_ttl():
    """The stream's expiry is the declared TTL of both views (one place to change it: the declaration
    and this constant move together)."""
    import importlib
    from pathlib import Path

    from ranker.features.store import in_feature_repo

    with in_feature_repo(Path(__file__).resolve().parents[1] / "feature_repo"):
        realtime = importlib.import_module("features.realtime")
        for view in (realtime.item_realtime_fv, realtime.user_session_fv):
            assert int(view.ttl.total_seconds() * 1_000_000) == TTL_US, view.name

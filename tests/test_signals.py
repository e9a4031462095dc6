"""Issue 17 signals (the v4 services): the price-band taste table and the title-embedding tables
recomputed by brute force from the raw data (point in time: only what is before each row's
timestamp), and their on-demand features by hand, on DataFrames (training) and dicts (serving)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ranker.features import taste, text, transforms


def _table(settings, name):
    return pd.read_parquet(settings.features_dir / f"{name}.parquet")


def _in_window(ev, s, days):
    return ev[(ev.timestamp < s) & (ev.timestamp >= s - pd.Timedelta(days=days))]


def _category_median(listings: pd.DataFrame, category: str, day: pd.Timestamp) -> float:
    live = listings[
        (listings.category == category)
        & (listings.created_at < day)
        & (listings.sold_at.isna() | (listings.sold_at >= day))
    ]
    return float(live.price.median()) if len(live) else np.nan


def _band(ratio: float) -> int:
    for b, edge in enumerate(taste.PRICE_BAND_EDGES):
        if ratio < edge:
            return b
    return taste.N_PRICE_BANDS - 1


def test_user_price_band_stats_by_brute_force(world):
    events = pd.read_parquet(world.raw_dir / "events.parquet")
    listings = pd.read_parquet(world.raw_dir / "listings.parquet")
    ev = events[events.event_type.isin(["impression", "click"])].merge(
        listings[["item_id", "category", "price"]], on="item_id", how="left"
    )
    table = _table(world, "user_price_band_stats")
    assert list(table.columns[2:]) == taste.band_columns()
    assert len(table) > 0 and (table[[f"upb_clicks_{b}_30d" for b in range(taste.N_PRICE_BANDS)]] > 0).any().all()
    medians: dict = {}
    for row in table.sample(60, random_state=3).itertuples():
        win = _in_window(ev[ev.user_id == row.user_id], row.event_timestamp, 30)
        counts = {("impression", b): 0 for b in range(taste.N_PRICE_BANDS)}
        counts.update({("click", b): 0 for b in range(taste.N_PRICE_BANDS)})
        for e in win.itertuples():
            day = e.timestamp.floor("D")
            key = (e.category, day)
            if key not in medians:
                medians[key] = _category_median(listings, e.category, day)
            if medians[key] > 0:
                counts[(e.event_type, _band(e.price / medians[key]))] += 1
        for b in range(taste.N_PRICE_BANDS):
            assert getattr(row, f"upb_impressions_{b}_30d") == counts[("impression", b)], (row.user_id, b)
            assert getattr(row, f"upb_clicks_{b}_30d") == counts[("click", b)], (row.user_id, b)
        assert len(_in_window(ev[ev.user_id == row.user_id], row.event_timestamp, 32)) > 0
    # completeness: at the last snapshot every user with an impression in the last 32 days has a row
    last = table.event_timestamp.max()
    recent = set(_in_window(ev, last, 32).user_id)
    assert recent == set(table[table.event_timestamp == last].user_id)


def test_user_category_taste_stats_by_brute_force(world):
    events = pd.read_parquet(world.raw_dir / "events.parquet")
    listings = pd.read_parquet(world.raw_dir / "listings.parquet", columns=["item_id", "category"])
    ev = events[events.event_type.isin(["impression", "click"])].merge(listings, on="item_id", how="left")
    ev = ev.assign(day=ev.timestamp.dt.floor("D"))
    slots = ev.groupby(["day", "position"]).event_type.agg(
        clicks=lambda t: (t == "click").sum(), shown=lambda t: (t == "impression").sum()
    )
    slot_ctr = (slots.clicks / slots.shown).where(slots.shown > 0).rename("slot_ctr").reset_index()
    ev = ev.merge(slot_ctr, on=["day", "position"], how="left")
    table = _table(world, "user_category_taste_stats")
    assert len(table) > 0 and table.uct_coec_lift_30d.notna().any()
    w, ws = taste.CATEGORY_PRIOR_EXPECTED_CLICKS, taste.CATEGORY_PRIOR_CLICKS
    for row in table.sample(120, random_state=5).itertuples():
        every = _in_window(ev, row.event_timestamp, 30)
        clicks = every[every.event_type == "click"]
        market = (clicks.category == row.category).sum() / len(clicks) if len(clicks) else np.nan
        win = _in_window(ev[ev.user_id == row.user_id], row.event_timestamp, 30)
        imp = win[win.event_type == "impression"]
        pair_imp = imp[imp.category == row.category]
        pair_clk = ((win.event_type == "click") & (win.category == row.category)).sum()
        assert row.uct_impressions_30d == len(pair_imp)
        ratio = (win.event_type == "click").sum() / imp.slot_ctr.fillna(0).sum() if len(imp) else np.nan
        if ratio > 0:
            lift = (pair_clk + w * ratio) / (pair_imp.slot_ctr.fillna(0).sum() + w) / ratio
            assert row.uct_coec_lift_30d == pytest.approx(lift, rel=1e-5)
        else:
            assert np.isnan(row.uct_coec_lift_30d)
        user_clicks = (win.event_type == "click").sum()
        if market > 0:
            log_share = np.log((pair_clk + ws * market) / (user_clicks + ws) / market)
            assert row.uct_log_share_30d == pytest.approx(log_share, rel=1e-5, abs=1e-6)
        else:
            assert np.isnan(row.uct_log_share_30d)
        shown = _in_window(ev[(ev.user_id == row.user_id) & (ev.category == row.category)], row.event_timestamp, 32)
        assert len(shown) > 0


def test_text_tables_are_point_in_time(world):
    """The encoder is fitted on titles listed before the fit time only (refitting on exactly those
    gives the stored vectors), no listing or query row is earlier than the fit, a listing's row is not
    earlier than its listing, and a user's row is the weighted mean of the listings engaged with in
    the 30 days before it, each counted only once its embedding existed."""
    listings = pd.read_parquet(world.raw_dir / "listings.parquet")
    events = pd.read_parquet(world.raw_dir / "events.parquet")
    lt, qt, ut = (_table(world, name) for name in text.TEXT_TABLES)
    fit = qt.event_timestamp.min()
    assert (qt.event_timestamp == fit).all() and (lt.event_timestamp >= fit).all()
    merged = lt.merge(listings[["item_id", "created_at", "title"]], on="item_id")
    assert len(merged) == len(lt) == listings.title.fillna("").ne("").sum()
    assert (merged.event_timestamp >= merged.created_at).all()
    before = listings[(listings.created_at < fit) & listings.title.fillna("").ne("")].sort_values("item_id")
    encoder = text.TitleEncoder().fit(before.title.tolist())
    title_cols = text.component_names("listing_text")
    sample = merged.sample(100, random_state=0)
    np.testing.assert_array_equal(encoder.transform(sample.title.tolist()), sample[title_cols].to_numpy(np.float32))
    norms = np.linalg.norm(lt[title_cols].to_numpy(np.float64), axis=1)
    assert np.allclose(norms[norms > 0], 1.0, atol=1e-5)
    searches = sorted(set(events.loc[events.surface == "search", "query"].dropna()) - {""})
    assert sorted(qt["query"]) == searches
    # the users' mean engaged embedding
    weights = {"click": 1, "save": 2, "add_to_bag": 3, "purchase": 4}
    eng = events[events.event_type.isin(list(weights))].merge(lt, on="item_id", suffixes=("", "_emb"))
    eng = eng[eng.event_timestamp <= eng.timestamp]
    user_cols = text.component_names("user_text")
    assert len(ut) > 0
    for row in ut.sample(80, random_state=4).itertuples():
        win = _in_window(eng[eng.user_id == row.user_id], row.event_timestamp, 30)
        got = np.array([getattr(row, c) for c in user_cols], dtype=np.float64)
        if len(win) == 0:
            assert np.isnan(got).all()
            continue
        w = win.event_type.map(weights).to_numpy(np.float64)
        want = (win[title_cols].to_numpy(np.float64) * w[:, None]).sum(axis=0) / w.sum()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def _both_paths(function, frame: pd.DataFrame) -> dict:
    """The function on a DataFrame (Feast) and on a dict of float64 arrays (the scorer): equal."""
    offline = function(frame)
    online = function({c: frame[c].to_numpy(np.float64) for c in frame.columns})
    for name, values in online.items():
        np.testing.assert_array_equal(values, offline[name].to_numpy())
        assert values.dtype == np.float32
    return online


def test_price_band_features_by_hand():
    counts = {f"upb_impressions_{b}_30d": [10.0, 10.0, np.nan, 10.0] for b in range(5)}
    counts.update({f"upb_clicks_{b}_30d": [0.0, 0.0, np.nan, 0.0] for b in range(5)})
    counts["upb_clicks_1_30d"] = [4.0, 4.0, np.nan, 4.0]
    counts["upb_clicks_3_30d"] = [1.0, 1.0, np.nan, 1.0]
    frame = pd.DataFrame(
        {"price": [7.0, 30.0, 10.0, 5.0], "category_median_price": [10.0, 10.0, 10.0, np.nan], **counts}
    )
    out = _both_paths(transforms.user_price_band_features, frame)
    # row 0: ratio 0.7 -> band 1 (4 of 5 clicks); row 1: ratio 3 -> band 4 (none); row 2: a user
    # without history (counts missing = 0); row 3: no category price level -> no band
    np.testing.assert_array_equal(out["price_band_clicks"], np.array([4, 0, 0, np.nan], np.float32))
    np.testing.assert_allclose(out["price_band_click_share"], [0.8, 0.0, np.nan, np.nan], rtol=1e-6)
    ctr = 5 / 50
    lift = [(4 + 10 * ctr) / (10 + 10) / ctr, (0 + 10 * ctr) / (10 + 10) / ctr, np.nan, np.nan]
    np.testing.assert_allclose(out["price_band_ctr_lift"], lift, rtol=1e-6)
    # the band edges: x < edge picks the band, as the batch table's CASE does
    edges = np.array(taste.PRICE_BAND_EDGES)
    bands = transforms.price_band(np.concatenate([edges, edges - 1e-6]), np.ones(2 * len(edges)))
    np.testing.assert_array_equal(bands, np.concatenate([np.arange(1, 5), np.arange(0, 4)]).astype(float))


def test_title_similarity_by_hand():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, text.TEXT_DIM)), rng.normal(size=(5, text.TEXT_DIM))
    a[3] = np.nan  # no embedding (unknown listing / unseen query)
    b[4] = 0.0  # a text with no known n-gram
    frame = pd.DataFrame(
        {
            **{c: b[:, k] for k, c in enumerate(text.component_names("query_text"))},
            **{c: a[:, k] for k, c in enumerate(text.component_names("listing_text"))},
        }
    )
    out = _both_paths(transforms.query_title_similarity, frame)["query_title_similarity"]
    want = (a[:3] * b[:3]).sum(axis=1) / (np.linalg.norm(a[:3], axis=1) * np.linalg.norm(b[:3], axis=1))
    np.testing.assert_allclose(out[:3], want, rtol=1e-6)
    assert np.isnan(out[3]) and np.isnan(out[4])


def test_encoder_is_deterministic_and_needs_no_files():
    titles = [
        f"{c} {b} {k}" for c in ("black", "red", "navy") for b in ("nike", "zara", "levis") for k in ("tops", "jeans")
    ]
    one, two = text.TitleEncoder().fit(titles), text.TitleEncoder().fit(titles)
    np.testing.assert_array_equal(one.transform(titles), two.transform(titles))
    z = one.transform(["black nike tops", "velvet unicorn"])
    assert z.shape == (2, text.TEXT_DIM) and z.dtype == np.float32
    assert np.linalg.norm(z[0]) == pytest.approx(1.0, abs=1e-6)
    sims = one.transform(titles) @ z[0]
    assert titles[int(np.argmax(sims))] == "black nike tops"

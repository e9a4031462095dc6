"""Co-engagement tables (generic_ranker_v2): a tiny hand-made log with hand-computed scores, the
written tables against a brute-force recomputation from the raw events strictly before each
snapshot, Feast's point-in-time values, and the popularity-drawn negatives."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ranker.data import schema
from ranker.features import coengagement as ce
from ranker.features.store import feature_store, in_feature_repo, service_spec

LEVEL = {level.name: level for level in ce.LEVELS}


def _hist(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id", "brand", "category", "seller_id"])


def test_hand_made_log():
    """Users a, b, c. a: 2 x brand X, 1 x Y; b: X and Z; c: Y. Brand user sets: X {a, b}, Y {a, c},
    Z {b}. cos(X, Y) = 1/2, cos(X, Z) = 1/sqrt(2), cos(Y, Z) = 0."""
    hist = _hist(
        [
            ("a", "i1", "X", "dress", "s1"),
            ("a", "i2", "X", "dress", "s1"),
            ("a", "i3", "Y", "dress", "s2"),
            ("b", "i1", "X", "dress", "s1"),
            ("b", "i4", "Z", "shoes", "s3"),
            ("c", "i3", "Y", "dress", "s2"),
        ]
    )
    got = ce.user_scores(hist, LEVEL["brand"], top_k=10).set_index(["user_id", "key"])
    # a's shares: X 2/3, Y 1/3; score of Z = 2/3 cos(X,Z) + 1/3 cos(Y,Z) = 2/3 / sqrt(2)
    assert got.loc[("a", "X"), "share"] == pytest.approx(2 / 3)
    assert got.loc[("a", "X"), "score"] == pytest.approx(1 / 3 * 0.5)  # own brand: the other brands' support
    assert got.loc[("a", "Z"), "count"] == 0 and got.loc[("a", "Z"), "score"] == pytest.approx(2 / 3 / np.sqrt(2))
    # b: X 1/2, Z 1/2; Y gets 1/2 cos(X, Y) = 1/4
    assert got.loc[("b", "Y"), "score"] == pytest.approx(0.25)
    # c: Y only; X gets cos(Y, X) = 1/2; Z nothing (cos 0: no row)
    assert got.loc[("c", "X"), "score"] == pytest.approx(0.5)
    assert ("c", "Z") not in got.index
    # listing level (binary profile): item sets i1 {a, b}, i2 {a}, i3 {a, c}, i4 {b};
    # c engaged i3, so i1 scores cos(i3, i1) = 1/2, i2 1/sqrt(2), i4 0
    items = ce.user_scores(hist, LEVEL["item"], top_k=10, candidates=np.array(["i1", "i2", "i4"]))
    mine = items[items.user_id == "c"].set_index("key").score
    assert mine.to_dict() == pytest.approx({"i1": 0.5, "i2": 1 / np.sqrt(2)})
    # top_k keeps the best: c's single best listing is i2
    assert ce.user_scores(hist, LEVEL["item"], top_k=1, candidates=np.array(["i1", "i2", "i4"])).query(
        "user_id == 'c'"
    ).key.tolist() == ["i2"]
    # category x brand: a's (dress, X) and (dress, Y) are distinct values
    cb = ce.user_scores(hist, LEVEL["category_brand"], top_k=10).set_index(["user_id", "key"])
    assert cb.loc[("b", "shoes\tZ"), "share"] == pytest.approx(0.5)


@pytest.mark.parametrize("name", ["brand", "category_brand", "seller", "item"])
def test_level_equals_brute_force(world, monkeypatch, name):
    """Without the top-k cut and the neighbour pruning, every row equals the brute-force definition
    over the engagements strictly before the snapshot (30-day window; listings: live ones)."""
    eng, listings = ce.engagement_log(world.raw_dir)
    snapshots = ce.snapshot_times(eng)
    monkeypatch.setitem(ce.NEIGHBOURS, name, None)
    level = LEVEL[name]
    for at in (snapshots[2], snapshots[-2]):
        rows = ce.level_rows(eng, listings, level, at, top_k=10**6)
        window = eng[(eng.timestamp < at) & (eng.timestamp >= at - pd.Timedelta(days=ce.WINDOW_DAYS))]
        candidates = ce._live(listings, at) if name == "item" else None
        ref = ce.reference_user_scores(window, level, candidates=candidates)
        if name == "item":  # the user's own listings are not candidates: no rows for them
            ref = {k: v for k, v in ref.items() if v[0] == 0}
        keys = list(level.keys)
        key = rows[keys[0]] if len(keys) == 1 else rows.category + "\t" + rows.brand
        got = dict(zip(zip(rows.user_id, key, strict=True), rows[f"{level.prefix}_coeng_30d"], strict=True))
        assert set(got) == set(ref), f"{name} at {at}: rows differ from the reference"
        for pair, value in got.items():
            assert value == pytest.approx(ref[pair][2], rel=1e-5, abs=1e-7)
        if name != "item":
            shares = dict(zip(zip(rows.user_id, key, strict=True), rows[f"{level.prefix}_share_30d"], strict=True))
            for pair, value in shares.items():
                assert value == pytest.approx(ref[pair][1], rel=1e-6)
        assert (rows.event_timestamp == at).all()


def test_written_tables_are_point_in_time(world):
    """The tables as written (top-k, pruned): each user's own brands with their exact counts, and
    no score above the unpruned brute-force one; only snapshots from earlier events."""
    eng, listings = ce.engagement_log(world.raw_dir)
    table = pd.read_parquet(world.features_dir / "coeng_user_brand.parquet")
    for at, part in list(table.groupby("event_timestamp"))[1:4]:
        window = eng[(eng.timestamp < at) & (eng.timestamp >= at - pd.Timedelta(days=ce.WINDOW_DAYS))]
        ref = ce.reference_user_scores(window, LEVEL["brand"])
        for row in part.sample(min(200, len(part)), random_state=0).itertuples():
            count, share, score = ref[(row.user_id, row.brand)]
            assert row.ubc_engagements_30d == count and row.ubc_share_30d == pytest.approx(share, rel=1e-6)
            assert row.ubc_coeng_30d == pytest.approx(score, rel=1e-5, abs=1e-7)
    items = pd.read_parquet(world.features_dir / "coeng_user_item.parquet")
    at = sorted(items.event_timestamp.unique())[-2]
    part = items[items.event_timestamp == at]
    window = eng[(eng.timestamp < at) & (eng.timestamp >= at - pd.Timedelta(days=ce.WINDOW_DAYS))]
    ref = ce.reference_user_scores(window, LEVEL["item"], candidates=ce._live(listings, at))
    live = set(ce._live(listings, at))
    assert set(part.item_id) <= live
    assert part.groupby("user_id").size().max() <= ce.TOP_K["item"]
    for row in part.sample(min(300, len(part)), random_state=1).itertuples():
        count, _, score = ref[(row.user_id, row.item_id)]
        assert count == 0 and 0 < row.ui_coeng_30d <= score * (1 + 1e-5)
    pop = pd.read_parquet(world.features_dir / "coeng_item_popularity.parquet")
    for row in pop.sample(200, random_state=2).itertuples():
        mine = eng[(eng.item_id == row.item_id) & (eng.timestamp < row.event_timestamp)]
        assert row.item_interactions_all == len(mine) and row.item_interaction_users_all == mine.user_id.nunique()
        recent = mine[mine.timestamp >= row.event_timestamp - pd.Timedelta(days=ce.RECENT_DAYS)]
        assert row.item_interactions_7d_exact == len(recent)


def test_feast_serves_the_snapshot_before_the_request(world):
    table = pd.read_parquet(world.features_dir / "coeng_user_brand.parquet").sort_values(
        ["user_id", "brand", "event_timestamp"]
    )
    table["prev_ts"] = table.groupby(["user_id", "brand"]).event_timestamp.shift()
    table["prev"] = table.groupby(["user_id", "brand"]).ubc_share_30d.shift()
    moved = table[(table.prev_ts == table.event_timestamp - pd.Timedelta(days=1)) & (table.prev != table.ubc_share_30d)]
    moved = moved.sample(min(20, len(moved)), random_state=3)
    assert len(moved) > 5
    entity = pd.DataFrame(
        {
            "user_id": list(moved.user_id) * 2,
            "brand": list(moved.brand) * 2,
            "event_timestamp": list(moved.event_timestamp - pd.Timedelta(seconds=1))
            + list(moved.event_timestamp + pd.Timedelta(seconds=1)),
            "_i": list(range(len(moved))) * 2,
            "_after": [False] * len(moved) + [True] * len(moved),
        }
    )
    store = feature_store(world)
    with in_feature_repo(world.feature_repo):
        out = store.get_historical_features(entity_df=entity, features=["coeng_user_brand_fv:ubc_share_30d"]).to_df()
    out = out.sort_values(["_after", "_i"])
    before = out[~out._after].ubc_share_30d.to_numpy()
    after = out[out._after].ubc_share_30d.to_numpy()
    np.testing.assert_allclose(after, moved.ubc_share_30d.to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(before, moved.prev.to_numpy(), rtol=1e-6)


def test_generic_v2_contract(world):
    spec = service_spec(feature_store(world), "generic_ranker_v2")
    v1 = service_spec(feature_store(world), "generic_ranker_v1")
    assert spec.features[: len(v1.features)] == v1.features
    for name in ("ui_coeng_30d", "ubc_coeng_30d", "ucb_coeng_30d", "us_coeng_30d", "item_interactions_all"):
        assert name in spec.features and spec.defaults[name] == 0
    assert {"user_id", "item_id", "brand", "category", "seller_id"} <= set(spec.entity_keys)


def test_popular_negatives_are_live_and_recently_engaged(world):
    from ranker.training.dataset import DatasetOptions
    from ranker.training.negatives import _engagements, mixed_negatives, popular_negatives, positives

    pos = positives(world, DatasetOptions(surface="recs", negatives=5))
    listings = schema.read_table(world.raw_dir, schema.LISTINGS)
    engaged = _engagements(world)
    hard = popular_negatives(pos, listings, engaged, n=3, seed=1)
    assert len(hard) > 0.5 * 3 * len(pos)
    lst = listings.set_index("item_id")
    ts = pos.timestamp.to_numpy()[hard.group.to_numpy()]
    assert (lst.created_at.reindex(hard.item_id).to_numpy() < ts).all()
    sold = lst.sold_at.reindex(hard.item_id)
    assert (sold.isna().to_numpy() | (sold.to_numpy() > ts)).all()
    assert (hard.item_id.to_numpy() != pos.item_id.to_numpy()[hard.group.to_numpy()]).all()
    # every draw had an engagement on the 7 days before the positive's day (and none from that day on counts)
    day = pd.to_datetime(pos.timestamp, utc=True).dt.floor("D").to_numpy()[hard.group.to_numpy()]
    eng_day = engaged.assign(day=engaged.timestamp.dt.floor("D"))
    sample = hard.assign(day=day).sample(300, random_state=0)
    for row in sample.itertuples():
        mine = eng_day[(eng_day.item_id == row.item_id) & (eng_day.day < row.day)]
        assert (mine.day >= row.day - pd.Timedelta(days=7)).any()
    # mixed: exactly the ratio per group, hard ones first, seeded
    mixed = mixed_negatives(pos, listings, engaged, ratio=5, popular=0.6, seed=1)
    assert (mixed.groupby("group").size() == 5).all() and not mixed.duplicated().any()
    pd.testing.assert_frame_equal(mixed, mixed_negatives(pos, listings, engaged, ratio=5, popular=0.6, seed=1))

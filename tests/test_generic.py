"""Generic features (generic_ranker_v1): windows recomputed by brute force from the raw events,
the service's contract, and Feast's point-in-time values."""

from __future__ import annotations

import pandas as pd
import pytest

from ranker.features.store import feature_store, in_feature_repo, service_spec

ENGAGEMENT = ("click", "save", "add_to_bag", "purchase")


def _table(world, name: str) -> pd.DataFrame:
    return pd.read_parquet(world.features_dir / f"{name}.parquet")


@pytest.fixture(scope="module")
def events(world) -> pd.DataFrame:
    return pd.read_parquet(world.raw_dir / "events.parquet")


def test_generic_service_contract(world):
    spec = service_spec(feature_store(world), "generic_ranker_v1")
    assert spec.features == (
        "item_interactions_1d",
        "item_interactions_7d",
        "item_interactions_30d",
        "item_interaction_users_30d",
        "item_interaction_trend",
        "item_hours_since_last_interaction",
        "item_shown_30d",
        "item_interaction_rate_30d",
        "user_interactions_7d",
        "user_interactions_30d",
        "user_interaction_items_30d",
        "user_hours_since_last_interaction",
        "user_shown_30d",
        "uc_interactions_30d",
        "uc_interaction_share_30d",
        "listing_age_hours",
    )
    assert set(spec.entity_keys) == {"item_id", "user_id", "category"} and spec.request_fields == ("request_ts",)
    assert spec.defaults["item_interactions_7d"] == 0 and spec.defaults["item_interaction_trend"] == 1


def test_item_windows_use_only_earlier_interactions(world, events):
    eng = events[events.event_type.isin(ENGAGEMENT)]
    imps = events[events.event_type == "impression"]
    stats = _table(world, "generic_item_stats").sample(300, random_state=0)
    assert len(stats) > 0
    for row in stats.itertuples():
        s = row.event_timestamp
        mine = eng[(eng.item_id == row.item_id) & (eng.timestamp < s)]
        in_1d = mine[mine.timestamp >= s - pd.Timedelta(days=1)]
        in_7d = mine[mine.timestamp >= s - pd.Timedelta(days=7)]
        in_30d = mine[mine.timestamp >= s - pd.Timedelta(days=30)]
        assert row.item_interactions_1d == len(in_1d)
        assert row.item_interactions_7d == len(in_7d)
        assert row.item_interactions_30d == len(in_30d)
        assert row.item_interaction_users_30d == in_30d.user_id.nunique()
        shown = imps[
            (imps.item_id == row.item_id) & (imps.timestamp < s) & (imps.timestamp >= s - pd.Timedelta(days=30))
        ]
        assert row.item_shown_30d == len(shown)
        assert row.item_interaction_trend == pytest.approx((len(in_1d) + 1) / (len(in_7d) / 7 + 1), rel=1e-5)
        last = mine.timestamp.max()
        assert row.item_hours_since_last_interaction == pytest.approx((s - last).total_seconds() / 3600, rel=1e-5)


def test_user_category_affinity(world, events):
    listings = pd.read_parquet(world.raw_dir / "listings.parquet")[["item_id", "category"]]
    eng = events[events.event_type.isin(ENGAGEMENT)].merge(listings, on="item_id")
    table = _table(world, "generic_user_category_stats").sample(200, random_state=1)
    for row in table.itertuples():
        s = row.event_timestamp
        mine = eng[(eng.user_id == row.user_id) & (eng.timestamp < s) & (eng.timestamp >= s - pd.Timedelta(days=30))]
        assert row.uc_interactions_30d == (mine.category == row.category).sum()
        share = (mine.category == row.category).mean() if len(mine) else 0.0
        assert row.uc_interaction_share_30d == pytest.approx(share, rel=1e-5)


def test_feast_returns_the_snapshot_before_the_request(world):
    """Point in time through Feast: a request just after a snapshot sees it, just before sees the previous one."""
    stats = _table(world, "generic_user_stats").sort_values(["user_id", "event_timestamp"])
    stats["prev"] = stats.groupby("user_id").user_interactions_30d.shift()
    changed = stats[stats.prev.notna() & (stats.prev != stats.user_interactions_30d)].sample(20, random_state=2)
    store = feature_store(world)
    entity = pd.DataFrame(
        {
            "user_id": list(changed.user_id) * 2,
            "event_timestamp": list(changed.event_timestamp - pd.Timedelta(seconds=1))
            + list(changed.event_timestamp + pd.Timedelta(seconds=1)),
        }
    )
    with in_feature_repo(world.feature_repo):
        out = store.get_historical_features(
            entity_df=entity, features=["generic_user_stats_fv:user_interactions_30d"]
        ).to_df()
    out = out.sort_values(["user_id", "event_timestamp"]).reset_index(drop=True)
    before = out.iloc[0::2].user_interactions_30d.to_numpy()
    after = out.iloc[1::2].user_interactions_30d.to_numpy()
    expected = changed.sort_values("user_id")
    assert (after == expected.user_interactions_30d.to_numpy()).all()
    assert (before == expected.prev.to_numpy()).all()

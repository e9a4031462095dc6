"""Within-day dynamics of the simulator (session intent, listing hype) and the closed loop that
answers served rankings with the simulated marketplace (ranker/data/closed_loop.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ranker.data import simulate as sim
from ranker.data.simulate import SimConfig, simulate, simulate_history

TINY = SimConfig(seed=5, users=150, items=400, new_items_per_day=30, days=3)
FILES = ("raw/events.parquet", "raw/listings.parquet", "raw/users.parquet", "raw/sellers.parquet", "gt/utility.parquet")


def _run(config: SimConfig, root: Path, **kw) -> dict:
    return simulate(config, raw_dir=root / "raw", ground_truth_dir=root / "gt", **kw)


def _bytes(root: Path) -> dict[str, bytes]:
    return {f: (root / f).read_bytes() for f in (*FILES, "raw/manifest.json")}


def test_within_day_is_off_by_default_and_off_leaves_every_file_as_before(tmp_path):
    assert SimConfig().within_day is False
    assert "within_day" not in SimConfig().to_dict()  # the manifest of a default world is unchanged
    _run(TINY, tmp_path / "default")
    _run(dataclasses.replace(TINY, within_day=False), tmp_path / "off")
    simulate_history(TINY, raw_dir=tmp_path / "history" / "raw", ground_truth_dir=tmp_path / "history" / "gt")
    assert _bytes(tmp_path / "default") == _bytes(tmp_path / "off") == _bytes(tmp_path / "history")


def test_within_day_is_deterministic_for_a_seed_and_changes_the_world(tmp_path):
    on = dataclasses.replace(TINY, within_day=True)
    _run(on, tmp_path / "a")
    _run(on, tmp_path / "b")
    _run(TINY, tmp_path / "off")
    assert _bytes(tmp_path / "a") == _bytes(tmp_path / "b")
    assert (tmp_path / "a" / FILES[0]).read_bytes() != (tmp_path / "off" / FILES[0]).read_bytes()
    manifest = json.loads((tmp_path / "a" / "raw" / "manifest.json").read_text())
    assert manifest["config"]["within_day"] is True


def test_extra_days_only_add_listings_that_go_live_after_the_log(tmp_path):
    on = dataclasses.replace(TINY, within_day=True)
    _, world = simulate_history(on, raw_dir=tmp_path / "raw", ground_truth_dir=tmp_path / "gt", extra_days=2)
    listings = pd.read_parquet(tmp_path / "raw" / "listings.parquet")
    end = pd.Timestamp(on.start, tz="UTC") + pd.Timedelta(days=on.days)
    assert (listings.created_at < end).all()
    assert len(world.created_ms) > len(listings)  # the next days' listings are in the world, not the table
    assert (world.created_ms[len(listings) :] >= end.value // 1_000_000).all()


@pytest.fixture(scope="module")
def dynamic_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("within_day")
    config = SimConfig(seed=3, users=800, items=1_500, new_items_per_day=200, days=4, within_day=True)
    summary, world = simulate_history(config, raw_dir=root / "raw", ground_truth_dir=root / "gt")
    return config, world, root


def test_session_intent_raises_utility_only_within_its_session(dynamic_world):
    _, world, _ = dynamic_world
    rng = np.random.default_rng(0)
    item = rng.integers(0, len(world.created_ms), size=2_000)
    old = np.full(len(item), 30.0)  # days: the hype has long decayed
    cat = world.category[item].astype(np.int64)
    brand = world.brand[item].astype(np.int64)
    none = np.full(len(item), -1)
    base = world.within_day_term(item=item, age_days=old, intent_cat=none, intent_brand=none)
    assert np.abs(base).max() < 1e-6
    intent = np.full(len(item), int(np.bincount(cat).argmax()))  # one session's intent category
    in_session = world.within_day_term(item=item, age_days=old, intent_cat=intent, intent_brand=none) - base
    matches = cat == intent
    assert matches.any() and (~matches).any()
    np.testing.assert_allclose(in_session[matches], sim.W_SESSION_CATEGORY, atol=1e-6)
    np.testing.assert_allclose(in_session[~matches], 0.0, atol=1e-6)
    with_brand = world.within_day_term(item=item, age_days=old, intent_cat=none, intent_brand=brand) - base
    np.testing.assert_allclose(with_brand, sim.W_SESSION_BRAND, atol=1e-6)

    # Sessions: requests of one session share its intent and fall within its span; a user's sessions differ.
    user = np.repeat(np.arange(200, dtype=np.int64), 6)
    t, intent_cat, intent_brand = world._sessions(rng=np.random.default_rng(1), user=user, day_start=0)
    frame = pd.DataFrame({"user": user, "t": t, "cat": intent_cat, "brand": intent_brand})
    frame["session"] = (frame.user != frame.user.shift()) | (frame.cat != frame.cat.shift())
    assert (frame.cat >= 0).all() and (frame.t < sim.DAY_MS).all()
    per_user = frame.groupby("user").cat.nunique()
    assert (per_user > 1).mean() > 0.5, "a user's sessions should have different intents"


def test_hype_shows_in_a_new_listings_early_click_through_rate(dynamic_world):
    config, world, root = dynamic_world
    events = pd.read_parquet(root / "raw" / "events.parquet")
    listings = pd.read_parquet(root / "raw" / "listings.parquet")
    created = listings.set_index("item_id").created_at
    early = events[(events.timestamp - events.item_id.map(created)) < pd.Timedelta(hours=24)]
    counts = early.groupby(["item_id", "event_type"]).size().unstack(fill_value=0)
    number = counts.index.str[1:].astype(int) - 1
    hype = pd.Series(world.hype[number], index=counts.index)
    hot, cold = counts[hype > 0.8], counts[hype < -0.8]
    ctr_hot = hot["click"].sum() / hot["impression"].sum()
    ctr_cold = cold["click"].sum() / cold["impression"].sum()
    assert hot["impression"].sum() > 500 and cold["impression"].sum() > 500
    assert ctr_hot > 1.5 * ctr_cold, (ctr_hot, ctr_cold)
    # hot listings sell sooner: more of them sell within a day of going live
    sold_hours = (listings.sold_at - listings.created_at).dt.total_seconds() / 3600
    by_hype = pd.Series(world.hype[: len(listings)], index=listings.index)
    young = listings.created_at >= pd.Timestamp(config.start, tz="UTC")
    fast = sold_hours < 24
    assert fast[young & (by_hype > 0.8)].mean() > fast[young & (by_hype < -0.8)].mean()


# --- The closed loop -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def loop_home(tmp_path_factory):
    import warnings

    from ranker.monitoring import closed_loop
    from tests.conftest import make_home

    warnings.filterwarnings("ignore", category=RuntimeWarning)
    settings = make_home(tmp_path_factory.mktemp("loop"))
    config = SimConfig(
        seed=11, users=250, items=700, new_items_per_day=70, days=6, requests_per_user_day=2.0, within_day=True
    )
    world = closed_loop.prepare(settings, config, hours=14)
    models = closed_loop.train(settings, "v2", surfaces=("recs",))
    the_plan = closed_loop.plan(world, hours=14, surfaces=("recs",))
    return settings, world, models, the_plan


def test_the_plan_is_the_same_for_every_arm_and_leaves_the_world_as_it_was(loop_home):
    from ranker.monitoring import closed_loop

    settings, world, _, the_plan = loop_home
    before = world.sold_ms.copy(), world.request_base
    again = closed_loop.plan(world, hours=14, surfaces=("recs",))
    np.testing.assert_array_equal(again.item, the_plan.item)
    np.testing.assert_array_equal(again.expected, the_plan.expected)
    np.testing.assert_array_equal(world.sold_ms, before[0])
    assert world.request_base == before[1]
    assert the_plan.n_requests > 100 and not the_plan.search.any()
    assert (the_plan.t >= the_plan.start_ms).all() and (np.diff(the_plan.t) >= 0).all()


def test_a_loop_with_the_stream_never_shows_a_listing_after_its_sale(loop_home):
    from ranker.monitoring import closed_loop

    settings, world, models, the_plan = loop_home
    sold_before = world.sold_ms.copy()
    result = closed_loop.run_arm(settings, world, the_plan, models, name="v2", stream=True)
    summary = closed_loop.summarise(result)
    assert summary["requests"] == the_plan.n_requests
    assert summary["impressions"] > 1000 and summary["clicks"] > 0
    assert summary["purchases"] > 0
    assert result.stream_counts["written"] > 0 and result.stream_counts["rejected"] == 0
    # sold during the loop, still a candidate of later requests (the index is a batch snapshot), and dropped
    assert summary["removed_sold"] > 0
    assert summary["sold_impressions"] == 0 and summary["sold_share"] == 0.0
    assert 0.0 < summary["ndcg@10"] <= 1.0
    np.testing.assert_array_equal(world.sold_ms, sold_before)  # the arm sold listings in its own copy of the world


def test_an_exploring_arm_shows_young_listings_in_the_reserved_slots(loop_home):
    """With exploration and listings published as they go live: the reserved slots are explored,
    listings created during the loop are known and shown, and the young-listing NDCG is reported."""
    from ranker.monitoring import closed_loop
    from ranker.serving.exploration import ExplorationPolicy

    settings, world, models, the_plan = loop_home
    policy = ExplorationPolicy(slots=(4, 8), young_hours=48, seed=1)
    result = closed_loop.run_arm(
        settings, world, the_plan, models, name="explore", stream="sold", exploration=policy, publish_listings=True
    )
    frame = result.requests
    assert frame.explored.sum() > 0.5 * len(frame)  # most requests have young candidates for both slots
    assert frame.explored.max() == 2
    summary = closed_loop.summarise(result)
    assert 0.0 < summary[closed_loop.YOUNG_NDCG] <= 1.0
    born = result.listings[result.listings.created_ms >= the_plan.start_ms]
    assert (born.first_impression_ms < np.iinfo(np.int64).max).sum() > 0, "new listings reach the lists"

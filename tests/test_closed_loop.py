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

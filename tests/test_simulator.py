"""Invariants of the marketplace simulator on a small world, plus its CLI."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from ranker.config import Settings
from ranker.data import schema
from ranker.data.simulate import CATEGORIES, NOISE_SD, SimConfig, SimConfigError, simulate

# Small enough to run in about a second, big enough for the statistical checks below.
SMALL = SimConfig(seed=11, users=400, items=1_500, new_items_per_day=120, days=4)
TINY = SimConfig(seed=5, users=120, items=400, new_items_per_day=30, days=2)
KEY = ["request_id", "item_id"]


def _run(config: SimConfig, home: Path) -> Settings:
    settings = Settings(home=home)
    simulate(config, raw_dir=settings.raw_dir, ground_truth_dir=settings.ground_truth_dir)
    return settings


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    settings = _run(SMALL, tmp_path_factory.mktemp("sim"))
    tables = {name: schema.read_table(settings.raw_dir, table) for name, table in schema.TABLES.items()}
    tables["truth"] = pd.read_parquet(settings.ground_truth_dir / "utility.parquet")
    tables["manifest"] = json.loads((settings.raw_dir / "manifest.json").read_text())
    events = tables["events"]
    tables["impressions"] = events[events.event_type == "impression"]
    clicked = events.loc[events.event_type == "click", KEY].assign(clicked=1)
    tables["labelled"] = (
        tables["impressions"]
        .merge(clicked, on=KEY, how="left")
        .fillna({"clicked": 0})
        .merge(tables["truth"], on=[*KEY, "user_id"], validate="one_to_one")
    )
    return tables


def _two_proportion_z(hits_a: int, n_a: int, hits_b: int, n_b: int) -> float:
    p = (hits_a + hits_b) / (n_a + n_b)
    return (hits_a / n_a - hits_b / n_b) / math.sqrt(p * (1 - p) * (1 / n_a + 1 / n_b))


def test_world_is_big_enough_for_the_statistical_checks(world):
    assert len(world["impressions"]) > 10_000
    assert world["labelled"].clicked.sum() > 300
    assert (world["events"].event_type == "purchase").sum() > 5


def test_every_table_passes_its_schema(world):
    for name, table in schema.TABLES.items():
        # read_table already normalised; normalising again must be a no-op.
        pd.testing.assert_frame_equal(schema.normalise(table, world[name]), world[name])
    assert list(world["truth"].columns) == ["request_id", "item_id", "user_id", "true_utility", "expected_utility"]
    assert str(world["truth"].true_utility.dtype) == "float64"
    noise = world["truth"].true_utility - world["truth"].expected_utility
    # the per-impression noise is the only difference: centred, with the simulator's spread
    assert abs(noise.mean()) < 0.05 and noise.std() == pytest.approx(NOISE_SD, rel=0.1)


def test_no_impression_outside_the_listing_lifetime(world):
    shown = world["impressions"].merge(world["listings"], on="item_id", validate="many_to_one")
    assert (shown.timestamp >= shown.created_at).all(), "a listing was shown before it went live"
    sold = shown[shown.sold_at.notna()]
    assert (sold.timestamp < sold.sold_at).all(), "a listing was shown at or after its sale"


def test_one_impression_per_request_and_item(world):
    imps = world["impressions"]
    assert not imps.duplicated(KEY).any()
    assert imps.position.between(1, SMALL.slate_size).all()
    assert not imps.duplicated(["request_id", "position"]).any()
    per_request = imps.groupby("request_id").agg(
        users=("user_id", "nunique"), times=("timestamp", "nunique"), surfaces=("surface", "nunique")
    )
    assert (per_request == 1).all().all(), "a request mixes users, times or surfaces"


def test_engagement_follows_an_impression_of_the_same_request_and_item(world):
    events = world["events"]
    engaged = events[events.event_type != "impression"]
    cols = [*KEY, "timestamp", "user_id", "position", "surface", "query"]
    joined = engaged.merge(
        world["impressions"][cols], on=KEY, how="left", suffixes=("", "_shown"), validate="many_to_one"
    )
    assert joined.timestamp_shown.notna().all(), "engagement without an impression"
    assert (joined.timestamp > joined.timestamp_shown).all(), "engagement not after its impression"
    for col in ("user_id", "position", "surface"):
        assert (joined[col] == joined[f"{col}_shown"]).all(), col
    assert (joined["query"].fillna("") == joined["query_shown"].fillna("")).all()
    assert not engaged.duplicated([*KEY, "event_type"]).any()


def test_deeper_engagement_and_purchases_only_after_a_click_by_the_same_user(world):
    events = world["events"]
    clicks = events[events.event_type == "click"][[*KEY, "user_id", "timestamp"]]
    for kind in ("save", "add_to_bag", "purchase"):
        deeper = events[events.event_type == kind]
        joined = deeper.merge(clicks, on=KEY, how="left", suffixes=("", "_click"))
        assert joined.timestamp_click.notna().all(), f"{kind} without a click"
        assert (joined.user_id == joined.user_id_click).all()
        assert (joined.timestamp > joined.timestamp_click).all()


def test_each_listing_sells_once_at_its_purchase_time(world):
    purchases = world["events"][world["events"].event_type == "purchase"]
    assert not purchases.item_id.duplicated().any(), "a listing was bought twice"
    listings = world["listings"].set_index("item_id")
    sold = listings[listings.sold_at.notna()]
    assert set(sold.index) == set(purchases.item_id)
    bought_at = purchases.set_index("item_id").timestamp
    assert (sold.sold_at == bought_at.reindex(sold.index)).all()


def test_click_rate_falls_with_position(world):
    labelled = world["labelled"]
    top = labelled[labelled.position <= 3].clicked
    deep = labelled[labelled.position >= 10].clicked
    assert top.mean() > 2 * deep.mean()
    # z > 6 cannot happen by chance if positions did not matter.
    assert _two_proportion_z(top.sum(), len(top), deep.sum(), len(deep)) > 6


def test_higher_true_utility_gets_more_clicks(world):
    labelled = world["labelled"]
    quartile = pd.qcut(labelled.true_utility, 4, labels=False)
    ctr = labelled.groupby(quartile).clicked.mean()
    assert ctr.is_monotonic_increasing
    high, low = labelled[quartile == 3].clicked, labelled[quartile == 0].clicked
    assert _two_proportion_z(high.sum(), len(high), low.sum(), len(low)) > 6


def test_ground_truth_has_one_row_per_impression_and_stays_out_of_the_raw_tables(world):
    truth, imps = world["truth"], world["impressions"]
    assert len(truth) == len(imps)
    assert not truth.duplicated(KEY).any()
    assert set(map(tuple, truth[KEY].to_numpy())) == set(map(tuple, imps[KEY].to_numpy()))
    for name in schema.TABLES:
        assert not [c for c in world[name].columns if "utility" in c], name


def test_catalogue_ids_titles_and_prices_look_like_the_marketplace(world):
    listings, users, events = world["listings"], world["users"], world["events"]
    assert listings.item_id.str.fullmatch(r"i\d{7}").all()
    assert listings.seller_id.str.fullmatch(r"s\d{5}").all()
    assert users.user_id.str.fullmatch(r"u\d{6}").all()
    assert events.request_id.str.fullmatch(r"r\d{9}").all()
    assert events.event_id.str.fullmatch(r"e\d{10}").all() and events.event_id.is_unique
    assert set(listings.category) <= set(CATEGORIES)
    assert (listings.original_price > listings.price).all() and (listings.price > 0).all()
    titles = listings.title.str.split()
    assert all(cat in words for cat, words in zip(listings.category, titles, strict=False))
    assert (listings.title == listings.title.str.lower()).all()
    one_size = listings.category.isin(["bags", "accessories"])
    assert (listings.loc[one_size, "size"] == "one size").all()
    assert listings.loc[listings.category.isin(["shoes", "sneakers"]), "size"].astype(int).between(36, 45).all()
    assert set(listings.condition) <= set(schema.CONDITION_SCORE)
    # Search queries are made of title words; recs have no query.
    imps = world["impressions"]
    assert imps.loc[imps.surface == "recs", "query"].isna().all()
    vocabulary = {w for words in titles for w in words}
    queries = imps.loc[imps.surface == "search", "query"]
    assert queries.notna().all()
    assert {w for q in queries.unique() for w in q.split()} <= vocabulary
    # Events are written in time order, ids following it.
    assert events.timestamp.is_monotonic_increasing


def test_manifest_matches_the_files(world):
    manifest = world["manifest"]
    assert manifest["seed"] == SMALL.seed
    assert manifest["config"]["users"] == SMALL.users
    for name in schema.TABLES:
        assert manifest["rows"][name] == len(world[name])
    assert manifest["impressions"] == len(world["impressions"]) == manifest["rows"]["ground_truth"]
    assert "generated_at" not in json.dumps(manifest)


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
    def files(settings: Settings) -> dict[str, bytes]:
        paths = sorted(settings.raw_dir.iterdir()) + [settings.ground_truth_dir / "utility.parquet"]
        return {p.name: p.read_bytes() for p in paths}

    first = files(_run(TINY, tmp_path / "a"))
    again = files(_run(TINY, tmp_path / "b"))
    assert set(first) == {
        "events.parquet",
        "listings.parquet",
        "users.parquet",
        "sellers.parquet",
        "manifest.json",
        "utility.parquet",
    }
    assert first == again
    other = files(_run(SimConfig(**{**TINY.__dict__, "seed": TINY.seed + 1}), tmp_path / "c"))
    for name in ("events.parquet", "listings.parquet", "utility.parquet"):
        assert other[name] != first[name], name


def test_scale_multiplies_users_and_listings():
    config = SimConfig(users=100, items=1_000, new_items_per_day=50, scale=2.5)
    assert (config.n_users, config.n_items, config.n_new_items_per_day) == (250, 2_500, 125)


@pytest.mark.parametrize("options", [{"users": 0}, {"days": -1}, {"items": 0}, {"scale": 0.0}])
def test_config_rejects_bad_sizes(options):
    with pytest.raises(SimConfigError):
        SimConfig(**options)


@pytest.fixture
def cli():
    from pipelines.cli import _register, cli

    if "data" not in cli.commands:
        _register()
    return cli


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--users", "0"], "--users"),
        (["--days", "-1"], "--days"),
        (["--start", "notadate"], "--start"),
        (["--scale", "0"], "--scale"),
    ],
)
def test_cli_rejects_bad_input_with_a_one_line_reason(cli, tmp_path, args, option):
    result = CliRunner().invoke(cli, ["data", "simulate", *args], env={"RANKER_HOME": str(tmp_path)})
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    reasons = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(reasons) == 1 and option in reasons[0], result.output
    assert not (tmp_path / "data").exists()


def test_cli_simulates_into_ranker_home(cli, tmp_path):
    args = [
        "data",
        "simulate",
        "--seed",
        "3",
        "--users",
        "60",
        "--items",
        "200",
        "--days",
        "1",
        "--start",
        "2026-03-02",
        "--new-items-per-day",
        "10",
    ]
    result = CliRunner().invoke(cli, args, env={"RANKER_HOME": str(tmp_path)})
    assert result.exit_code == 0, result.output
    assert re.search(r"[\d,]+ impressions, [\d,]+ clicks \(CTR [\d.]+%\)", result.output)
    raw = tmp_path / "data" / "raw"
    assert {p.name for p in raw.iterdir()} == {
        "events.parquet",
        "listings.parquet",
        "users.parquet",
        "sellers.parquet",
        "manifest.json",
    }
    assert (tmp_path / "data" / "ground_truth" / "utility.parquet").exists()
    events = schema.read_table(raw, schema.EVENTS)
    assert events.timestamp.min() >= pd.Timestamp("2026-03-02", tz="UTC")
    assert json.loads((raw / "manifest.json").read_text())["config"]["start"] == "2026-03-02"


def test_scarce_stock_sells_out_without_double_sales_or_ghost_impressions(tmp_path, monkeypatch):
    # Eager buyers chasing few listings, so purchases of the same listing collide within an
    # hourly step and across steps (a sale decided in one step can fall in the next).
    import ranker.data.simulate as simulator

    monkeypatch.setattr(simulator, "CLICK_THRESHOLD", -4.0)
    config = SimConfig(seed=2, users=300, items=40, new_items_per_day=10, days=4, requests_per_user_day=2.0)
    settings = _run(config, tmp_path)
    events = schema.read_table(settings.raw_dir, schema.EVENTS)
    listings = schema.read_table(settings.raw_dir, schema.LISTINGS)
    purchases = events[events.event_type == "purchase"]
    assert len(purchases) > 0.5 * len(listings), "the scenario should sell most of the stock"
    assert not purchases.item_id.duplicated().any()
    sold = listings.dropna(subset=["sold_at"]).set_index("item_id").sold_at
    assert (purchases.set_index("item_id").timestamp.reindex(sold.index) == sold).all()
    shown = events[events.event_type == "impression"].merge(listings, on="item_id")
    assert (shown.timestamp >= shown.created_at).all()
    assert (shown.sold_at.isna() | (shown.timestamp < shown.sold_at)).all()

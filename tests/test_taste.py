"""Taste that generalises to unique listings (the v3 and v4 services): the "monotone" declarations
reach LightGBM, and a user who only engages with one brand gets an unseen listing of that brand ranked
above an otherwise identical listing; on v4, a user who only clicks one price band gets a listing in
that band ranked above where the same user's clicks were all elsewhere."""

from __future__ import annotations

import json

import lightgbm as lgb
import numpy as np
import pytest

from ranker.features.store import feature_store, service_spec
from ranker.training.dataset import DatasetOptions, build_dataset, load_dataset
from ranker.training.train import TrainOptions, train_model

BRAND_FEATURES = (
    "ub_clicks_30d",
    "ub_saves_30d",
    "ub_bag_or_buy_30d",
    "ub_searches_30d",
    "ub_click_share_30d",
    "ub_search_share_30d",
    "ub_ctr_lift_30d",
)


@pytest.fixture(scope="module", params=["search_ranker_v3", "search_ranker_v4"])
def taste_model(world, tmp_path_factory, request):
    build_dataset(world, DatasetOptions(surface="search", feature_service=request.param, chunk_rows=50_000))
    out = train_model(world, TrainOptions(surface="search"), out_root=tmp_path_factory.mktemp("taste"))
    return world, out


def test_monotone_tags_become_constraints(world, taste_model):
    _, model_dir = taste_model
    service = json.loads((model_dir / "card.json").read_text())["feature_service"]
    spec = service_spec(feature_store(world), service)
    increasing = set(BRAND_FEATURES) | (
        {"uct_coec_lift_30d", "uct_log_share_30d"} if service == "search_ranker_v4" else set()
    )
    assert {name for name, d in spec.monotone.items() if d == 1} == increasing
    assert "ub_impressions_30d" not in spec.monotone, "exposure without clicks is not a preference"
    card = json.loads((model_dir / "card.json").read_text())
    constraints = dict(zip(card["features"], card["params"]["monotone_constraints"], strict=True))
    assert all(constraints[f] == 1 for f in increasing)
    assert sum(constraints.values()) == len(increasing)


def test_a_one_brand_user_gets_that_brand_ranked_above_an_identical_listing(taste_model):
    settings, model_dir = taste_model
    card = json.loads((model_dir / "card.json").read_text())
    booster = lgb.Booster(model_file=str(model_dir / "model.txt"))
    df, manifest = load_dataset(settings, "search")
    features = manifest["features"]
    # real candidate rows of the user's requests with no brand history for the candidate
    rows = df[df.ub_clicks_30d == 0].sample(200, random_state=0)[features].to_numpy(np.float32)
    fan = rows.copy()
    col = {f: features.index(f) for f in BRAND_FEATURES}
    # the user engages only with this brand: all of their clicks, saves and brand searches (exposure,
    # ub_impressions_30d, is not a preference and stays as it was)
    for name, value in {
        "ub_clicks_30d": 6.0,
        "ub_saves_30d": 2.0,
        "ub_bag_or_buy_30d": 1.0,
        "ub_searches_30d": 3.0,
        "ub_click_share_30d": 1.0,
        "ub_search_share_30d": 1.0,
        "ub_ctr_lift_30d": 2.5,
    }.items():
        fan[:, col[name]] = value
    plain, loved = booster.predict(rows), booster.predict(fan)
    assert (loved >= plain - 1e-12).all(), "monotone: brand engagement never lowers a listing"
    # ranked above where the trees split on brand taste (a quarter of these rows on this small world,
    # where few users have brand history), never below
    assert (loved > plain).mean() >= 0.1, f"the brand lifts only {np.mean(loved > plain):.0%} of listings"
    assert (loved - plain).mean() > 0
    assert card["feature_service"] in ("search_ranker_v3", "search_ranker_v4")


def test_a_one_band_user_gets_a_listing_in_that_band_ranked_higher(taste_model):
    settings, model_dir = taste_model
    card = json.loads((model_dir / "card.json").read_text())
    if card["feature_service"] != "search_ranker_v4":
        pytest.skip("price-band taste is a v4 feature")
    booster = lgb.Booster(model_file=str(model_dir / "model.txt"))
    df, manifest = load_dataset(settings, "search")
    features = manifest["features"]
    rows = df[df.price_band_click_share.notna()].sample(400, random_state=0)[features].to_numpy(np.float32)
    col = {f: features.index(f) for f in ("price_band_clicks", "price_band_click_share", "price_band_ctr_lift")}
    loved, elsewhere = rows.copy(), rows.copy()
    # the same user, same listing: every click of the last 30 days in this listing's band, or none of them
    for name, (inside, outside) in {
        "price_band_clicks": (8.0, 0.0),
        "price_band_click_share": (1.0, 0.0),
        "price_band_ctr_lift": (3.0, 0.5),
    }.items():
        loved[:, col[name]], elsewhere[:, col[name]] = inside, outside
    up, down = booster.predict(loved), booster.predict(elsewhere)
    assert (up - down).mean() > 0, "the user's price level lifts listings in it"
    assert (up > down).mean() > (up < down).mean()

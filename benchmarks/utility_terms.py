"""Which hidden terms bound the oracle fraction on a simulated world (issue 17): the test requests of
each given model ranked by the expected utility minus one hidden term (the listing's quality, the
user's brand affinity, category taste, price fit, size fit), and the share of the random -> oracle
gap each of those rankers closes. "expected - quality" is the most a ranker that sees every attribute
and taste but not the listing's own quality can reach.

    RANKER_HOME=$PWD .venv/bin/python benchmarks/utility_terms.py artifacts/models/search_ranker/<version> ...

It rebuilds the simulator's hidden parameters from data/raw/manifest.json (the simulator's own
internals: users and listings are drawn from the seed before any traffic). Evaluation, not timing.
"""

from __future__ import annotations

import json
import sys
import warnings
from datetime import date

import numpy as np


def main() -> None:
    warnings.filterwarnings("ignore")
    from ranker.config import Settings
    from ranker.data import simulate as sim
    from ranker.training import metrics
    from ranker.training.evaluate import holdout_frame, load_model, score_rankers

    settings = Settings.from_env()
    cfg = json.loads((settings.raw_dir / "manifest.json").read_text())["config"]
    cfg["start"] = date.fromisoformat(cfg["start"])
    config = sim.SimConfig(**cfg)
    catalogue_seed, users_seed, _ = np.random.SeedSequence(config.seed).spawn(3)
    world = sim._World(config=config, start_ms=sim._epoch_ms(config.start), catalogue_days=config.days)
    world.build_users(rng=sim._rng(users_seed))
    world.build_listings(rng=sim._rng(catalogue_seed))
    for folder in sys.argv[1:]:
        model = load_model(folder)
        frame, _ = holdout_frame(settings, model)
        scores = score_rankers(settings, model, frame)
        item = frame.item_id.str[1:].astype(int).to_numpy() - 1  # ids are 1-based
        user = frame.user_id.str[1:].astype(int).to_numpy() - 1
        exp = scores["expected_oracle"]
        cat = world.category[item]
        brand = sim.W_BRAND * world.brand_affinity[user, world.brand[item]]
        budget = world.budget[user] * world.base_price[cat] * 1.15
        price = sim.W_PRICE_FIT * -np.abs(np.log(world.price[item] / budget))
        clothes, footwear = world.is_clothes[cat], world.is_footwear[cat]
        gap = np.abs(world.size[item] - np.where(clothes, world.clothing_size[user], world.shoe_size[user]))
        size = np.where(clothes | footwear, np.select([gap == 0, gap == 1], [0.4, -0.2], -1.0), 0.0)
        variants = {
            "expected - quality": exp - world.quality[item],
            "expected - brand": exp - brand,
            "expected - taste": exp - world.taste_term[user, cat],
            "expected - price fit": exp - price,
            "expected - size fit": exp - size,
            "expected - quality - brand - price - size": exp - world.quality[item] - brand - price - size,
        }
        groups = metrics.encode_groups(frame.request_id.to_numpy())
        true = {
            n: float(metrics.graded_ndcg_against_utility(groups, scores["oracle"], s, k=10).mean())
            for n, s in {**scores, **variants}.items()
        }
        fractions = {
            n: round(metrics.oracle_fraction(true, ranker=n), 3) for n in ["model", "expected_oracle", *variants]
        }
        print(model.card["feature_service"], fractions)


if __name__ == "__main__":
    main()

"""Sampled training groups for implicit feedback: time-correct negatives (never a listing before
its creation or after its sale), the ratio, the seed, and the training set / card built on them."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ranker.data import schema
from ranker.training.dataset import DatasetOptions, build_dataset
from ranker.training.negatives import SamplingError, positives, sample_negatives, sampled_groups


@pytest.fixture(scope="module")
def recs_positives(world):
    pos = positives(world, DatasetOptions(surface="recs", negatives=5))
    listings = schema.read_table(world.raw_dir, schema.LISTINGS)
    return pos, listings


def test_negatives_are_available_at_the_positive_time(recs_positives):
    pos, listings = recs_positives
    assert len(pos) > 500
    neg = sample_negatives(pos, listings, ratio=5, seed=1)
    lst = listings.set_index("item_id")
    ts = pos.timestamp.to_numpy()[neg.group.to_numpy()]
    created = lst.created_at.reindex(neg.item_id).to_numpy()
    sold = lst.sold_at.reindex(neg.item_id)
    assert (created < ts).all(), "a negative listed after the moment it was sampled for"
    assert (sold.isna().to_numpy() | (sold.to_numpy() > ts)).all(), "a negative already sold"
    assert (neg.item_id.to_numpy() != pos.item_id.to_numpy()[neg.group.to_numpy()]).all()
    assert not neg.duplicated(["group", "item_id"]).any()
    per_group = neg.groupby("group").size().reindex(range(len(pos)), fill_value=0)
    assert (per_group == 5).all(), "the simulated catalogue always has more than 5 live listings"
    # The simulated world sells listings, so the constraint is binding: some listings were sold at
    # some positive's time and would otherwise have been drawn.
    sold_any = listings.sold_at.notna() & (listings.sold_at < pos.timestamp.max())
    assert sold_any.sum() > 0


def test_sampling_is_seeded_and_uses_the_whole_live_catalogue(recs_positives):
    pos, listings = recs_positives
    a = sample_negatives(pos, listings, ratio=3, seed=7)
    b = sample_negatives(pos, listings, ratio=3, seed=7)
    c = sample_negatives(pos, listings, ratio=3, seed=8)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)
    # uniform over the live listings: many distinct listings are drawn, none dominates
    counts = a.item_id.value_counts()
    assert len(counts) > 0.5 * len(listings) and counts.max() < 0.02 * len(a)


def test_small_catalogue_takes_only_what_was_live():
    t = pd.Timestamp("2026-01-10T12:00", tz="UTC")
    listings = pd.DataFrame(
        {
            "item_id": ["pos", "live1", "live2", "future", "sold", "sold_later"],
            "created_at": pd.to_datetime(
                ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-11", "2026-01-01", "2026-01-01"], utc=True
            ),
            "sold_at": pd.to_datetime([None, None, None, None, "2026-01-10T12:00:00", "2026-01-10T12:00:01"], utc=True),
        }
    )
    pos = pd.DataFrame({"timestamp": [t] * 50, "item_id": ["pos"] * 50})
    neg = sample_negatives(pos, listings, ratio=10, seed=0)
    assert set(neg.item_id) == {"live1", "live2", "sold_later"}  # sold exactly at t is already gone
    assert (neg.groupby("group").size() == 3).all()
    early = pd.DataFrame({"timestamp": [pd.Timestamp("2026-01-01T00:00", tz="UTC")], "item_id": ["pos"]})
    assert sample_negatives(early, listings, ratio=4, seed=0).empty, "nothing was live yet"
    with pytest.raises(SamplingError, match="--negatives must be >= 1"):
        sample_negatives(pos, listings, ratio=0, seed=0)


def test_sampled_groups_have_the_training_layout(world, recs_positives):
    pos, _ = recs_positives
    table = sampled_groups(world, DatasetOptions(surface="recs", negatives=4, negatives_seed=3)).to_pandas()
    assert list(table.columns) == [
        "request_id",
        "event_timestamp",
        "user_id",
        "item_id",
        "position",
        "query",
        "seller_id",
        "category",
        "brand",
        "label",
    ]
    sizes = table.groupby("request_id", sort=False).size()
    assert len(sizes) == len(pos) and (sizes == 5).all()
    assert (table.groupby("request_id").label.apply(lambda s: int((s > 0).sum())) == 1).all()
    assert (table.position == 0).all()
    change = (table.request_id != table.request_id.shift()).sum()
    assert change == table.request_id.nunique(), "rows of a group are contiguous"
    assert table.event_timestamp.is_monotonic_increasing
    # the positive sits anywhere in its group (positive-first rows let a constant model score NDCG 1 on
    # ties): over many groups of 5 each slot holds the positive about a fifth of the time
    slot = table.groupby("request_id", sort=False).cumcount()
    share = slot[table.label.to_numpy() > 0].value_counts(normalize=True).reindex(range(5), fill_value=0.0)
    assert share.max() < 0.4 and share.min() > 0.05, share.to_dict()
    again = sampled_groups(world, DatasetOptions(surface="recs", negatives=4, negatives_seed=3)).to_pandas()
    pd.testing.assert_frame_equal(table, again)


def test_training_set_and_card_say_the_groups_are_sampled(world, tmp_path):
    from ranker.training.train import TrainOptions, train_model

    manifest = build_dataset(
        world,
        DatasetOptions(
            surface="recs", feature_service="generic_ranker_v1", negatives=4, negatives_seed=0, chunk_rows=20_000
        ),
    )
    assert manifest["sampled_groups"]["sampled"] and manifest["sampled_groups"]["negatives_per_positive"] == 4
    assert manifest["rows"] == 5 * manifest["groups"]
    again = build_dataset(
        world,
        DatasetOptions(
            surface="recs", feature_service="generic_ranker_v1", negatives=4, negatives_seed=0, chunk_rows=7_000
        ),
    )
    assert again["fingerprint"] == manifest["fingerprint"], "seeded sampling and chunking give the same set"
    model = train_model(world, TrainOptions(surface="recs", num_boost_round=60), out_root=tmp_path)
    card = json.loads((model / "card.json").read_text())
    assert card["feature_service"] == "generic_ranker_v1"
    assert card["dataset"]["sampled_groups"]["negatives_per_positive"] == 4
    # impression-based sets say nothing about sampling
    assert "sampled_groups" not in build_dataset(world, DatasetOptions(surface="recs", chunk_rows=50_000))
    assert np.isfinite(card["valid_ndcg@10"])

"""Batch scoring: top-k lists from the production model through the scorer's feature path."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ranker.serving.batch import BatchOptions, BatchScoreError, batch_score, read_online_topk


@pytest.fixture(scope="module")
def production(world, tmp_path_factory):
    from ranker.features.materialize import materialize
    from ranker.registry import Registry
    from ranker.training.dataset import DatasetOptions, build_dataset
    from ranker.training.train import TrainOptions, train_model

    settings = world.with_(registry_uri=f"file://{tmp_path_factory.mktemp('batch_registry')}")
    materialize(settings, full=True)
    build_dataset(settings, DatasetOptions(surface="recs", chunk_rows=50_000))
    model_dir = train_model(settings, TrainOptions(surface="recs"), out_root=tmp_path_factory.mktemp("batch_models"))
    registry = Registry.from_settings(settings)
    published = registry.publish(model_dir)
    registry.promote(published.name, published.version, stage="production", gate=None, force=True, reason="test")
    return settings


def test_topk_lists_match_the_model_on_feast_features(production, tmp_path):
    from ranker.features.store import feature_store, service_spec
    from ranker.registry import Registry
    from ranker.serving.batch import candidate_items
    from ranker.features.reference import feast_reference

    users = pd.read_parquet(production.raw_dir / "users.parquet").user_id.astype(str).tolist()[:5] + ["u_unknown"]
    users_file = tmp_path / "users.txt"
    users_file.write_text("\n".join(users) + "\n")
    summary = batch_score(
        production, BatchOptions(surface="recs", k=10, candidates=60, users_file=users_file, to_online=True)
    )
    lists = pd.read_parquet(summary["path"])
    assert summary["users"] == 6 and len(lists) == 60
    listings = pd.read_parquet(production.raw_dir / "listings.parquet")
    sold = set(listings.item_id[listings.sold_at.notna()])
    assert not sold & set(lists.item_id)
    for _user, group in lists.groupby("user_id"):
        assert list(group["rank"]) == list(range(1, 11))
        assert (np.diff(group.score.to_numpy()) <= 0).all()

    # The same scores as the model on Feast SDK features for the same user and candidates.
    model = Registry.from_settings(production).fetch("recs_ranker", stage="production")
    store = feature_store(production)
    spec = service_spec(store, model.card["feature_service"])
    items = candidate_items(production, 60)
    generated = lists.generated_at.iloc[0]
    ref = feast_reference(
        store, spec, user_id=users[0], item_ids=items, query=None, request_ts=int(generated.timestamp())
    )
    scores = model.booster().predict(ref.matrix)
    expected = [items[i] for i in np.argsort(-scores, kind="stable")[:10]]
    assert list(lists[lists.user_id == users[0]].item_id) == expected

    online = read_online_topk(production, "recs", users[0])
    assert [x["item_id"] for x in online["items"]] == expected and online["model_version"] == model.version


def test_bad_options_are_refused(production, tmp_path):
    with pytest.raises(BatchScoreError, match="exactly one"):
        BatchOptions(surface="recs")
    with pytest.raises(BatchScoreError, match="--k"):
        BatchOptions(surface="recs", k=100, candidates=10, all_users=True)
    bad = tmp_path / "users.csv"
    bad.write_text("id\nu1\n")
    with pytest.raises(BatchScoreError, match="no user_id column"):
        batch_score(production, BatchOptions(surface="recs", users_file=bad))

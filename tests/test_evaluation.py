"""Labels at the attribution edges, the time split, evaluation against baselines, leakage guards,
model behaviour, and the quality bar on the default demo world."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ranker.data import schema
from ranker.training import metrics
from ranker.training.dataset import DatasetOptions, build_dataset, labelled_impressions, load_dataset
from ranker.training.evaluate import EvaluationError, evaluate_model, load_model, predict, quality_bar, holdout_frame
from ranker.training.train import TrainOptions, fit, request_time, time_split, train_model
from tests.conftest import make_home

T0 = pd.Timestamp("2026-10-01T12:00:00", tz="UTC")


def _event(i, kind, seconds, request="r1", item="i1", position=1):
    return dict(
        event_id=f"e{i}",
        event_type=kind,
        timestamp=T0 + pd.Timedelta(seconds=seconds),
        user_id="u1",
        item_id=item,
        surface="search",
        request_id=request,
        position=position,
        query="dresses",
    )


def test_labels_at_attribution_window_edges(tmp_path):
    home = make_home(tmp_path / "edges")
    listings = pd.DataFrame(
        {
            "item_id": ["i1", "i2", "i3", "i4"],
            "seller_id": "s1",
            "title": "red dress",
            "category": "dresses",
            "brand": "zara",
            "size": "M",
            "condition": "good",
            "colour": "red",
            "price": 10.0,
            "original_price": 20.0,
            "created_at": T0 - pd.Timedelta(days=1),
            "sold_at": pd.NaT,
        }
    )
    events = pd.DataFrame(
        [
            _event(0, "impression", 0, item="i1", position=1),
            _event(1, "impression", 0, item="i2", position=2),
            _event(2, "impression", 0, item="i3", position=3),
            _event(3, "impression", 0, item="i4", position=4),
            _event(4, "click", 3600, item="i1"),  # exactly at the 1 h edge: counts
            _event(5, "purchase", 3601, item="i2"),  # one second past the edge: ignored
            _event(6, "click", 10, item="i2"),  # inside: label 1 for i2
            _event(7, "save", 20, item="i3", request="r2"),  # another request: ignored
            _event(8, "add_to_bag", 30, item="i4"),
            _event(9, "click", 25, item="i4"),  # best grade wins: add_to_bag 3
        ]
    )
    schema.write_table(home.raw_dir, schema.LISTINGS, listings)
    schema.write_table(home.raw_dir, schema.EVENTS, events)
    options = DatasetOptions(surface="search", attribution_hours=1.0)
    rows = labelled_impressions(home, options).set_index("item_id")
    assert rows.label.to_dict() == {"i1": 1, "i2": 1, "i3": 0, "i4": 3}
    # The build's own (faster) labelling gives the same labels.
    from ranker.training.dataset import _labelled_table

    built = _labelled_table(home, options).to_pandas().set_index("item_id")
    assert built.label.to_dict() == {"i1": 1, "i2": 1, "i3": 0, "i4": 3}


@pytest.fixture(scope="module")
def trained(world):
    build_dataset(world, DatasetOptions(surface="recs", chunk_rows=50_000))
    model_dir = train_model(world, TrainOptions(surface="recs"))
    return world, model_dir


def test_time_split_keeps_requests_whole_and_test_last(trained):
    settings, model_dir = trained
    df, _ = load_dataset(settings, "recs")
    split = time_split(df, TrainOptions(surface="recs"))
    parts = pd.Series(split.assign(request_time(df)), index=df.index)
    assert parts.groupby(df.request_id).nunique().max() == 1, "a request was split across sets"
    starts = request_time(df)
    assert starts[parts == "train"].max() < starts[parts == "valid"].min()
    assert starts[parts == "valid"].max() < starts[parts == "test"].min()
    test, _ = holdout_frame(settings, load_model(model_dir))
    assert set(test.request_id).isdisjoint(set(df.request_id[parts != "test"]))


def test_evaluation_writes_metrics_into_the_card_and_a_report(trained):
    settings, model_dir = trained
    evaluation = evaluate_model(settings, model_dir, n_boot=200)
    card = json.loads((model_dir / "card.json").read_text())
    assert set(card["metrics"]["test"]) == {"model", "random", "popularity", "logged", "oracle", "expected_oracle"}
    for ranker in card["metrics"]["test"].values():
        assert {"ndcg@5", "ndcg@10", "ndcg@20", "mrr", "map", "recall@10"} <= set(ranker)
    assert card["metrics"]["true_utility"]["oracle"] == pytest.approx(1.0)
    # the ceiling knows all but the noise: above the model, below the noisy oracle
    truth = card["metrics"]["true_utility"]
    assert truth["model"] < truth["expected_oracle"] < 1.0
    assert card["metrics"]["oracle_fraction"] < card["metrics"]["ceiling_fraction"] < 1.0
    assert {"model-vs-random", "model-vs-logged", "model-vs-popularity"} <= set(card["metrics"]["ci"])
    assert any(name.startswith("surface=") for name in card["metrics"]["slices"])
    html = (model_dir / "report.html").read_text()
    assert html.count("<img") == 4 and "popularity" in html
    assert evaluation["test_window"]["same_dataset_as_training"] is True


def test_model_trained_on_shuffled_labels_does_not_beat_random(trained):
    """Guards against leakage: with labels independent of the features nothing can be learned."""
    settings, model_dir = trained
    df, manifest = load_dataset(settings, "recs")
    options = TrainOptions(surface="recs")
    split = time_split(df, options)
    shuffled = df.copy()
    shuffled["label"] = np.random.default_rng(0).permutation(df.label.to_numpy())
    booster, _, _ = fit(shuffled, manifest["features"], options, split)
    test = df[split.assign(request_time(df)) == "test"]
    groups = metrics.encode_groups(test.request_id.to_numpy())
    noise = metrics.per_group_metrics(
        groups, test.label.to_numpy(), booster.predict(test[manifest["features"]].to_numpy(np.float32))
    )
    rand = metrics.per_group_metrics(groups, test.label.to_numpy(), np.random.default_rng(1).random(len(test)))
    ci = metrics.paired_bootstrap_ci(noise["ndcg@10"], rand["ndcg@10"], n_boot=500)
    assert ci["low"] <= 0.0, f"a model trained on shuffled labels beat random: {ci}"


def test_tampered_model_is_refused(trained, tmp_path):
    import shutil

    _, model_dir = trained
    copy = tmp_path / "tampered"
    shutil.copytree(model_dir, copy)
    (copy / "model.txt").write_text((copy / "model.txt").read_text().replace("shrinkage", "shrinkage ", 1))
    with pytest.raises(EvaluationError, match="does not match its card"):
        predict(load_model(copy), pd.DataFrame({f: [0.0] for f in load_model(copy).features}))


@pytest.mark.slow
@pytest.mark.parametrize("surface", ["search", "recs"])
def test_quality_bar_on_the_default_demo_world(tmp_path_factory, surface):
    """On the default demo data the model beats every baseline on click NDCG@10 (bootstrap
    interval of the difference above zero) and on NDCG@10 against the hidden utility."""
    from ranker.data.simulate import SimConfig, simulate
    from ranker.features.build import build_features
    from ranker.features.store import apply

    home = tmp_path_factory.getbasetemp() / "demo_world"
    if not (home / "data" / "features").exists():
        settings = make_home(home)
        simulate(SimConfig(), raw_dir=settings.raw_dir, ground_truth_dir=settings.ground_truth_dir)
        build_features(settings)
        apply(settings)
    from ranker.config import Settings

    settings = Settings(home=home)
    build_dataset(settings, DatasetOptions(surface=surface))
    model_dir = train_model(settings, TrainOptions(surface=surface))
    evaluation = evaluate_model(settings, model_dir, n_boot=500)
    assert quality_bar(evaluation["metrics"]) == []
    assert evaluation["metrics"]["true_utility"]["model"] > evaluation["metrics"]["true_utility"]["logged"] + 0.05

    # Behaviour: the same listing at 20x its price (far above the user's usual level) scores lower.
    model = load_model(model_dir)
    test, _ = holdout_frame(settings, model)
    known = test[test.user_price_index_30d.notna() & test.price_fit.notna()].head(3000)
    base = predict(model, known)
    pricey = known.copy()
    for column in ("price", "price_index", "price_vs_user_median"):
        pricey[column] = pricey[column] * 20
    pricey["price_fit"] = np.abs(np.log(pricey.price_index / pricey.user_price_index_30d))
    moved = predict(model, pricey)
    assert (moved < base).mean() > 0.5 and (moved > base).mean() < 0.15


def test_deploy_promotes_through_the_gate_and_refuses_a_worse_model(trained, monkeypatch, tmp_path):
    """`ranker deploy`: first model goes to production, the same model again is left alone, and a
    model trained on shuffled labels fails the gate (exit 1) and leaves production unchanged."""
    import hashlib
    import shutil

    from click.testing import CliRunner

    from pipelines.cli import _register, cli
    from ranker.registry import Registry

    settings, model_dir = trained
    if "deploy" not in cli.commands:
        _register()
    monkeypatch.setenv("RANKER_HOME", str(settings.home))
    monkeypatch.setenv("RANKER_REGISTRY_URI", f"file://{tmp_path / 'registry'}")
    runner = CliRunner()
    first = runner.invoke(cli, ["deploy", "--surface", "recs", "--model-dir", str(model_dir)])
    assert first.exit_code == 0, first.output
    registry = Registry.from_settings(settings.with_(registry_uri=f"file://{tmp_path / 'registry'}"))
    champion = registry.resolve("recs_ranker", "production")
    assert champion == json.loads((model_dir / "card.json").read_text())["version"]

    again = runner.invoke(cli, ["deploy", "--surface", "recs", "--model-dir", str(model_dir)])
    assert again.exit_code == 0 and "nothing to do" in again.output

    # A worse challenger: the same card, a model fitted on shuffled labels.
    df, manifest = load_dataset(settings, "recs")
    options = TrainOptions(surface="recs")
    shuffled = df.assign(label=np.random.default_rng(3).permutation(df.label.to_numpy()))
    booster, _, _ = fit(shuffled, manifest["features"], options, time_split(df, options))
    worse = tmp_path / "worse"
    shutil.copytree(model_dir, worse)
    text = booster.model_to_string()
    (worse / "model.txt").write_text(text)
    card = json.loads((worse / "card.json").read_text())
    card.update(version=card["version"] + "-shuffled", model_sha256=hashlib.sha256(text.encode()).hexdigest())
    (worse / "card.json").write_text(json.dumps(card))
    result = runner.invoke(cli, ["deploy", "--surface", "recs", "--model-dir", str(worse)])
    assert result.exit_code == 1, result.output
    assert "ndcg_vs_champion" in result.output and "not promoted" in result.output
    assert registry.resolve("recs_ranker", "production") == champion

"""Drift calibrated against normal variation, on a simulated marketplace long enough to be past the
warm-up of its 30-day features (22 days): a healthy week raises nothing; an injected shift (a
feature x3, a category disappearing, a unit change) is flagged, naming the feature."""

from __future__ import annotations

import json
import warnings
from datetime import date

import pandas as pd
import pytest

from tests.conftest import make_home
from tests.test_monitoring import day_frames

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def steady(tmp_path_factory):
    """A 22-day world, its search training set and a model trained on it (the real card)."""
    from ranker.data.simulate import SimConfig, simulate
    from ranker.features.build import build_features
    from ranker.features.store import apply
    from ranker.training.dataset import DatasetOptions, build_dataset, load_dataset
    from ranker.training.train import TrainOptions, train_model

    warnings.filterwarnings("ignore", category=RuntimeWarning)
    settings = make_home(tmp_path_factory.mktemp("steady"))
    simulate(
        SimConfig(seed=5, users=300, items=900, new_items_per_day=60, days=22, start=date(2026, 10, 1)),
        raw_dir=settings.raw_dir,
        ground_truth_dir=settings.ground_truth_dir,
    )
    build_features(settings)
    apply(settings)
    build_dataset(settings, DatasetOptions(surface="search", chunk_rows=50_000))
    card = json.loads((train_model(settings, TrainOptions(surface="search")) / "card.json").read_text())
    df, _ = load_dataset(settings, "search")
    return card, df


@pytest.fixture(scope="module")
def calibrated(steady, tmp_path_factory):
    """The healthy baseline from the days before the last week (the week is out of sample)."""
    from ranker.monitoring.drift import healthy_baseline

    card, df = steady
    day = df.event_timestamp.dt.floor("D")
    days = sorted(day.unique())
    history = tmp_path_factory.mktemp("history") / "history.parquet"
    df[day < days[-7]].to_parquet(history)
    baseline = healthy_baseline({**card, "dataset": {**card["dataset"], "path": str(history)}}, history_days=7)
    assert baseline is not None and len(baseline.days) == 8
    return card, df, day, days, baseline


def _judge(card, baseline, current: pd.DataFrame, previous: pd.DataFrame, folder, transform=None) -> dict:
    from ranker.monitoring.drift import DriftOptions, drift_report

    key = (card["name"], card["version"])
    now = day_frames(current, card, folder / "now", transform=transform)
    before = day_frames(previous, card, folder / "before")
    return drift_report(now, {key: card}, DriftOptions(), reference_frames=before, baselines={key: baseline})


def test_a_healthy_week_raises_no_drift(calibrated, tmp_path):
    card, df, day, days, baseline = calibrated
    for i in range(-7, 0):  # each day of the week against the day before it (like with like)
        report = _judge(card, baseline, df[day == days[i]], df[day == days[i - 1]], tmp_path / str(i))
        assert report["ok"], (str(days[i]), report["drifted"])
        (model,) = report["models"]
        assert model["judged"] and model["calibrated"] and model["reference"].startswith("served window")
        assert len(model["features"]) == len(card["features"])
        for f in model["features"]:
            assert f["verdict"] == "ok" and f["threshold"] >= 0.1 and f["healthy_high"] is not None
    assert _alerts(report) == []  # the last day's real exported gauges through the real alert rules


def _alerts(report: dict) -> list[str]:
    import shutil

    from prometheus_client import generate_latest

    from ranker.monitoring.alertcheck import alerts_that_would_fire
    from ranker.monitoring.export import drift_metrics
    from tests.conftest import REPO_ROOT

    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed (`make test` installs the Debian package prometheus)")
    return alerts_that_would_fire(
        [generate_latest(drift_metrics(report)).decode()], REPO_ROOT / "infra" / "prometheus" / "alerts.yml"
    )


@pytest.mark.parametrize("feature", ["price", "condition_score", "listing_age_hours"])
def test_an_injected_shift_is_flagged_naming_the_feature(calibrated, tmp_path, feature):
    card, df, day, days, baseline = calibrated
    last, before = df[day == days[-1]], df[day == days[-2]]
    # "good" listings (condition_score 2, ~29%) vanish: the commonest condition with a decile bin of
    # its own in the card (3 and 4 share the top bin, so losing "very good" only moves mass inside it).
    assert (last.condition_score == 2).mean() > 0.2
    transform = {
        "price": lambda d: d.assign(price=d.price * 3),  # a feature x3
        "condition_score": lambda d: d[d.condition_score != 2],  # a category disappears
        "listing_age_hours": lambda d: d.assign(listing_age_hours=d.listing_age_hours / 24),  # hours -> days
    }[feature]
    report = _judge(card, baseline, last, before, tmp_path, transform)
    assert not report["ok"]
    top = report["models"][0]["features"][0]
    assert top["feature"] == feature and top["verdict"] == "drift" and top["psi"] > top["threshold"], top
    assert f"{card['name']}:{card['version']}:{feature}" in report["drifted"]
    assert _alerts(report) == ["RankerFeatureDrift"]

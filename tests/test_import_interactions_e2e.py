"""Done-when of the import issue: a log in the interactions format with only user_id, item_id,
timestamp trains and serves a model with no code change, through the same `ranker` commands
(import -> features -> apply -> materialize -> dataset -> train -> evaluate -> publish ->
promote -> the scorer ranks via the Flask app)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from tests.conftest import make_home

pytestmark = pytest.mark.slow


def _synthetic_log(seed: int = 5) -> pd.DataFrame:
    """Two weeks of interactions: listings appear over time and have a latent appeal, so recent
    popularity predicts the next interaction (what the generic features can see)."""
    rng = np.random.default_rng(seed)
    n_items, n_users, days = 240, 160, 14
    start = pd.Timestamp("2026-03-01", tz="UTC")
    created = start + pd.to_timedelta(rng.integers(0, days * 24 - 48, n_items), unit="h")
    appeal = rng.pareto(1.2, n_items) + 0.05
    rows = []
    for day in range(days):
        now = start + pd.Timedelta(days=day)
        live = np.flatnonzero(created <= now + pd.Timedelta(hours=12))
        weights = appeal[live] / appeal[live].sum()
        n = 420
        items = rng.choice(live, size=n, p=weights)
        users = rng.integers(0, n_users, n)
        secs = rng.integers(12 * 3600, 86400, n)
        for i, u, s in zip(items, users, secs, strict=False):
            ts = max(now + pd.Timedelta(seconds=int(s)), created[i] + pd.Timedelta(minutes=1))
            rows.append((f"user{u:03d}", f"item{i:03d}", ts.isoformat()))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


def test_minimal_interactions_log_trains_and_serves(tmp_path):
    from api.app import create_app
    from pipelines.cli import _register, cli

    settings = make_home(tmp_path / "home")
    log = _synthetic_log()
    path = tmp_path / "interactions.csv"
    log.to_csv(path, index=False)
    _register()
    runner = CliRunner()
    env = {"RANKER_HOME": str(settings.home), "RANKER_ONLINE_STORE": "sqlite", "RANKER_REGISTRY_URI": ""}

    def ranker(*args: str) -> str:
        result = runner.invoke(cli, list(args), env=env, catch_exceptions=False)
        assert result.exit_code == 0, f"ranker {' '.join(args)}: {result.output}"
        return result.output

    out = ranker("data", "import", "--format", "interactions", str(path))
    assert f"Imported {len(log):,} of {len(log):,} rows" in out
    ranker("features", "build")
    ranker("features", "apply")
    ranker("features", "materialize")
    out = ranker("dataset", "build", "--surface", "recs", "--feature-service", "generic_ranker_v1", "--negatives", "8")
    assert "16 features from generic_ranker_v1" in out
    ranker("train", "--surface", "recs")
    model_dir = next((settings.artifacts_dir / "models" / "recs_ranker").iterdir())
    ranker("evaluate", str(model_dir), "--bootstrap", "200")
    card = json.loads((model_dir / "card.json").read_text())
    assert card["dataset"]["sampled_groups"]["negatives_per_positive"] == 8
    test = card["metrics"]["test"]
    assert "logged" not in test and "oracle" not in test, "sampled groups have no logged order; real data no oracle"
    assert test["model"]["ndcg@10"] > test["random"]["ndcg@10"] + 0.05, test
    ranker("registry", "publish", str(model_dir))
    ranker(
        "registry",
        "promote",
        "recs_ranker",
        card["version"],
        "--to",
        "production",
        "--force",
        "--reason",
        "first model on an imported log",
    )

    listings = pd.read_parquet(settings.raw_dir / "listings.parquet")
    recent = log[pd.to_datetime(log.timestamp) >= pd.to_datetime(log.timestamp).max() - pd.Timedelta(days=7)]
    popular = recent.item_id.value_counts()
    hot, cold = popular.index[0], sorted(set(listings.item_id) - set(recent.item_id))[0]
    app = create_app(test_config={"RANKER_SURFACES": "recs", "RANKER_RELOAD_INTERVAL_S": 0}, settings=settings)
    try:
        items = listings.item_id.tolist()[:60] + [hot, cold]
        response = app.test_client().post("/v1/rank", json={"surface": "recs", "user_id": "user001", "items": items})
        body = response.get_json()
        assert response.status_code == 200, body
        assert body["model"]["version"] == card["version"] and not body["degraded"]
        ranked = [i["item_id"] for i in body["items"]]
        assert sorted(ranked) == sorted(set(items))
        scores = {i["item_id"]: i["score"] for i in body["items"]}
        assert scores[hot] > scores[cold], "the most interacted listing of the last week outranks an idle one"
        bad = app.test_client().post("/v1/rank", json={"surface": "search", "user_id": "user001", "items": items})
        assert bad.status_code in (422, 503) and "error" in bad.get_json()
    finally:
        app.extensions["ranker"].close()

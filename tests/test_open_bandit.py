"""Open Bandit: the inverse-propensity estimators on a synthetic bandit with a known answer, and
the example end to end on the real ZOZOTOWN sample in ../shared/data/open_bandit."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ranker.training.ips import estimate, weights

REPO = Path(__file__).resolve().parents[1]
# The shared data folder beside the repo, or RANKER_SHARED_DATA (e.g. for a clone elsewhere).
SHARED = Path(os.environ.get("RANKER_SHARED_DATA") or REPO.parent / "shared" / "data")
OPEN_BANDIT = SHARED / "open_bandit"


def _bandit(n_rounds: int, propensity: np.ndarray, seed: int):
    """Rounds of a 3-slot widget over 20 items under the position-based model: the logging policy
    picks the item of the round's slot with ``propensity`` (per item, same for every slot)."""
    rng = np.random.default_rng(seed)
    appeal = np.linspace(0.02, 0.30, 20)
    theta = {1: 1.0, 2: 0.7, 3: 0.5}
    slots = rng.integers(1, 4, n_rounds)
    items = rng.choice(20, size=n_rounds, p=propensity)
    clicks = (rng.random(n_rounds) < appeal[items] * np.vectorize(theta.get)(slots)).astype(float)
    return appeal, theta, slots, items, clicks


@pytest.mark.parametrize("logging", ["uniform", "skewed"])
def test_ips_recovers_the_ctr_of_a_known_ranking(logging):
    propensity = np.full(20, 1 / 20) if logging == "uniform" else np.linspace(1, 3, 20) / np.linspace(1, 3, 20).sum()
    appeal, theta, slots, items, clicks = _bandit(100_000, propensity, seed=1)
    # the target ranking: best appeal first, so slot j shows the j-th most appealing item
    rank = np.empty(20, dtype=int)
    rank[np.argsort(-appeal)] = np.arange(1, 21)
    blocks = np.column_stack([rank[items], rank[items]])
    top = np.argsort(-appeal)[:3]
    # clicks per slot impression if the ranking had filled the slots (slots are uniform over rounds);
    # in a position-based world both assumptions hold, so both estimators target this value
    truth = np.mean([theta[j + 1] * appeal[top[j]] for j in range(3)])
    p = propensity[items]
    boot = np.random.default_rng(0).integers(0, len(items), size=(100, len(items)))
    for assumption in ("independent", "pbm"):
        w = weights(blocks, slots, p, n_slots=3, theta=theta, assumption=assumption)
        est = estimate(clicks, w, boot)
        assert est["ips_ci"][0] < truth < est["ips_ci"][1], (assumption, est["ips"], truth)
        assert abs(est["snips"] - truth) < 0.15 * truth
    # the pbm estimator matches ~3x more rounds than the slot-wise one
    assert (weights(blocks, slots, p, n_slots=3, theta=theta, assumption="pbm") > 0).sum() > 2.5 * (
        weights(blocks, slots, p, n_slots=3, theta=theta, assumption="independent") > 0
    ).sum()
    logged = clicks.mean()
    assert logged < truth, "the top-3 ranking must beat the logging policy here"


def test_tied_scores_share_the_slot():
    # an item tied with 3 others over ranks 1..4 is in slot 1 a quarter of the time
    w = weights(np.array([[1, 4]]), np.array([1]), np.array([0.5]), n_slots=3, theta=None, assumption="independent")
    assert w[0] == pytest.approx(0.25 / 0.5)
    absent = weights(
        np.array([[0, 0]]), np.array([1]), np.array([0.5]), n_slots=3, theta=None, assumption="independent"
    )
    assert absent[0] == 0


@pytest.mark.slow
def test_open_bandit_example_end_to_end(tmp_path):
    if not SHARED.exists():
        pytest.skip(f"{SHARED} is absent: the Open Bandit sample ships in the shared data folder beside the repo")
    from pipelines.example_open_bandit import run

    result = run(tmp_path / "home", OPEN_BANDIT, negatives=10, seed=0, max_ips_rows=1500)
    logs = {
        p: pd.read_csv(OPEN_BANDIT / p / "all" / "all.csv", usecols=["click", "propensity_score"])
        for p in ("random", "bts")
    }
    report = result["import"]
    assert report["rows_read"] == report["rows_imported"] == sum(len(v) for v in logs.values())
    assert report["events"]["click"] == sum(int(v.click.sum()) for v in logs.values()) > 0
    assert report["rejected_total"] == 0
    assert np.allclose(logs["random"].propensity_score, 1 / 80), "random/all is uniform over 80 items"

    manifest = result["manifest"]
    assert manifest["feature_service"] == "generic_ranker_v1" and manifest["groups"] == report["events"]["click"]
    card = json.loads((result["model_dir"] / "card.json").read_text())
    assert card["dataset"]["sampled_groups"]["negatives_per_positive"] == 10
    assert "oracle" not in card["metrics"]["test"], "no hidden utility on real data"
    assert card["off_policy"]["window"]["rows"] == 1500

    ips = result["ips"]
    random_policy = ips["policies"]["random"]
    sanity = random_policy["estimators"]["independent"]["uniform_random"]
    # The uniform ranking evaluated on the uniform log: every weight is 1 (80 candidates, p = 1/80),
    # so IPS equals the logged CTR exactly; this checks candidates, propensities and weights together.
    assert sanity["ips"] == pytest.approx(random_policy["logged_ctr"], abs=1e-12)
    for policy in ("all", "random", "bts"):
        entry = ips["policies"][policy]
        assert entry["rows"] > 0 and 0 < entry["logged_ctr"] < 0.05
        for assumption in ("independent", "pbm"):
            model = entry["estimators"][assumption]["model"]
            assert model["ips_ci"][0] <= model["ips"] <= model["ips_ci"][1]
            assert model["ips"] >= 0 and model["matched_rows"] > 0
    assert set(ips["examination"]) == {1, 2, 3} and ips["examination"][1] == 1.0

    served = result["served"]
    assert served["status"] == 200 and len(served["body"]["items"]) == 5
    assert served["body"]["model"]["version"] == card["version"]

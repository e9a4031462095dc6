"""Full-catalogue evaluation (ranker.training.catalogue): a hand-made log with hand-computed
metrics, exclusions, baselines by hand, EASE against its definition, a deterministic bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ranker.training import catalogue as cat
from ranker.training.metrics import per_group_metrics

DAY0 = pd.Timestamp("2026-01-01", tz="UTC")
T = DAY0 + pd.Timedelta(days=10)
LOG2_3 = math.log2(3)


def day(x: float) -> pd.Timestamp:
    return DAY0 + pd.Timedelta(days=x)


@pytest.fixture
def log() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Six listings, three users. Live at T (day 10): A, B (sells on day 12), E, F.
    C sold on day 5 and D goes live on day 11: neither is ever a candidate."""
    listings = pd.DataFrame(
        {
            "item_id": list("ABCDEF"),
            "created_at": [day(0), day(0), day(0), day(11), day(1), day(2)],
            "sold_at": [pd.NaT, day(12), day(5), pd.NaT, pd.NaT, pd.NaT],
        }
    )
    rows = [
        # before T
        ("u1", "A", 2, "click"),
        ("u2", "E", 1.5, "click"),
        ("u2", "A", 4, "click"),
        ("u2", "C", 4, "save"),
        ("u3", "A", 8, "click"),
        ("u3", "B", 9, "click"),
        ("u3", "E", 9, "click"),
        ("u3", "A", 9.5, "impression"),  # impressions are not engagements
        # the test window
        ("u1", "B", 11, "purchase"),
        ("u1", "A", 12, "click"),  # engaged before T: excluded, not relevant
        ("u1", "D", 12, "click"),  # not live at T
        ("u2", "F", 11, "click"),
        ("u2", "B", 13, "save"),
        ("u3", "D", 12, "click"),  # u3's only engagement is with a listing not live at T: not a test user
    ]
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "day", "event_type"])
    events["timestamp"] = [day(d) for d in events.pop("day")]
    return events, listings


def test_task_candidates_exclusions_and_grades(log):
    events, listings = log
    task = cat.build_task(events, listings, T, users=None)
    assert list(task.items) == ["A", "B", "E", "F"]
    assert list(task.users) == ["u1", "u2"]
    assert task.test_users_total == 2
    mask = task.candidate_mask(slice(0, 2))
    # u1 engaged with A before T; u2 with A and E (and C, which is not live)
    assert mask.tolist() == [[False, True, True, True], [False, True, False, True]]
    labels = task.label_block(slice(0, 2))
    assert labels.tolist() == [[0, 4, 0, 0], [0, 2, 0, 1]]
    # chunked views agree with the whole
    assert task.candidate_mask(slice(1, 2)).tolist() == [mask[1].tolist()]
    assert task.label_block(slice(1, 2)).tolist() == [labels[1].tolist()]


def test_live_items_boundaries():
    listings = pd.DataFrame(
        {
            "item_id": ["at", "after", "sold_at_T", "sold_before"],
            "created_at": [T, T + pd.Timedelta(seconds=1), day(0), day(0)],
            "sold_at": [pd.NaT, pd.NaT, T, T - pd.Timedelta(seconds=1)],
        }
    )
    assert list(cat.live_items(listings, T)) == ["at", "sold_at_T"]


def test_sampled_users_are_seeded(log):
    events, listings = log
    a = cat.build_task(events, listings, T, users=1, seed=3)
    b = cat.build_task(events, listings, T, users=1, seed=3)
    assert list(a.users) == list(b.users) and a.n_users == 1 and a.test_users_total == 2
    assert {tuple(cat.build_task(events, listings, T, users=1, seed=s).users) for s in range(20)} == {("u1",), ("u2",)}


def test_hand_computed_metrics_for_a_fixed_scoring(log):
    events, listings = log
    task = cat.build_task(events, listings, T, users=None)
    fixed = np.array([[9.0, 1.0, 3.0, 2.0], [0.0, 5.0, 0.0, 5.0]])  # columns A, B, E, F
    got = cat.per_user_metrics(task, lambda rows: fixed[rows])
    # u1: candidates B(1) E(3) F(2) -> E, F, B; B (purchase, gain 15) at rank 3: 15/log2(4) / 15
    assert got.loc["u1", "ndcg@10"] == pytest.approx(0.5)
    # u2: B (save, gain 3) and F (click, gain 1) tied: mean gain 2 over ranks 1-2
    ideal = 3 + 1 / LOG2_3
    assert got.loc["u2", "ndcg@10"] == pytest.approx(2 * (1 + 1 / LOG2_3) / ideal)
    assert got["recall@10"].tolist() == [1.0, 1.0] and got["recall@50"].tolist() == [1.0, 1.0]


def test_popularity_baselines_by_hand(log):
    events, listings = log
    task = cat.build_task(events, listings, T, users=None)
    # all time before T: A 3, B 1, E 2, F 0; last 7 days (day 3 on): A 2, B 1, E 1, F 0
    assert cat.popularity_scorer(task)(slice(0, 1))[0].tolist() == [3, 1, 2, 0]
    assert cat.popularity_scorer(task, days=7)(slice(0, 1))[0].tolist() == [2, 1, 1, 0]
    allt = cat.per_user_metrics(task, cat.popularity_scorer(task))
    recent = cat.per_user_metrics(task, cat.popularity_scorer(task, days=7))
    # u1 all time: E(2), B(1), F(0): B at rank 2
    assert allt.loc["u1", "ndcg@10"] == pytest.approx(1 / LOG2_3)
    # u1 7 days: B and E tied at 1 above F: B expected at ranks 1-2
    assert recent.loc["u1", "ndcg@10"] == pytest.approx((1 + 1 / LOG2_3) / 2)
    # u2: B(1) before F(0) in both: the ideal order
    assert allt.loc["u2", "ndcg@10"] == pytest.approx(1.0) and recent.loc["u2", "ndcg@10"] == pytest.approx(1.0)


def test_recall_cutoffs_and_head_truncation_match_full_ranking():
    """60 candidates, the relevant ones at ranks 5 and 30, a tie block straddling rank 50: the
    head-only computation equals the metrics of the full ranking."""
    rng = np.random.default_rng(0)
    n = 80
    scores = np.arange(n, 0, -1, dtype=np.float64)[None, :].repeat(3, axis=0)
    scores[:, 45:60] = 20.0  # a tie over ranks 46-60
    labels = np.zeros((3, n))
    labels[0, [4, 29]] = 1  # ranks 5 and 30
    labels[1, [3, 50]] = [2, 3]  # rank 4, and inside the tie block
    labels[2, 70] = 1  # far below rank 50
    mask = np.ones((3, n), dtype=bool)
    mask[1, rng.choice(n, 5, replace=False)] = False
    mask[1, [3, 50]] = True
    got = cat.block_metrics(scores, mask, labels)
    assert got.loc[0, "recall@10"] == pytest.approx(0.5) and got.loc[0, "recall@50"] == pytest.approx(1.0)
    assert got.loc[0, "ndcg@10"] == pytest.approx((1 / math.log2(6)) / (1 + 1 / LOG2_3))
    assert got.loc[2, "recall@50"] == 0.0 and got.loc[2, "ndcg@10"] == 0.0
    r, c = np.nonzero(mask)
    for k in (10, 50):
        full = per_group_metrics(r, labels[r, c], scores[r, c], ks=(10,), recall_at=k)
        assert np.allclose(got[f"recall@{k}"].to_numpy(), full[f"recall@{k}"].to_numpy())
        assert np.allclose(got["ndcg@10"].to_numpy(), full["ndcg@10"].to_numpy())


def test_ease_equals_per_column_ridge_regression():
    """EASE's closed form against its definition: column j of B is the ridge regression of item j
    on the other items (diag(B) = 0)."""
    rng = np.random.default_rng(1)
    x = (rng.random((12, 5)) < 0.4).astype(np.float64)
    lam = 2.0
    b = cat.ease_weights(x, lam)
    assert np.allclose(np.diag(b), 0)
    for j in range(5):
        others = [i for i in range(5) if i != j]
        xo = x[:, others]
        w = np.linalg.solve(xo.T @ xo + lam * np.eye(4), xo.T @ x[:, j])
        assert np.allclose(b[others, j], w)
    # the brief's formula: B = I - P / diag(P)
    p = np.linalg.inv(x.T @ x + lam * np.eye(5))
    assert np.allclose(b, np.eye(5) - p / np.diag(p))


def test_ease_scorer_restricts_to_top_n(log):
    events, listings = log
    task = cat.build_task(events, listings, T, users=None)
    scorer, info = cat.ease_scorer(task, lam=1.0, top_n=3)
    # engaged before T: A 3, E 2, then B and C 1 each (tie by id: B): the matrix holds A, B, E
    assert info["items_in_matrix"] == 3 and info["live_listings_inside"] == 3
    hist = np.array([[1, 0, 0], [1, 0, 1], [1, 1, 1]], dtype=float)  # u1, u2, u3 over A, B, E
    b = cat.ease_weights(hist, 1.0)
    got = scorer(slice(0, 2))
    assert np.allclose(got[:, :3], hist[:2] @ b)
    assert (got[:, 3] < got[:, :3].min()).all()  # F is outside the top-N


def test_bootstrap_is_deterministic_for_a_seed():
    rng = np.random.default_rng(0)
    users = [f"u{i}" for i in range(40)]
    frames = {
        name: pd.DataFrame({m: rng.random(40) + shift for m in cat.METRICS}, index=users)
        for name, shift in (("model", 0.2), ("popularity", 0.0), ("popularity_7d", 0.05), ("ease", 0.1))
    }
    a = cat.summarise(frames, n_boot=200, seed=7)
    b = cat.summarise(frames, n_boot=200, seed=7)
    assert a == b
    assert a["best_popularity"] == "popularity_7d"
    ci = a["ci"]["model-vs-best_popularity"]
    assert ci["low"] <= ci["diff"] <= ci["high"] and ci["n"] == 40
    assert ci["diff"] == pytest.approx((frames["model"]["ndcg@10"] - frames["popularity_7d"]["ndcg@10"]).mean())
    assert cat.summarise(frames, n_boot=200, seed=8)["ci"] != a["ci"]


def test_validation_metric_is_the_catalogue_ndcg(log):
    """Early stopping's metric (CatalogueValidation.feval) is the mean over users of the
    tie-averaged full-catalogue NDCG@10, from LightGBM's flat prediction vector."""
    events, listings = log
    task = cat.build_task(events, listings, T, users=None, end=day(12.5))  # u2's save on day 13 is outside
    labels = task.label_block(slice(None))
    assert labels.tolist() == [[0, 4, 0, 0], [0, 0, 0, 1]]
    mask = task.candidate_mask(slice(None))
    r, c = np.nonzero(mask)
    v = cat.CatalogueValidation(
        task=task, rows=r, cols=c, x=np.zeros((len(r), 1)), label=labels[r, c], mask=mask, labels=labels
    )
    fixed = np.array([[9.0, 1.0, 3.0, 2.0], [0.0, 5.0, 0.0, 5.0]])
    (first, recall, up1), (name, value, higher_better) = v.feval(fixed[r, c], None)
    per_user = cat.per_user_metrics(task, lambda rows: fixed[rows])
    assert (first, up1) == ("recall@50", True) and recall == pytest.approx(per_user["recall@50"].mean())
    assert (name, higher_better) == ("ndcg@10", True) and value == pytest.approx(per_user["ndcg@10"].mean())
    # u1: B at rank 3 -> 0.5; u2: F tied with B at ranks 1-2 -> (1 + 1/log2 3) / 2
    assert value == pytest.approx((0.5 + (1 + 1 / LOG2_3) / 2) / 2)


def test_random_scorer_does_not_depend_on_chunking(log):
    events, listings = log
    task = cat.build_task(events, listings, T, users=None)
    scorer = cat.random_scorer(task, seed=5)
    assert np.array_equal(scorer(slice(0, 2))[1], scorer(slice(1, 2))[0])


@pytest.mark.slow
def test_evaluate_prints_the_full_catalogue_on_an_imported_log(tmp_path):
    """A small imported interactions log: import -> features -> sampled-group dataset -> train ->
    `ranker evaluate` prints the full-catalogue table, stores it in the card and the report, and
    --json carries it."""
    import json

    from click.testing import CliRunner

    from pipelines.cli import _register, cli
    from tests.conftest import make_home
    from tests.test_import_interactions_e2e import _synthetic_log

    settings = make_home(tmp_path / "home")
    path = tmp_path / "interactions.csv"
    _synthetic_log().to_csv(path, index=False)
    _register()
    runner = CliRunner()
    env = {"RANKER_HOME": str(settings.home), "RANKER_ONLINE_STORE": "sqlite", "RANKER_REGISTRY_URI": ""}

    def ranker(*args: str) -> str:
        result = runner.invoke(cli, list(args), env=env, catch_exceptions=False)
        assert result.exit_code == 0, f"ranker {' '.join(args)}: {result.output}"
        return result.output

    ranker("data", "import", "--format", "interactions", str(path))
    ranker("features", "build")
    ranker("features", "apply")
    ranker("dataset", "build", "--surface", "recs", "--feature-service", "generic_ranker_v1", "--negatives", "8")
    ranker("train", "--surface", "recs")
    model_dir = next((settings.artifacts_dir / "models" / "recs_ranker").iterdir())
    out = ranker("evaluate", str(model_dir), "--bootstrap", "200", "--catalogue-users", "40")
    assert "full catalogue at" in out and "of the test users" not in out
    for name in ("model", "popularity", "popularity_7d", "ease", "random"):
        assert any(line.startswith(name + " ") for line in out.splitlines()), out
    assert "model vs ease" in out and "model / best popularity" in out
    card = json.loads((model_dir / "card.json").read_text())
    # early stopping ran on the validation window's full catalogue, not on the sampled groups
    assert card["validation"]["basis"] == "full_catalogue" and card["validation"]["users"] > 0
    assert card["validation"]["metric"] == "recall@50" and 0 <= card["valid_recall@50"] <= 1
    assert card["validation"]["at"] == pd.Timestamp(card["split"]["train_end"]).isoformat()
    fc = card["evaluation"]["full_catalogue"]
    assert fc["users_scored"] == min(40, fc["test_users"]) and fc["listings_live"] > 50
    assert fc["pairs_scored"] == fc["users_scored"] * fc["listings_live"] - fc["pairs_scored_excluded"]
    assert set(fc["rankers"]) == {"model", "popularity", "popularity_7d", "ease", "random"}
    assert fc["rankers"]["model"]["ndcg@10"] > fc["rankers"]["random"]["ndcg@10"]
    assert "Full catalogue" in (model_dir / "report.html").read_text()
    data = json.loads(ranker("evaluate", str(model_dir), "--bootstrap", "200", "--catalogue-users", "40", "--json"))
    assert data["full_catalogue"]["rankers"] == fc["rankers"]  # seeded: the same users and figures
    out = ranker("evaluate", str(model_dir), "--bootstrap", "200", "--no-full-catalogue")
    assert "full catalogue" not in out

    # the deploy gate's evidence for a log without impressions: full-catalogue NDCG@10 per test user
    from ranker.registry.evidence import gate_evidence
    from ranker.registry.gate import evaluate_gate

    evidence = gate_evidence(settings, challenger_dir=model_dir, champion_dir=model_dir, catalogue_users=40)
    assert evidence.basis == "full_catalogue"
    assert evidence.champion_ndcg is not None and np.array_equal(evidence.challenger_ndcg, evidence.champion_ndcg)
    assert len(evidence.challenger_ndcg) == fc["rankers"]["model"]["users"]
    assert evidence.challenger_ndcg.mean() == pytest.approx(fc["rankers"]["model"]["ndcg@10"])
    check = evaluate_gate(evidence).check("ndcg_vs_champion")
    assert check.figures["basis"] == "full_catalogue" and "full-catalogue NDCG@10" in check.detail

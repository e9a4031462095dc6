"""Exploration for new listings (ranker/serving/exploration.py): the policy's propensities are exact
(each explored slot's distribution sums to 1, seeded frequencies over many requests match every
logged propensity), a uniform logging policy's IPS equals the logged CTR and IPS recovers a target's
true CTR, the scorer is unchanged with exploration off, answers and logs propensities with it on,
and bad settings stop the start with one line."""

from __future__ import annotations

import contextlib
import json
import re
from collections import Counter

import numpy as np
import orjson
import pandas as pd
import pytest

from ranker.config import ConfigError
from ranker.serving.exploration import ExplorationPolicy, parse_slots, slot_probabilities


def _candidates(n: int = 14, seed: int = 0):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=n)
    age = rng.uniform(0, 90, size=n)
    age[3] = np.nan  # unknown age: never young
    return scores, age


POLICIES = [
    ExplorationPolicy(slots=(4, 8), young_hours=48, pool=0, seed=1),
    ExplorationPolicy(slots=(4, 8), young_hours=48, pool=3, seed=2),
    ExplorationPolicy(slots=(1, 2, 3), young_hours=60, pool=0, seed=3),
]


# ------------------------------------------------------------------------------------------ the policy


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: f"slots={p.slots},pool={p.pool}")
def test_each_explored_slot_is_a_distribution_over_young_candidates(policy):
    scores, age = _candidates()
    per_slot = slot_probabilities(policy, scores, age)
    assert set(per_slot) == set(policy.slots)
    for slot, p in per_slot.items():
        assert p.sum() == pytest.approx(1.0, abs=1e-12), slot
        assert (p[~(age < policy.young_hours)] == 0).all(), "only young candidates are drawn"
        assert len(set(p[p > 0].tolist())) == 1, "uniform over the pool"


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: f"slots={p.slots},pool={p.pool}")
def test_seeded_frequencies_match_every_logged_propensity(policy):
    """Over 8,000 request ids the share of requests with item i at position k equals the propensity
    the policy logs for (k, i) (within 4.5 binomial sd), and the logged propensities of each position
    sum to 1 over the items seen there."""
    scores, age = _candidates()
    n_requests = 8_000
    seen: Counter = Counter()
    logged: dict = {}
    for r in range(n_requests):
        ranking = policy.rank(scores, age, request_id=f"req-{r}")
        assert sorted(ranking.order.tolist()) == list(range(len(scores)))
        for k, (i, p) in enumerate(zip(ranking.order.tolist(), ranking.propensity.tolist(), strict=True)):
            seen[k, i] += 1
            assert logged.setdefault((k, i), p) == p, "a (position, item) always logs the same propensity"
    for (k, i), count in seen.items():
        p = logged[k, i]
        sd = np.sqrt(p * (1 - p) / n_requests)
        assert abs(count / n_requests - p) <= 4.5 * sd + 1e-12, (k, i, count / n_requests, p)
    for k in range(len(scores)):
        assert sum(p for (kk, _), p in logged.items() if kk == k) == pytest.approx(1.0, abs=1e-9), k
    explored = {k for (k, i) in logged if policy.slots and k + 1 in policy.slots}
    assert explored, "the draw filled the reserved slots"


def test_the_head_is_the_model_order_and_the_draw_is_replayable():
    policy = POLICIES[0]
    scores, age = _candidates()
    model_order = np.argsort(-scores, kind="stable")
    a = policy.rank(scores, age, request_id="r1")
    assert a.order[:3].tolist() == model_order[:3].tolist()  # above slot 4: positions 1-3
    assert (a.propensity[:3] == 1).all() and a.explored.tolist()[:8] == [0, 0, 0, 1, 0, 0, 0, 1]
    assert (age[a.order[a.explored]] < 48).all()
    again = policy.rank(scores, age, request_id="r1")
    np.testing.assert_array_equal(again.order, a.order)
    draws = {tuple(policy.rank(scores, age, request_id=f"r{i}").order[[3, 7]]) for i in range(50)}
    assert len(draws) > 5, "different requests draw differently"
    other_seed = ExplorationPolicy(slots=(4, 8), seed=99)
    assert any(
        not np.array_equal(
            other_seed.rank(scores, age, request_id=f"r{i}").order, policy.rank(scores, age, request_id=f"r{i}").order
        )
        for i in range(10)
    )


def test_without_young_candidates_or_slots_the_order_is_the_model_order():
    scores, age = _candidates()
    model_order = np.argsort(-scores, kind="stable")
    for policy in (ExplorationPolicy(), ExplorationPolicy(slots=(4, 8), young_hours=1e-6)):
        ranking = policy.rank(scores, age, request_id="x")
        np.testing.assert_array_equal(ranking.order, model_order)
        assert (ranking.propensity == 1).all() and not ranking.explored.any()
    # fewer candidates than the slots: only the slots that fit
    short = ExplorationPolicy(slots=(4, 8), young_hours=1e9).rank(scores[:5], age[:5], request_id="x")
    assert short.explored.tolist() == [False, False, False, True, False]


def test_a_pool_too_small_for_every_slot_gives_up_the_last_slots():
    scores = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    age = np.array([100, 100, 100, 100, 100, 1.0])  # one young candidate, last by score
    ranking = ExplorationPolicy(slots=(2, 4)).rank(scores, age, request_id="x")
    assert ranking.order.tolist() == [0, 5, 1, 2, 3, 4]
    assert ranking.explored.tolist() == [False, True, False, False, False, False]
    assert (ranking.propensity == 1).all()


def test_bad_policies_are_refused_with_the_setting_named():
    assert parse_slots("8, 4") == (4, 8) and parse_slots("") == ()
    for text in ("4,x", "0,4", "4,4", "-1"):
        with pytest.raises(ConfigError, match="RANKER_EXPLORE_SLOTS"):
            parse_slots(text)
    with pytest.raises(ConfigError, match="RANKER_EXPLORE_POOL=1 is smaller than the 2 slots"):
        ExplorationPolicy(slots=(4, 8), pool=1)
    with pytest.raises(ConfigError, match="RANKER_EXPLORE_YOUNG_HOURS"):
        ExplorationPolicy(slots=(4,), young_hours=0)


# ------------------------------------------------------------------------------------------ IPS


def _explored_log(n_requests: int, seed: int):
    """A served log of requests over the same 14 candidates with slots 4 and 8 explored, and clicks
    drawn with a known click probability per item in those slots."""
    policy = ExplorationPolicy(slots=(4, 8), young_hours=48, seed=seed)
    scores, age = _candidates()
    n = len(scores)
    ctr = np.linspace(0.02, 0.3, n)
    rng = np.random.default_rng(seed)
    rankings = [policy.rank(scores, age, request_id=f"req-{r}") for r in range(n_requests)]
    order = np.concatenate([x.order for x in rankings])
    explored = np.concatenate([x.explored for x in rankings])
    request = np.repeat([f"req-{r}" for r in range(n_requests)], n)
    t0 = pd.Timestamp("2026-12-01", tz="UTC")
    served = pd.DataFrame(
        {
            "request_id": request,
            "request_ts": t0,
            "item_id": np.char.add("i", order.astype(str)),
            "rank": np.tile(np.arange(1, n + 1), n_requests),
            "propensity": np.concatenate([x.propensity for x in rankings]),
            "explored": explored,
        }
    )
    clicked = explored & (rng.random(len(order)) < ctr[order])
    clicks = served.loc[clicked, ["request_id", "item_id"]].assign(timestamp=t0 + pd.Timedelta(minutes=1))
    pool = policy.plan(scores, age)[2]
    return served, clicks, ctr, pool, scores


def test_a_uniform_logging_policy_s_ips_equals_the_logged_ctr():
    from ranker.monitoring.offpolicy import explored_rounds, slot_ips

    served, clicks, _, pool, _ = _explored_log(3000, seed=5)
    rounds = explored_rounds(served, clicks)
    assert len(rounds) == 2 * 3000
    assert set(rounds.propensity) == {1 / len(pool)}
    # the target is the logging policy itself (uniform over the same pool): weight 1 everywhere
    result = slot_ips(rounds, np.full(len(rounds), 1 / len(pool)))
    assert result["ips"] == pytest.approx(result["logged_ctr"], rel=1e-12)
    assert result["snips"] == pytest.approx(result["logged_ctr"], rel=1e-12)
    assert result["logged_ctr"] == pytest.approx(rounds.click.mean())


def test_ips_on_the_explored_slots_recovers_a_target_s_true_ctr():
    """Target: always show the pool's best-scored listing in the explored slots; its true CTR is that
    listing's click probability, which IPS on the uniform rounds estimates within its interval."""
    from ranker.monitoring.offpolicy import explored_rounds, slot_ips

    served, clicks, ctr, pool, scores = _explored_log(12_000, seed=6)
    rounds = explored_rounds(served, clicks)
    best = pool[np.argmax(scores[pool])]
    target = (rounds.item_id == f"i{best}").to_numpy(dtype=np.float64)
    result = slot_ips(rounds, target, n_boot=500)
    lo, hi = result["ips_normal_ci"]
    assert lo <= ctr[best] <= hi, (result["ips"], ctr[best])
    assert result["matched_rows"] == pytest.approx(len(rounds) / len(pool), rel=0.1)


# ------------------------------------------------------------------------------------------ the scorer

REQUEST_TS = pd.Timestamp("2026-10-08T12:00:00", tz="UTC").timestamp()
BASE_CONFIG = {"RANKER_RELOAD_INTERVAL_S": 0, "RANKER_FEATURE_TIMEOUT_MS": 5000, "RANKER_SURFACES": "recs"}


@pytest.fixture(scope="module")
def served(world, tmp_path_factory):
    """A registry serving a recs model trained on the small world."""
    from ranker.features.materialize import materialize
    from ranker.registry import Registry
    from ranker.training.dataset import DatasetOptions, build_dataset
    from ranker.training.train import TrainOptions, train_model

    materialize(world, full=True)
    build_dataset(world, DatasetOptions(surface="recs", chunk_rows=50_000))
    folder = train_model(world, TrainOptions(surface="recs"))
    settings = world.with_(registry_uri=tmp_path_factory.mktemp("registry").resolve().as_uri())
    registry = Registry.from_settings(settings)
    registry.publish(folder)
    card = json.loads((folder / "card.json").read_text())
    registry.promote(card["name"], card["version"], stage="production", gate=None, force=True, reason="test")
    return settings


@pytest.fixture(scope="module")
def candidates(world):
    """40 live listings at the request time, at least 10 of them younger than 48 h."""
    listings = pd.read_parquet(world.raw_dir / "listings.parquet")
    cutoff = pd.Timestamp(REQUEST_TS, unit="s", tz="UTC")
    live = listings[listings.sold_at.isna() & (listings.created_at < cutoff)]
    young = live[live.created_at > cutoff - pd.Timedelta(hours=48)]
    old = live[live.created_at <= cutoff - pd.Timedelta(hours=48)]
    assert len(young) >= 10
    picked = pd.concat([young.sample(10, random_state=0), old.sample(30, random_state=0)])
    return picked.sample(frac=1, random_state=1).item_id.tolist()


@contextlib.contextmanager
def running_app(settings, **config):
    from api.app import create_app

    app = create_app(test_config={**BASE_CONFIG, **config}, settings=settings)
    try:
        yield app
    finally:
        app.extensions["ranker"].close()


def _rank(client, items, **fields):
    body = {"surface": "recs", "user_id": "u000001", "items": list(items), "context": {"timestamp": REQUEST_TS}}
    body.update(fields)
    response = client.post("/v1/rank", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response


def test_exploration_off_answers_exactly_as_before(served, candidates, monkeypatch):
    """Off (the default, and slots empty with the other settings changed): the answer's bytes are the
    model's order with today's fields, nothing added."""
    import api.app as app_module

    monkeypatch.setattr(app_module.uuid, "uuid4", lambda: type("U", (), {"hex": "f" * 32})())
    bodies = []
    for config in ({}, {"RANKER_EXPLORE_YOUNG_HOURS": 5.0, "RANKER_EXPLORE_POOL": 3, "RANKER_EXPLORE_SEED": 9}):
        with running_app(served, **config) as app:
            scorer = app.extensions["ranker"]
            model = scorer.models.get("recs")
            rows = model.features.fetch(user_id="u000001", item_ids=candidates, query=None, request_ts=int(REQUEST_TS))
            scores = model.predict(rows.matrix[~rows.sold])
            data = _rank(app.test_client(), candidates, limit=12).get_data()
        kept = [i for i, s in zip(candidates, rows.sold.tolist(), strict=True) if not s]
        order = np.argsort(-scores, kind="stable")[:12]
        expected = {
            "request_id": "f" * 32,
            "model": {"name": model.name, "version": model.version},
            "variant": "control",
            "items": [
                {"item_id": kept[i], "score": float(scores[i]), "rank": r}
                for r, i in enumerate(order.tolist(), start=1)
            ],
            "removed_sold": len(candidates) - len(kept),
            "duplicates_removed": 0,
            "degraded": False,
        }
        assert data == orjson.dumps(expected)
        bodies.append(data)
    assert bodies[0] == bodies[1]


def test_the_answer_and_the_served_log_carry_the_propensities(served, candidates, tmp_path):
    from ranker.monitoring.servedlog import log_store, read_served_log
    from ranker.serving.exploration import ExplorationPolicy

    log_uri = (tmp_path / "served").resolve().as_uri()
    config = {
        "RANKER_EXPLORE_SLOTS": "4,8",
        "RANKER_EXPLORE_YOUNG_HOURS": 48.0,
        "RANKER_EXPLORE_SEED": 3,
        "RANKER_SERVED_LOG_SAMPLE": 1.0,
        "RANKER_SERVED_LOG_URI": log_uri,
    }
    answers = []
    with running_app(served, **config) as app:
        client = app.test_client()
        model = app.extensions["ranker"].models.get("recs")
        rows = model.features.fetch(user_id="u000001", item_ids=candidates, query=None, request_ts=int(REQUEST_TS))
        kept = [i for i, s in zip(candidates, rows.sold.tolist(), strict=True) if not s]
        matrix = rows.matrix[~rows.sold]
        scores = model.predict(matrix)
        age = matrix[:, list(model.feature_names).index("listing_age_hours")]
        for _ in range(6):
            answers.append(_rank(client, candidates).get_json())
        app.extensions["ranker"].served_log.flush()
    policy = ExplorationPolicy(slots=(4, 8), young_hours=48.0, seed=3)
    pool = policy.plan(scores, age)[2]
    assert len(pool) >= 2
    for body in answers:
        items = body["items"]
        assert [it["explored"] for it in items[:8]] == [False, False, False, True, False, False, False, True]
        for it in items:
            assert 0 < it["propensity"] <= 1
        for slot in (3, 7):
            assert items[slot]["propensity"] == pytest.approx(1 / len(pool))
            assert age[kept.index(items[slot]["item_id"])] < 48
        assert all(it["propensity"] == 1 for it in items[:3])
        # replayable from the log: the policy, the served scores and the request id give the same list
        replay = policy.rank(scores, age, request_id=body["request_id"])
        assert [it["item_id"] for it in items] == [kept[i] for i in replay.order.tolist()]
        np.testing.assert_allclose([it["propensity"] for it in items], replay.propensity)
    assert len({tuple(it["item_id"] for it in b["items"][:8]) for b in answers}) > 1

    (frame,) = read_served_log(log_store(served, log_uri))
    logged = frame.rows
    assert len(logged) == 6 * len(kept)
    by_answer = {
        (b["request_id"], it["item_id"]): (it["propensity"], it["explored"]) for b in answers for it in b["items"]
    }
    for row in logged.itertuples():
        assert (row.propensity, row.explored) == by_answer[row.request_id, row.item_id]
    assert logged.explored.sum() == 12


def test_a_served_log_written_before_the_propensity_column_reads_as_deterministic(tmp_path):
    import pyarrow.parquet as pq

    from ranker.monitoring.servedlog import ServedRecord, log_store, read_served_log, records_to_table
    from ranker.config import Settings

    record = ServedRecord(
        request_id="r1",
        request_ts=1.7e9,
        logged_at=1.7e9,
        surface="recs",
        user_id="u1",
        query=None,
        model_name="m",
        model_version="1",
        variant="control",
        feature_service="svc",
        feature_names=("a",),
        degraded=False,
        item_ids=["i1", "i2", "i3"],
        scores=np.array([0.3, 0.2, 0.1]),
        ranks=np.array([1, 2, 0], dtype=np.int32),
        matrix=np.zeros((3, 1), np.float32),
    )
    table = records_to_table([record], ("a",), "svc")
    old = table.drop(["propensity", "explored"])
    folder = tmp_path / "log" / "recs" / "date=2023-11-14"
    folder.mkdir(parents=True)
    pq.write_table(old, folder / "old.parquet")
    pq.write_table(table, folder / "new.parquet")
    store = log_store(Settings(home=tmp_path), (tmp_path / "log").as_uri())
    (frame,) = read_served_log(store)
    assert len(frame.rows) == 6
    assert frame.rows.propensity.tolist()[:2] == [1.0, 1.0] and pd.isna(frame.rows.propensity.tolist()[2])
    assert not frame.rows.explored.any()


def test_bad_exploration_settings_stop_the_start_with_one_line():
    from click.testing import CliRunner

    from api.app import check_config
    from pipelines import cli, cmd_serve

    with pytest.raises(ConfigError, match=re.escape("RANKER_EXPLORE_SLOTS must be distinct comma-separated")):
        check_config({"RANKER_EXPLORE_SLOTS": "4,eight"})
    with pytest.raises(ConfigError, match="RANKER_EXPLORE_POOL=1 is smaller than the 2 slots"):
        check_config({"RANKER_EXPLORE_SLOTS": "4,8", "RANKER_EXPLORE_POOL": "1"})
    with pytest.raises(ConfigError, match="RANKER_EXPLORE_YOUNG_HOURS must be > 0"):
        check_config({"RANKER_EXPLORE_SLOTS": "4", "RANKER_EXPLORE_YOUNG_HOURS": "0"})
    assert check_config({"RANKER_EXPLORE_SLOTS": "8,4"}).exploration.slots == (4, 8)
    assert not check_config({}).exploration.active

    cmd_serve.register(cli.cli)
    result = CliRunner().invoke(
        cli.cli, ["serve", "--port", "0", "--workers", "1"], env={"RANKER_EXPLORE_SLOTS": "4,4"}
    )
    assert result.exit_code == 2, result.output
    assert "RANKER_EXPLORE_SLOTS must be distinct comma-separated positions >= 1, or empty" in result.output
    assert "Traceback" not in result.output

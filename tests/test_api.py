"""The Flask scorer end to end: real models trained on the small world, published and promoted in a
private registry, real feature fetches (sqlite, and Redis for degraded mode), Flask's test client,
and one gunicorn smoke test through `ranker serve`."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from api.app import create_app
from ranker.config import Settings
from ranker.registry import Registry
from ranker.training.train import MODEL_NAMES
from tests.conftest import REPO_ROOT

# The world's data ends on 2026-10-09; requests replay a moment inside it.
REQUEST_TS = pd.Timestamp("2026-10-08T12:00:00", tz="UTC").timestamp()
# Generous budget for the embedded sqlite store (Feast's Python path) so correctness tests never degrade.
BASE_CONFIG = {"RANKER_RELOAD_INTERVAL_S": 0, "RANKER_FEATURE_TIMEOUT_MS": 5000}
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def models(world):
    """Both surfaces trained on the world (plus a second search version with another seed)."""
    from ranker.features.materialize import materialize
    from ranker.training.dataset import DatasetOptions, build_dataset
    from ranker.training.train import TrainOptions, train_model

    materialize(world, full=True)
    out = {}
    for surface in ("search", "recs"):
        build_dataset(world, DatasetOptions(surface=surface, chunk_rows=50_000))
        out[surface] = train_model(world, TrainOptions(surface=surface))
    out["search_v2"] = train_model(world, TrainOptions(surface="search", seed=7))
    assert out["search_v2"].name != out["search"].name, "a different seed should give another version"
    return out


def _registry(world: Settings, root: Path, publish: list[Path], promote: list[Path]) -> tuple[Settings, Registry]:
    settings = world.with_(registry_uri=root.resolve().as_uri())
    registry = Registry.from_settings(settings)
    for folder in publish:
        registry.publish(folder)
    for folder in promote:
        card = json.loads((folder / "card.json").read_text())
        registry.promote(card["name"], card["version"], stage="production", gate=None, force=True, reason="test")
    return settings, registry


@pytest.fixture(scope="module")
def served(world, models, tmp_path_factory):
    """Settings of a registry serving both surfaces (never mutated by tests)."""
    settings, _ = _registry(
        world,
        tmp_path_factory.mktemp("registry"),
        [models["search"], models["recs"]],
        [models["search"], models["recs"]],
    )
    return settings


@contextlib.contextmanager
def running_app(settings: Settings, **config):
    app = create_app(test_config={**BASE_CONFIG, **config}, settings=settings)
    try:
        yield app
    finally:
        app.extensions["ranker"].close()


@pytest.fixture(scope="module")
def app(served):
    with running_app(served) as app:
        yield app


@pytest.fixture()
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def listings(world) -> pd.DataFrame:
    return pd.read_parquet(world.raw_dir / "listings.parquet")


@pytest.fixture(scope="module")
def candidates(listings):
    """30 live listings and 5 sold ones (their sale is in the materialized listing rows)."""
    cutoff = pd.Timestamp(REQUEST_TS, unit="s", tz="UTC")
    live = listings[listings.sold_at.isna() & (listings.created_at < cutoff)].item_id
    sold = listings[listings.sold_at.notna()].item_id
    return live.sample(30, random_state=0).tolist(), sold.sample(5, random_state=0).tolist()


def _version(folder: Path) -> str:
    return json.loads((folder / "card.json").read_text())["version"]


def _rank(client, surface="search", items=(), *, headers=None, **fields):
    body = {"surface": surface, "user_id": "u000001", "items": list(items), "context": {"timestamp": REQUEST_TS}}
    if surface == "search":
        body["query"] = "black dress"
    body.update(fields)
    return client.post("/v1/rank", json=body, headers=headers or {})


def _metrics(text: str) -> dict[tuple, float]:
    """Prometheus text as {(sample name, *sorted label pairs): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, *sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _assert_error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]


# ------------------------------------------------------------------------------------------ ranking


@pytest.mark.parametrize("surface", ["search", "recs"])
def test_rank_returns_every_live_item_once_sorted_by_score(client, candidates, models, surface):
    live, _ = candidates
    response = _rank(client, surface, live)
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert len(body["request_id"]) == 32 and response.headers["X-Request-ID"] == body["request_id"]
    assert body["model"] == {"name": MODEL_NAMES[surface], "version": _version(models[surface])}
    assert body["degraded"] is False and body["removed_sold"] == 0
    items = body["items"]
    assert sorted(i["item_id"] for i in items) == sorted(live)
    assert [i["rank"] for i in items] == list(range(1, len(live) + 1))
    scores = [i["score"] for i in items]
    assert all(math.isfinite(s) for s in scores)
    assert scores == sorted(scores, reverse=True)
    assert len(set(scores)) > 1, "a trained model should not score every listing the same"


def test_unknown_fields_are_ignored_and_named(client, candidates):
    live, _ = candidates
    body = {
        "surface": "search",
        "user_id": "u000001",
        "items": live[:5],
        "query": "black dress",
        "context": {"timestamp": REQUEST_TS},
    }
    plain = client.post("/v1/rank", json=body).get_json()
    assert "ignored_fields" not in plain
    typo = client.post("/v1/rank", json={**body, "querry": "red", "limt": 2}).get_json()
    assert typo["ignored_fields"] == ["limt", "querry"]
    assert [i["item_id"] for i in typo["items"]] == [i["item_id"] for i in plain["items"]], "and nothing else changes"


def test_scores_equal_booster_predict_on_the_served_features(app, client, candidates):
    """The reference path: Booster.predict on the float32 matrix the feature path returns."""
    live, _ = candidates
    body = _rank(client, "search", live).get_json()
    model = app.extensions["ranker"].models.get("search")
    rows = model.features.fetch(user_id="u000001", item_ids=live, query="black dress", request_ts=REQUEST_TS)
    expected = dict(zip(live, model.booster.predict(rows.matrix), strict=False))
    assert model.predictor == "compiled"  # the served scores come from the compiled trees...
    for item in body["items"]:
        assert item["score"] == expected[item["item_id"]]  # ...and are LightGBM's, bit for bit


def test_lightgbm_predictor_when_compiled_trees_are_off(app, served, candidates):
    """RANKER_COMPILED_TREES=0 serves with Booster.predict: same answer, other predictor."""
    live, _ = candidates
    compiled = _rank(app.test_client(), "search", live).get_json()
    with running_app(served, RANKER_COMPILED_TREES=False) as plain_app:
        assert plain_app.extensions["ranker"].models.get("search").predictor == "lightgbm"
        plain = _rank(plain_app.test_client(), "search", live).get_json()
    assert [(i["item_id"], i["score"]) for i in plain["items"]] == [
        (i["item_id"], i["score"]) for i in compiled["items"]
    ]


def test_sold_listings_are_removed_and_counted(client, candidates):
    live, sold = candidates
    mixed = live[:10] + sold + live[10:15]
    body = _rank(client, "recs", mixed).get_json()
    returned = [i["item_id"] for i in body["items"]]
    assert body["removed_sold"] == len(sold)
    assert not set(returned) & set(sold)
    assert sorted(returned) == sorted(live[:15])


def test_unknown_user_and_unknown_items_still_rank(client, candidates):
    live, _ = candidates
    items = live[:5] + ["brand-new-listing-1", "brand-new-listing-2"]
    response = _rank(client, "search", items, user_id="u-never-seen", query="zzz qqq")
    assert response.status_code == 200
    body = response.get_json()
    assert sorted(i["item_id"] for i in body["items"]) == sorted(items)
    assert body["degraded"] is False
    # Recs without a query and without a timestamp (now) also ranks.
    response = client.post("/v1/rank", json={"surface": "recs", "user_id": "nobody", "items": ["x1", "x2"]})
    assert response.status_code == 200 and len(response.get_json()["items"]) == 2


def test_limit_returns_the_top_of_the_full_ranking(client, candidates):
    live, _ = candidates
    full = [i["item_id"] for i in _rank(client, "recs", live).get_json()["items"]]
    top = _rank(client, "recs", live, limit=3).get_json()["items"]
    assert [i["item_id"] for i in top] == full[:3]
    assert [i["rank"] for i in top] == [1, 2, 3]
    assert len(_rank(client, "recs", live[:2], limit=50).get_json()["items"]) == 2


def test_duplicate_items_are_ranked_once(client, candidates):
    live, _ = candidates
    body = _rank(client, "recs", [live[0], live[1], live[0], live[2], live[1]]).get_json()
    assert sorted(i["item_id"] for i in body["items"]) == sorted(live[:3])
    assert body["duplicates_removed"] == 2


def test_explain_gives_features_and_contributions_that_add_up(client, candidates, models):
    live, _ = candidates
    card = json.loads((models["search"] / "card.json").read_text())
    body = _rank(client, "search", live[:8], explain=True).get_json()
    for item in body["items"]:
        assert list(item["features"]) == card["features"]
        assert all(v is None or math.isfinite(v) for v in item["features"].values())
        contributions = item["contributions"]
        assert 1 <= len(contributions["top"]) <= 5
        magnitudes = [abs(c["value"]) for c in contributions["top"]]
        assert magnitudes == sorted(magnitudes, reverse=True)
        total = sum(c["value"] for c in contributions["top"]) + contributions["other"] + contributions["bias"]
        assert total == pytest.approx(item["score"], rel=1e-6, abs=1e-6)
    plain = _rank(client, "search", live[:8]).get_json()["items"]
    assert "features" not in plain[0] and "contributions" not in plain[0]


# ------------------------------------------------------------------------------------------ errors


def _big_body() -> bytes:
    return json.dumps({"surface": "recs", "user_id": "u1", "items": ["x"], "query": "a" * (2 << 20)}).encode()


@pytest.mark.parametrize(
    "kwargs, status, code",
    [
        (dict(data=b"{not json", content_type="application/json"), 400, "bad_json"),
        (dict(data=b"", content_type="application/json"), 400, "bad_json"),
        (dict(data=b"[1, 2]", content_type="application/json"), 400, "bad_request"),
        (dict(data=b'{"surface": NaN}', content_type="application/json"), 400, "bad_json"),
        (dict(data=b'{"surface": "recs"}', content_type="text/plain"), 415, "unsupported_media_type"),
        (dict(data=b'{"surface": "recs"}'), 415, "unsupported_media_type"),
        (dict(data=_big_body(), content_type="application/json"), 413, "payload_too_large"),
        (
            dict(json={"surface": "recs", "user_id": "u", "items": [f"i{i}" for i in range(1001)]}),
            413,
            "too_many_candidates",
        ),
        (dict(json={"surface": "shop", "user_id": "u", "items": ["a"]}), 422, "unknown_surface"),
        (dict(json={"surface": 3, "user_id": "u", "items": ["a"]}), 422, "invalid_request"),
        (dict(json={"surface": "recs", "items": ["a"]}), 422, "invalid_request"),
        (dict(json={"surface": "recs", "user_id": 5, "items": ["a"]}), 422, "invalid_request"),
        (dict(json={"surface": "recs", "user_id": "u", "items": "a"}), 422, "invalid_request"),
        (dict(json={"surface": "recs", "user_id": "u", "items": []}), 422, "invalid_request"),
        (dict(json={"surface": "recs", "user_id": "u", "items": [1, 2]}), 422, "invalid_request"),
        (dict(json={"surface": "recs", "user_id": "u", "items": ["a"], "limit": 0}), 422, "invalid_request"),
        (dict(json={"surface": "recs", "user_id": "u", "items": ["a"], "limit": "3"}), 422, "invalid_request"),
        (dict(json={"surface": "recs", "user_id": "u", "items": ["a"], "limit": True}), 422, "invalid_request"),
        (dict(json={"surface": "recs", "user_id": "u", "items": ["a"], "explain": "yes"}), 422, "invalid_request"),
        (dict(json={"surface": "search", "user_id": "u", "items": ["a"], "query": 7}), 422, "invalid_request"),
        (dict(json={"surface": "recs", "user_id": "u", "items": ["a"], "context": []}), 422, "invalid_request"),
        (
            dict(json={"surface": "recs", "user_id": "u", "items": ["a"], "context": {"timestamp": "x"}}),
            422,
            "invalid_request",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_requests_get_a_json_error(client, kwargs, status, code):
    _assert_error(client.post("/v1/rank", **kwargs), status, code)


@pytest.mark.parametrize(
    "items, message",
    [
        (["a", 2, "b"], "items[1] must be a non-empty string, got integer"),
        (["a", "b", ""], "items[2] must be a non-empty string, got string"),
        ([["a"], "b"], "items[0] must be a non-empty string, got array"),
        (["a", {"id": "b"}], "items[1] must be a non-empty string, got object"),
        (["a", None], "items[1] must be a non-empty string, got null"),
        (["a", "x" * 257], "items[1] is longer than 256 characters"),
    ],
)
def test_a_bad_item_id_is_named_by_its_position(client, items, message):
    # The ids are checked in bulk first; a list that fails is walked to name the first bad id.
    response = client.post("/v1/rank", json={"surface": "recs", "user_id": "u", "items": items})
    _assert_error(response, 422, "invalid_request")
    assert response.get_json()["error"]["message"] == message


def test_an_unexpected_error_is_a_json_500(app, client, candidates, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr(app.extensions["ranker"], "score", broken)
    _assert_error(_rank(client, "recs", candidates[0][:3]), 500, "internal")
    assert "unhandled error on POST /v1/rank" in caplog.text


def test_unknown_routes_and_methods_answer_json(client):
    _assert_error(client.get("/nope"), 404, "not_found")
    response = client.get("/v1/rank")
    _assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]


def test_token_is_required_when_configured(served, candidates):
    live, _ = candidates
    with running_app(served, RANKER_API_TOKEN=TOKEN) as app:
        client = app.test_client()
        response = _rank(client, "recs", live[:3])
        _assert_error(response, 401, "unauthorized")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        _assert_error(_rank(client, "recs", live[:3], headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
        _assert_error(_rank(client, "recs", live[:3], headers={"Authorization": TOKEN}), 401, "unauthorized")
        # The token is checked before the body: no information leaks to an unauthenticated caller.
        _assert_error(
            client.post("/v1/rank", data=b"junk", headers={"Authorization": "Bearer no"}), 401, "unauthorized"
        )
        ok = _rank(client, "recs", live[:3], headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200
        _assert_error(client.post("/admin/reload"), 401, "unauthorized")
        _assert_error(client.post("/admin/reload", headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
        reloaded = client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
        assert reloaded.status_code == 200
        assert {s["status"] for s in reloaded.get_json()["surfaces"].values()} == {"unchanged"}


def test_admin_is_refused_without_a_configured_token(client):
    response = client.post("/admin/reload", headers={"Authorization": "Bearer anything"})
    _assert_error(response, 403, "admin_disabled")
    assert "RANKER_API_TOKEN" in response.get_json()["error"]["message"]


# ------------------------------------------------------------------------------------------ configuration


def test_config_layers_defaults_then_environment_then_test_config(served, monkeypatch):
    from api.app import DEFAULTS, ScorerConfig, config_from_env
    from ranker.config import ConfigError

    monkeypatch.setenv("RANKER_MAX_CANDIDATES", "5")
    monkeypatch.setenv("RANKER_SURFACES", "recs")
    monkeypatch.setenv("RANKER_API_TOKEN", "from-env")
    with running_app(served, RANKER_API_TOKEN="from-test") as app:
        config = app.extensions["ranker"].config
        assert (config.max_candidates, config.surfaces, config.token) == (5, ("recs",), "from-test")
        assert config.item_cache_ttl_s == DEFAULTS["RANKER_ITEM_CACHE_TTL_S"]
        client = app.test_client()
        headers = {"Authorization": "Bearer from-test"}
        _assert_error(
            client.post("/v1/rank", headers=headers, json={"surface": "recs", "user_id": "u", "items": list("abcdef")}),
            413,
            "too_many_candidates",
        )
        _assert_error(
            client.post("/v1/rank", headers=headers, json={"surface": "search", "user_id": "u", "items": ["a"]}),
            422,
            "unknown_surface",
        )
    with pytest.raises(ConfigError, match="RANKER_MAX_CANDIDATES"):
        config_from_env({"RANKER_MAX_CANDIDATES": "many"})
    with pytest.raises(ConfigError, match="RANKER_SURFACES"):
        ScorerConfig.from_config({**DEFAULTS, "RANKER_SURFACES": "search,shop"})
    with pytest.raises(ConfigError, match="RANKER_FEATURE_TIMEOUT_MS"):
        ScorerConfig.from_config({**DEFAULTS, "RANKER_FEATURE_TIMEOUT_MS": 0})


def test_serve_command_help():
    from click.testing import CliRunner

    from pipelines import cli, cmd_serve

    cmd_serve.register(cli.cli)
    result = CliRunner().invoke(cli.cli, ["serve", "--help"])
    assert result.exit_code == 0
    assert "--workers" in result.output and "RANKER_API_TOKEN" in result.output


# ------------------------------------------------------------------------------------------ operations


def test_health_and_readiness(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    response = client.get("/readyz")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["ready"] is True
    assert {s: e["online_store"] for s, e in body["surfaces"].items()} == {"search": "ok", "recs": "ok"}
    assert {s: e["predictor"] for s, e in body["surfaces"].items()} == {"search": "compiled", "recs": "compiled"}


def test_surface_without_a_production_model(world, models, tmp_path, candidates):
    settings, _ = _registry(world, tmp_path / "registry", [models["search"]], [models["search"]])
    with running_app(settings) as app:
        client = app.test_client()
        response = client.get("/readyz")
        assert response.status_code == 503
        body = response.get_json()
        assert body["ready"] is False and any("recs" in r and "no production model" in r for r in body["reasons"])
        assert body["surfaces"]["search"]["version"] == _version(models["search"])
        _assert_error(_rank(client, "recs", candidates[0][:3]), 503, "no_model")
        assert _rank(client, "search", candidates[0][:3]).status_code == 200
        # The 5xx is counted against the variant the user was assigned (the A/B error guardrail).
        metrics = client.get("/metrics").get_data(as_text=True)
        assert 'ranker_variant_errors_total{surface="recs",variant="control"} 1.0' in metrics
        assert 'ranker_variant_errors_total{surface="search"' not in metrics


def test_openapi_document_matches_the_routes(app, client):
    spec = client.get("/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    documented = {(path, method.upper()) for path, ops in spec["paths"].items() for method in ops}
    routed = {
        (rule.rule.replace("<", "{").replace(">", "}"), method)
        for rule in app.url_map.iter_rules()
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    assert documented == routed
    for ops in spec["paths"].values():
        for op in ops.values():
            assert op["responses"], op


def test_answers_follow_the_openapi_document(app, client, candidates, monkeypatch):
    """Real answers (plain, explain, ignored fields, degraded, errors) validate against the document's
    schemas, closed to undocumented fields; the request schema lists exactly the fields the parser knows."""
    import copy

    from jsonschema import Draft202012Validator

    from api.schemas import REQUEST_FIELDS

    spec = client.get("/openapi.json").get_json()
    schemas = copy.deepcopy(spec["components"]["schemas"])
    assert set(schemas["RankRequest"]["properties"]) == REQUEST_FIELDS
    for name in ("RankResponse", "RankedItem", "Error"):
        schemas[name]["additionalProperties"] = False

    def check(name: str, document) -> None:
        validator = Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": {"schemas": schemas}})
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]
        assert not errors, errors

    live, _ = candidates
    answers = [
        _rank(client, "search", live[:5]),
        _rank(client, "recs", live[:5], explain=True, limit=3),
        _rank(client, "search", live[:5], querry="typo"),
    ]
    state = app.extensions["ranker"]
    monkeypatch.setattr(state, "fetch", lambda model, req: (None, "timeout"))
    answers.append(_rank(client, "recs", live[:5], explain=True))
    monkeypatch.undo()
    for response in answers:
        assert response.status_code == 200, response.get_data(as_text=True)
        check("RankResponse", response.get_json())
    assert answers[-1].get_json()["degraded"] is True and "ignored_fields" in answers[2].get_json()
    for response in (client.post("/v1/rank", json={"surface": "x"}), client.get("/nope"), client.post("/admin/reload")):
        assert response.status_code >= 400
        check("Error", response.get_json())
    check("Readiness", client.get("/readyz").get_json())


def test_metrics_expose_stage_latencies_and_counts(client, candidates):
    live, _ = candidates
    assert _rank(client, "search", live[:5]).status_code == 200
    client.post("/v1/rank", json={"surface": "nope", "user_id": "u", "items": ["a"]})
    samples = _metrics(client.get("/metrics").get_data(as_text=True))
    for stage in ("parse", "fetch", "predict", "serialise", "total"):
        assert samples[("ranker_rank_stage_seconds_count", ("stage", stage), ("surface", "search"))] >= 1
    assert samples[("ranker_rank_requests_total", ("status", "200"), ("surface", "search"))] >= 1
    assert samples[("ranker_rank_requests_total", ("status", "422"), ("surface", "invalid"))] >= 1
    assert samples[("ranker_errors_total", ("type", "unknown_surface"))] >= 1
    assert samples[("ranker_rank_candidates_count", ("surface", "search"))] >= 1
    info = {tuple(labels): v for (name, *labels), v in samples.items() if name == "ranker_model_info"}
    assert any(("surface", "search") in labels and v == 1 for labels, v in info.items()), info
    cache = [k for k in samples if k[0] in ("ranker_item_cache_hits_total", "ranker_item_cache_misses_total")]
    assert cache, "item cache counters missing"


# ------------------------------------------------------------------------------------------ model lifecycle


def _admin(client):
    return client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})


def test_hot_reload_under_concurrent_requests(world, models, tmp_path, candidates):
    live, _ = candidates
    v1, v2 = _version(models["search"]), _version(models["search_v2"])
    settings, registry = _registry(
        world,
        tmp_path / "registry",
        [models["search"], models["search_v2"], models["recs"]],
        [models["search"], models["recs"]],
    )
    with running_app(settings, RANKER_API_TOKEN=TOKEN) as app:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        assert _rank(app.test_client(), "search", live, headers=headers).get_json()["model"]["version"] == v1
        results: list[list[tuple[int, str | None]]] = [[] for _ in range(4)]
        stop = threading.Event()

        def hammer(out: list) -> None:
            client = app.test_client()
            while not stop.is_set():
                r = _rank(client, "search", live, headers=headers)
                body = r.get_json() or {}
                out.append((r.status_code, body.get("model", {}).get("version")))

        def done() -> int:
            return sum(len(r) for r in results)

        threads = [threading.Thread(target=hammer, args=(out,)) for out in results]
        for t in threads:
            t.start()
        try:
            deadline = time.monotonic() + 20
            while done() < 10 and time.monotonic() < deadline:
                time.sleep(0.01)
            registry.promote("search_ranker", v2, stage="production", gate=None, force=True, reason="test")
            reload = _admin(app.test_client())
            seen_before = done()
            while done() < seen_before + 10 and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert reload.status_code == 200
        assert reload.get_json()["surfaces"]["search"] | {"error": None} == {
            "model": "search_ranker",
            "previous": v1,
            "status": "loaded",
            "version": v2,
            "error": None,
        }
        flat = [r for out in results for r in out]
        assert flat and all(status == 200 for status, _ in flat), {s for s, _ in flat}
        assert {version for _, version in flat} == {v1, v2}
        # Per thread: the old version until the swap, then only the new one (one atomic switch).
        for out in results:
            versions = [v for _, v in out]
            assert versions == sorted(versions, key=[v1, v2].index), versions
        assert _rank(app.test_client(), "search", live, headers=headers).get_json()["model"]["version"] == v2


def test_tampered_or_mismatched_model_is_refused_and_the_old_one_keeps_serving(world, models, tmp_path, candidates):
    live, _ = candidates
    v1, v2 = _version(models["search"]), _version(models["search_v2"])
    # A search model whose card claims the recs service: its features differ from that service's.
    wrong = tmp_path / "wrong_service"
    shutil.copytree(models["search"], wrong)
    card = json.loads((wrong / "card.json").read_text())
    card.update(version=card["version"] + "-recs-service", feature_service="recs_ranker_v1")
    (wrong / "card.json").write_text(json.dumps(card))
    root = tmp_path / "registry"
    settings, registry = _registry(
        world, root, [models["search"], models["search_v2"], models["recs"], wrong], [models["search"], models["recs"]]
    )
    with running_app(settings, RANKER_API_TOKEN=TOKEN) as app:
        client = app.test_client()
        failed_key = ("ranker_model_loads_total", ("result", "failed"), ("surface", "search"))
        failed_before = _metrics(client.get("/metrics").get_data(as_text=True)).get(failed_key, 0)
        # 1. model.txt altered in the registry after publish: sha256 no longer matches.
        model_txt = root / "search_ranker" / "versions" / v2 / "model.txt"
        model_txt.write_text(model_txt.read_text().replace("shrinkage", "shrinkage ", 1))
        registry.promote("search_ranker", v2, stage="production", gate=None, force=True, reason="test")
        outcome = _admin(client).get_json()["surfaces"]["search"]
        assert outcome["status"] == "failed" and "sha256" in outcome["error"], outcome
        assert outcome["version"] == v1
        assert _rank(client, "search", live, headers=AUTH).get_json()["model"]["version"] == v1
        # 2. a card whose features differ from its feature service.
        registry.promote("search_ranker", card["version"], stage="production", gate=None, force=True, reason="test")
        outcome = _admin(client).get_json()["surfaces"]["search"]
        assert outcome["status"] == "failed" and "feature service" in outcome["error"], outcome
        response = _rank(client, "search", live, headers=AUTH)
        assert response.status_code == 200 and response.get_json()["model"]["version"] == v1
        samples = _metrics(client.get("/metrics").get_data(as_text=True))
        assert samples[failed_key] - failed_before == 2
        assert client.get("/readyz").status_code == 200  # still serving a verified model


def test_poller_picks_up_a_promotion(world, models, tmp_path, candidates):
    v2 = _version(models["search_v2"])
    settings, registry = _registry(
        world, tmp_path / "registry", [models["search"], models["search_v2"]], [models["search"]]
    )
    with running_app(settings, RANKER_SURFACES="search", RANKER_RELOAD_INTERVAL_S=0.05) as app:
        registry.promote("search_ranker", v2, stage="production", gate=None, force=True, reason="test")
        deadline = time.monotonic() + 30
        while app.extensions["ranker"].models.get("search").version != v2:
            assert time.monotonic() < deadline, "the poller did not load the promoted version"
            time.sleep(0.02)
        assert _rank(app.test_client(), "search", candidates[0][:3]).get_json()["model"]["version"] == v2
    assert app.extensions["ranker"].models._thread is None  # stopped by close()


# ------------------------------------------------------------------------------------------ degraded mode


@pytest.fixture()
def private_redis(tmp_path):
    """A redis-server of this test alone (it gets killed), on a free loopback port."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server binary not installed: the degraded-mode test needs a real server")
    port = _free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    seen = []
    for raw in proc.stdout:
        seen.append(raw.decode(errors="replace"))
        if "Ready to accept connections" in seen[-1]:
            break
    else:
        pytest.fail("redis-server exited before it was ready:\n" + "".join(seen))
    try:
        yield proc, f"redis://127.0.0.1:{port}/0"
    finally:
        proc.stdout.close()
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.redis
def test_degraded_mode_when_redis_dies(world, models, served, tmp_path, private_redis, candidates):
    from ranker.features.materialize import materialize

    proc, url = private_redis
    live, sold = candidates
    # A private copy of the world's home: materializing into Redis must not touch the shared Feast registry.
    home = tmp_path / "home"
    shutil.copytree(world.home, home, ignore=shutil.ignore_patterns("artifacts", "__pycache__"))
    settings = Settings(home=home, online_store="redis", redis_url=url, registry_uri=served.registry_uri)
    materialize(settings, full=True)
    budget_ms = 150
    with running_app(settings, RANKER_FEATURE_TIMEOUT_MS=budget_ms) as app:
        client = app.test_client()
        items = live[:12] + sold[:2]
        ok = _rank(client, "recs", items).get_json()
        assert ok["degraded"] is False and ok["removed_sold"] == 2
        assert client.get("/readyz").status_code == 200

        def degraded_answer(*reasons: str) -> dict:
            started = time.perf_counter()
            response = _rank(client, "recs", items)
            elapsed = time.perf_counter() - started
            assert response.status_code == 200, response.get_data(as_text=True)
            body = response.get_json()
            assert body["degraded"] is True and body["degraded_reason"] in reasons, body
            assert elapsed < budget_ms / 1000 + 0.35, f"degraded answer took {elapsed * 1000:.0f} ms"
            return body

        # 1. A hung store (process stopped: connections are accepted, nothing answers): the budget holds.
        proc.send_signal(signal.SIGSTOP)
        try:
            for _ in range(2):
                # Our deadline or the store's socket timeout (the same budget) fires first.
                body = degraded_answer("timeout", "store_unavailable")
            assert client.get("/readyz").status_code == 503
        finally:
            proc.send_signal(signal.SIGCONT)
        # It comes back: the next requests use the store again.
        assert _rank(client, "recs", items).get_json()["degraded"] is False
        # 2. A dead store: connection refused.
        proc.terminate()
        proc.wait(timeout=10)
        for _ in range(3):
            body = degraded_answer("store_unavailable")
        # Sold listings seen before the outage stay removed; the rest come back once each.
        assert body["removed_sold"] == 2
        assert sorted(i["item_id"] for i in body["items"]) == sorted(live[:12])
        # Fallback order: last-known popularity (item_clicks_7d), ties in the caller's order.
        scores = [i["score"] for i in body["items"]]
        assert scores == sorted(scores, reverse=True)
        # Never-seen listings still come back, after remembered popular ones or in request order.
        unseen = _rank(client, "recs", ["fresh-1", "fresh-2", "fresh-3"]).get_json()
        assert [i["item_id"] for i in unseen["items"]] == ["fresh-1", "fresh-2", "fresh-3"]
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert any("online store" in r for r in ready.get_json()["reasons"])
        samples = _metrics(client.get("/metrics").get_data(as_text=True))
        assert sum(v for k, v in samples.items() if k[0] == "ranker_degraded_responses_total") >= 4


@pytest.mark.redis
def test_readiness_refuses_an_online_store_that_holds_nothing(
    world, models, served, tmp_path, private_redis, candidates
):
    """The new user's trap: a scorer pointed at a Redis nobody loaded answers every request with
    defaults, not degraded. /readyz says why it is not ready until a plain materialize loads it; then
    the scores equal those served from the loaded sqlite store."""
    from ranker.features.materialize import materialize

    _, url = private_redis
    live = candidates[0][:12]
    home = tmp_path / "home"  # a private copy: materializing must not touch the shared Feast registry
    shutil.copytree(world.home, home, ignore=shutil.ignore_patterns("artifacts", "__pycache__"))
    settings = Settings(home=home, online_store="redis", redis_url=url, registry_uri=served.registry_uri)
    with running_app(settings) as app:
        client = app.test_client()
        ready = client.get("/readyz")
        assert ready.status_code == 503
        body = ready.get_json()
        assert body["surfaces"]["search"]["online_store"] == "empty"
        assert "listing_fv" in body["surfaces"]["search"]["empty_views"]
        assert any("holds no rows for" in r and "ranker features materialize" in r for r in body["reasons"])
        summary = materialize(settings)  # not --full: the empty store's missing marker decides
        assert summary["rows"] > 0 and {v["load"] for v in summary["views"].values()} == {"full"}
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.get_json()
        from_redis = _rank(client, "recs", live).get_json()
    with running_app(served) as app:
        from_sqlite = _rank(app.test_client(), "recs", live).get_json()
    assert from_redis["degraded"] is False
    assert [(i["item_id"], i["score"]) for i in from_redis["items"]] == [
        (i["item_id"], i["score"]) for i in from_sqlite["items"]
    ]


# ------------------------------------------------------------------------------------------ gunicorn


@pytest.mark.slow
def test_ranker_serve_runs_gunicorn(world, served, candidates, tmp_path):
    import requests

    port = _free_port()
    env = {
        **os.environ,
        "RANKER_HOME": str(world.home),
        "RANKER_REGISTRY_URI": served.registry_uri,
        "RANKER_RELOAD_INTERVAL_S": "0",
        "RANKER_FEATURE_TIMEOUT_MS": "5000",
        "HOME": str(tmp_path),  # anything gunicorn might write under ~ lands here
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    # `serve` is registered here too in case pipelines/cli.py does not list cmd_serve yet.
    script = (
        "import sys; from pipelines import cli, cmd_serve; cmd_serve.register(cli.cli); "
        "cli.cli.main(args=sys.argv[1:], prog_name='ranker')"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, "serve", "--port", str(port), "--workers", "2", "--log-level", "warning"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail("ranker serve exited early:\n" + proc.stdout.read().decode(errors="replace"))
            try:
                if requests.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:  # refused, or queued while the workers load the models
                pass
            assert time.monotonic() < deadline, "gunicorn did not answer /healthz in time"
            time.sleep(0.1)
        live, _ = candidates
        for _ in range(6):  # new connections: the two workers share them
            response = requests.post(
                f"{base}/v1/rank",
                json={
                    "surface": "recs",
                    "user_id": "u000001",
                    "items": live[:10],
                    "context": {"timestamp": REQUEST_TS},
                },
                timeout=30,
            )
            assert response.status_code == 200, response.text
            assert len(response.json()["items"]) == 10 and response.json()["degraded"] is False
        # Prometheus multiprocess mode: /metrics adds up both workers, whichever answers it.
        samples = _metrics(requests.get(f"{base}/metrics", timeout=10).text)
        assert samples[("ranker_rank_requests_total", ("status", "200"), ("surface", "recs"))] == 6
        foreign = sorted({key[0] for key in samples if not key[0].startswith("ranker_")})
        assert not foreign, f"/metrics serves families that are not the scorer's: {foreign}"
        _check_connection_close(port)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert not (tmp_path / ".gunicorn").exists()


def _http_exchange(port: int, raw: bytes) -> tuple[socket.socket, bytes]:
    """Send one raw request and read the answer up to the server's end of stream; the socket is
    returned open (the caller decides when the client side closes)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(raw)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return sock, received


def _check_connection_close(port: int) -> None:
    """The workers (2) close a connection once answered, without waiting for the client to close
    its side (gunicorn's graceful close waits up to 2 s for it, the worker serving no one); when
    request bytes are left unread, the complete answer still arrives (graceful drain)."""
    get = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    idle = []
    try:
        for _ in range(2):  # two clients that read their answer and keep their sockets open
            sock, answer = _http_exchange(port, get)
            idle.append(sock)
            assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
        started = time.monotonic()
        sock, answer = _http_exchange(port, get)
        sock.close()
        assert answer.startswith(b"HTTP/1.1 200")
        assert time.monotonic() - started < 1.0, "a worker waited for an idle client to close"
        # A body over the limit is answered (413) before it is read: bytes stay unread.
        head = b"POST /v1/rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (
            4 << 20
        )
        sock, answer = _http_exchange(port, head + b" " * 30_000)
        sock.close()
        status, _, body = answer.partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 413"), answer[:200]
        assert json.loads(body)["error"]["code"] == "payload_too_large"
    finally:
        for sock in idle:
            sock.close()


def test_serve_refuses_a_bad_setting_before_starting_workers():
    from click.testing import CliRunner

    from pipelines import cli, cmd_serve

    cmd_serve.register(cli.cli)
    result = CliRunner().invoke(
        cli.cli, ["serve", "--port", "0", "--workers", "1"], env={"RANKER_COMPILED_TREES": "maybe"}
    )
    assert result.exit_code == 2, result.output
    assert "RANKER_COMPILED_TREES='maybe' is not a valid bool" in result.output
    assert "Traceback" not in result.output


# ------------------------------------------------------------------------------------------ benchmarks


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.parametrize(
    "script,args",
    [
        ("rank_latency.py", ["--requests", "5", "--sizes", "5", "20", "--no-anchor"]),
        ("rank_load.py", ["--requests", "60", "--candidates", "20", "--clients", "2"]),
        ("rank_load.py", ["--rates", "20", "--duration", "1", "--candidates", "20", "--connections", "2"]),
        ("resp_vs_hiredis.py", ["--requests", "5", "--candidates", "20"]),
        ("online_features.py", ["--sizes", "5", "20", "--requests", "6", "--feast-requests", "3", "--store", "both"]),
    ],
)
def test_benchmark_scripts_run(served, script, args):
    """The scorer benchmarks run end to end on a trained home (their own redis-server and gunicorn)
    and report error-free figures; the figures themselves are for docs/benchmarks.md, not asserted."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server binary not installed: the scorer benchmarks start their own")
    # A generous feature budget: "degraded 0" then means the store answered, whatever the host's hiccups.
    env = {
        **os.environ,
        "RANKER_HOME": str(served.home),
        "RANKER_REGISTRY_URI": served.registry_uri,
        "RANKER_FEATURE_TIMEOUT_MS": "5000",
    }
    env.pop("RANKER_ONLINE_STORE", None)
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert out.count("machine speed:") == 2, out
    if script == "rank_latency.py":
        for size in (5, 20):
            for path in ("http", "in-process"):
                line = next(li for li in out.splitlines() if f"{size} candidates  {path}" in li)
                assert "p99" in line and line.rstrip().endswith("errors 0"), line
    elif script == "rank_load.py" and "--rates" in args:  # open loop: one line per offered rate
        line = next(li for li in out.splitlines() if "offered" in li and "achieved" in li)
        assert "errors 0  degraded 0" in line, out
    elif script == "rank_load.py":
        assert "throughput" in out and "errors 0   degraded 0" in out, out
    elif script == "resp_vs_hiredis.py":  # both readers gave the same matrices on every request
        assert "identical matrices on 25 of 25 requests" in out, out
    else:  # per store and size: the fast path's matrices equal Feast's on every compared request
        rows = [li for li in out.splitlines() if re.match(r"\s+(5|20) \|", li)]
        assert len(rows) == 4, out
        for line in rows:
            assert re.search(r"\| 3/3 \(cached 3/3, hit rate", line), line


# ------------------------------------------------------------------------------------------ schema fuzzing


@pytest.mark.slow
def test_schemathesis_finds_no_failure(served):
    """schemathesis against a live scorer (`ranker serve`, one gunicorn worker): its coverage cases
    of the request schema, then schema-valid bodies (positive) and schema-invalid ones (negative) for
    every operation of /openapi.json, a bounded number each, fixed seed; every check must pass: no 5xx,
    documented status codes and content types, answers valid under the response schemas, valid data
    accepted and invalid data refused."""
    import schemathesis

    from pipelines.cmd_serve import serving

    port = _free_port()
    env = {
        **os.environ,
        "RANKER_HOME": str(served.home),
        "RANKER_REGISTRY_URI": served.registry_uri,
        "RANKER_FEATURE_TIMEOUT_MS": "5000",
        "RANKER_RELOAD_INTERVAL_S": "0",
        "RANKER_SERVED_LOG_SAMPLE": "0",
        "RANKER_MAX_CANDIDATES": "50",
    }
    env.pop("RANKER_ONLINE_STORE", None)
    env.pop("RANKER_API_TOKEN", None)
    failures: list[str] = []
    with serving(port=port, workers=1, env=env, log_level="warning") as base:
        schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
        # More candidates than RANKER_MAX_CANDIDATES is refused with 413 (documented), not 400/422.
        rejection = schema.config.checks.negative_data_rejection
        rejection.expected_statuses = [*rejection.expected_statuses, "413"]
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {op.path for op in operations} >= {"/v1/rank", "/readyz", "/healthz"}
        # 1. The coverage phase: schemathesis' systematic edge cases of the request schema (boundaries,
        # each constraint broken once, nulls where the schema forbids them...), every one sent.
        rank_op = next(op for op in operations if op.path == "/v1/rank")
        modes = [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
        coverage = list(
            schema.iter_coverage_cases(
                rank_op, generation_modes=modes, generation_config=schema.config.generation_for(operation=rank_op)
            )
        )
        assert len(coverage) >= 50
        for case in coverage:
            try:
                case.call_and_validate(base_url=base, timeout=30)
            except AssertionError as exc:
                failures.append(f"POST /v1/rank (coverage) {json.dumps(case.body)[:300]}: {str(exc)[:600]}")
        # 2. Fuzzing: random valid and invalid requests, a bounded number per operation.
        for operation in operations:
            for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
                if mode is schemathesis.GenerationMode.NEGATIVE and operation.path != "/v1/rank":
                    continue  # the other routes take no parameters and no body: nothing to get wrong
                if operation.path == "/admin/reload":
                    continue  # needs the admin token, and reloads: tested in its own tests

                run = _fuzz_case(operation, mode, base, failures)
                try:
                    run()
                except Exception:  # noqa: BLE001 - collected above with its case
                    pass
    assert not failures, "\n\n".join(failures)


def _fuzz_case(operation, mode, base: str, failures: list[str]):
    """One Hypothesis test of ``operation`` in ``mode``: each failing case is recorded in ``failures``."""
    import hypothesis
    from hypothesis import HealthCheck

    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis.settings(
        max_examples=40 if operation.path == "/v1/rank" else 5,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
    )
    def run(case):
        try:
            case.call_and_validate(base_url=base, timeout=30)
        except AssertionError as exc:  # schemathesis' failures are AssertionError subclasses
            failures.append(f"{operation.method.upper()} {operation.path} ({mode.value}): {str(exc)[:600]}")
            raise

    return run

"""Monitoring end to end on the small simulated world: the served-feature log written by the real
scorer (Flask test client, real sqlite online store, real models from a private registry), skew
against Feast's point-in-time recomputation (clean, then with a deliberate serving-side bug), drift
(quiet on training data, loud on a shifted feature), the A/B split and the online metrics of an
A/B between a trained model and a no-skill one through the live environment, and the CLI."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from api.app import create_app
from ranker.config import Settings
from ranker.monitoring.abstats import SequentialOptions
from ranker.monitoring.abtest import load_variants, parse_variants
from ranker.monitoring.servedlog import (
    ServedLogConfig,
    ServedLogError,
    ServedLogWriter,
    ServedRecord,
    log_store,
    read_served_log,
)
from ranker.registry import Registry
from ranker.registry.store import LocalStore

# The world's events end on 2026-10-09 00:00, its last daily snapshot. Requests six hours later see,
# online and point-in-time alike, that snapshot (within the one-day TTLs).
REQUEST_TS = pd.Timestamp("2026-10-09T06:00:00", tz="UTC").timestamp()
BASE = {"RANKER_RELOAD_INTERVAL_S": 0, "RANKER_FEATURE_TIMEOUT_MS": 5000, "RANKER_SERVED_LOG_SAMPLE": 1.0}
AB = {
    "search": [
        {"name": "control", "model": "production", "weight": 0.5},
        {"name": "treatment", "model": "staging", "weight": 0.5},
    ]
}


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def trained(world):
    """A search model trained normally and a no-skill one (labels shuffled within requests)."""
    from ranker.features.materialize import materialize
    from ranker.monitoring.live import train_no_skill_model
    from ranker.training.dataset import DatasetOptions, build_dataset
    from ranker.training.train import TrainOptions, train_model

    materialize(world, full=True)
    build_dataset(world, DatasetOptions(surface="search", chunk_rows=50_000))
    good = train_model(world, TrainOptions(surface="search"))
    bad = train_no_skill_model(world, "search", seed=3)
    return {"good": good, "bad": bad}


@pytest.fixture(scope="module")
def registry_settings(world, trained, tmp_path_factory) -> Settings:
    """A private registry: the trained model in production, the no-skill one in staging."""
    root = tmp_path_factory.mktemp("mon-registry")
    settings = world.with_(registry_uri=root.resolve().as_uri())
    registry = Registry.from_settings(settings)
    for stage, folder in (("production", trained["good"]), ("staging", trained["bad"])):
        registry.publish(folder)
        card = json.loads((folder / "card.json").read_text())
        registry.promote(card["name"], card["version"], stage=stage, gate=None, force=True, reason="test")
    return settings


@contextlib.contextmanager
def scorer(settings: Settings, log_dir: Path, features_factory=None, **config):
    app = create_app(
        test_config={
            **BASE,
            "RANKER_SURFACES": "search",
            "RANKER_SERVED_LOG_URI": log_dir.resolve().as_uri(),
            **config,
        },
        settings=settings,
        features_factory=features_factory,
    )
    try:
        yield app
    finally:
        app.extensions["ranker"].close()


@pytest.fixture()
def live_env(world):
    """Fresh per test (seeded): each test's requests and engagement draws do not depend on the others."""
    from ranker.monitoring.live import LiveEnvironment

    return LiveEnvironment(world, surfaces=("search",), last_days=2, seed=1)


def _send(client, live_env, n: int, seed: int = 0) -> list[dict]:
    """n logged search requests replayed at REQUEST_TS; returns (request, answer) pairs."""
    out = []
    for request in live_env.sample(n):
        body = {
            "surface": "search",
            "user_id": request.user_id,
            "items": list(request.items),
            "limit": 10,
            "query": request.query or "",
            "context": {"timestamp": REQUEST_TS},
        }
        response = client.post("/v1/rank", json=body)
        assert response.status_code == 200, response.get_data(as_text=True)
        out.append({"request": request, "answer": response.get_json(), "body": body})
    return out


class SkewedFeatures:
    """The real online feature path with a deliberate serving-side bug: ``discount_pct`` is served as
    a percentage (x100) instead of the fraction training used."""

    def __init__(self, inner, feature: str = "discount_pct"):
        self.inner = inner
        self.feature = feature
        self.feature_names = inner.feature_names

    def fetch(self, **kwargs):
        from ranker.serving.features import FeatureRows

        rows = self.inner.fetch(**kwargs)
        matrix = rows.matrix.copy()
        j = self.feature_names.index(self.feature)
        matrix[:, j] = matrix[:, j] * np.float32(100)
        return FeatureRows(matrix, rows.known, rows.sold, rows.feature_names)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _skewed_factory(settings, *, service, timeout_s, item_cache_ttl_s):
    from ranker.serving.features import OnlineFeatures

    return SkewedFeatures(
        OnlineFeatures(settings, service=service, timeout_s=timeout_s, item_cache_ttl_s=item_cache_ttl_s)
    )


# ------------------------------------------------------------------------------------------ served log


def _record(i: int, n_items: int = 20, k: int = 3, surface: str = "search") -> ServedRecord:
    rng = np.random.default_rng(i)
    return ServedRecord(
        request_id=f"r{i}",
        request_ts=1_790_000_000.0 + i,
        logged_at=time.time(),
        surface=surface,
        user_id=f"u{i}",
        query=None,
        model_name="m",
        model_version="v1",
        variant="control",
        feature_service="svc",
        feature_names=tuple(f"f{j}" for j in range(k)),
        degraded=False,
        item_ids=[f"i{j}" for j in range(n_items)],
        scores=rng.normal(size=n_items),
        ranks=np.arange(1, n_items + 1, dtype=np.int32),
        matrix=rng.normal(size=(n_items, k)).astype(np.float32),
    )


class SlowStore(LocalStore):
    """A real local store whose writes wait for a signal (a stalled disk or a slow S3)."""

    def __init__(self, root: Path):
        super().__init__(root=root)
        import threading

        self.gate = threading.Event()

    def put(self, key, data, **kwargs):
        assert self.gate.wait(30), "test never released the store"
        return super().put(key, data, **kwargs)


def test_writer_never_blocks_counts_drops_and_rotates(tmp_path):
    store = SlowStore(tmp_path / "log")
    events: dict[str, int] = {}
    config = ServedLogConfig(sample_rate=1.0, queue_size=4, rotate_rows=40, rotate_seconds=3600)
    writer = ServedLogWriter(store, config, on_event=lambda kind, n: events.__setitem__(kind, events.get(kind, 0) + n))
    try:
        # The writer thread takes the first records and stalls in put(); the queue then fills up.
        started = time.perf_counter()
        accepted = sum(writer.submit(_record(i)) for i in range(50))
        elapsed = time.perf_counter() - started
        assert elapsed < 0.5, f"submit must never wait for the writer ({elapsed:.3f} s for 50 records)"
        assert writer.dropped == 50 - accepted and writer.dropped >= 40
        assert events["dropped_queue_full"] == writer.dropped
        store.gate.set()
        assert writer.flush(timeout=30)
    finally:
        store.gate.set()
        writer.close()
    frames = read_served_log(store)
    assert len(frames) == 1 and len(frames[0].rows) == accepted * 20
    # Rotation by rows: 40 rows per file = 2 records per file (the final flush may hold fewer).
    assert len(writer.files) >= accepted // 2
    first = _record(0)
    rows = frames[0].rows
    got = frames[0].matrix[(rows.request_id == "r0").to_numpy()]
    np.testing.assert_array_equal(got, first.matrix)  # the exact float32 vectors


def test_writer_rotates_by_time_and_survives_write_errors(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the log folder should be")
    events: dict[str, int] = {}
    writer = ServedLogWriter(
        LocalStore(root=blocker),
        ServedLogConfig(sample_rate=1.0, rotate_seconds=0.05),
        on_event=lambda kind, n: events.__setitem__(kind, events.get(kind, 0) + n),
    )
    try:
        assert writer.submit(_record(1))
        deadline = time.monotonic() + 10
        while events.get("dropped_write_error", 0) < 20 and time.monotonic() < deadline:  # time-rotated write fails
            time.sleep(0.01)
        assert events["dropped_write_error"] == 20
        assert writer.submit(_record(2))  # the thread is still alive and accepting
    finally:
        writer.close()


def test_served_log_on_s3(tmp_path, monkeypatch):
    from tests.s3_server import aws_env, create_bucket, moto_s3_server

    with moto_s3_server() as endpoint:
        for key, value in aws_env(endpoint=endpoint, home=tmp_path).items():
            monkeypatch.setenv(key, value)
        create_bucket(endpoint=endpoint, bucket="logs")
        store = log_store(Settings(home=tmp_path), "s3://logs/served")
        writer = ServedLogWriter(store, ServedLogConfig(sample_rate=1.0))
        for i in range(3):
            writer.submit(_record(i, surface="recs"))
        writer.close()
        keys = store.list_keys("recs")
        assert keys and all(k.startswith("recs/date=") and k.endswith(".parquet") for k in keys)
        frames = read_served_log(store, surface="recs")
        assert len(frames[0].rows) == 60 and frames[0].feature_names == ("f0", "f1", "f2")


def test_reading_an_empty_log_says_what_to_do(tmp_path):
    with pytest.raises(ServedLogError, match="RANKER_SERVED_LOG_SAMPLE"):
        read_served_log(LocalStore(root=tmp_path / "empty"))


# ------------------------------------------------------------------------------------------ A/B


def test_variant_assignment_is_deterministic_and_follows_weights():
    experiments = parse_variants(
        {"search": [{"name": "a", "model": "production", "weight": 3}, {"name": "b", "model": "staging", "weight": 7}]},
        surfaces=("search", "recs"),
        salt="s1",
    )
    search = experiments["search"]
    users = [f"u{i:06d}" for i in range(20_000)]
    first = [search.assign(u).name for u in users]
    assert first == [search.assign(u).name for u in users]  # a user stays in one variant
    share_a = first.count("a") / len(first)
    assert abs(share_a - 0.3) < 0.015, share_a
    assert {experiments["recs"].assign(u).name for u in users[:100]} == {"control"}  # no experiment: control
    other_salt = parse_variants(
        {"search": [{"name": "a", "weight": 3}, {"name": "b", "weight": 7}]}, surfaces=("search",), salt="s2"
    )["search"]
    moved = np.mean([other_salt.assign(u).name != v for u, v in zip(users, first, strict=False)])
    assert 0.3 < moved < 0.55  # a new salt reshuffles (expected 2 * 0.3 * 0.7 = 0.42)


@pytest.mark.parametrize(
    "config, message",
    [
        ("{not json", "not valid JSON"),
        ({"shop": []}, "does not serve"),
        ({"search": []}, "non-empty list"),
        ({"search": [{"name": "a b"}]}, "name must be"),
        ({"search": [{"name": "a", "weight": 0}]}, "weight must be"),
        ({"search": [{"name": "a"}, {"name": "a"}]}, "repeats"),
    ],
)
def test_variant_config_errors_are_precise(config, message):
    from ranker.errors import RankerError

    with pytest.raises(RankerError, match=message):
        parse_variants(config, surfaces=("search", "recs"))


def test_variants_file_is_read(tmp_path):
    path = tmp_path / "variants.json"
    path.write_text(json.dumps(AB))
    experiments = load_variants("", str(path), surfaces=("search",))
    assert [v.model for v in experiments["search"].variants] == ["production", "staging"]


def test_scorer_logs_the_exact_served_vectors_with_variant(registry_settings, live_env, tmp_path):
    log_dir = tmp_path / "log"
    with scorer(registry_settings, log_dir, RANKER_VARIANTS=AB) as app:
        client = app.test_client()
        sent = _send(client, live_env, 30)
        state = app.extensions["ranker"]
        assert state.served_log.flush(timeout=30)
        metrics = client.get("/metrics").get_data(as_text=True)
        # Same user, same variant, every time.
        user = sent[0]["body"]
        again = {client.post("/v1/rank", json=user).get_json()["variant"] for _ in range(3)}
        assert again == {sent[0]["answer"]["variant"]}
        models = {v: state.models.get("search", v) for v in ("control", "treatment")}
        assert models["control"].version != models["treatment"].version
        expected_rows = {}
        for s in sent[:5]:
            model = models[s["answer"]["variant"]]
            rows = model.features.fetch(
                user_id=s["body"]["user_id"],
                item_ids=s["body"]["items"],
                query=s["body"]["query"],
                request_ts=REQUEST_TS,
            )
            expected_rows[s["answer"]["request_id"]] = (s["body"]["items"], rows)
    assert "ranker_served_log_rows_total" in metrics
    clock = float(metrics.split('ranker_model_last_check_timestamp_seconds{surface="search"} ')[1].split()[0])
    assert time.time() - 600 < clock <= time.time()
    frames = read_served_log(LocalStore(root=log_dir), since=pd.Timestamp.now(tz="UTC") - pd.Timedelta("1h"))
    rows = frames[0].rows
    answers = {s["answer"]["request_id"]: s["answer"] for s in sent}
    assert set(answers) <= set(rows.request_id) and rows.request_id.nunique() == len(answers) + 3  # + the repeats
    assert {row.variant for row in rows.itertuples()} == {"control", "treatment"}
    for request_id, answer in answers.items():
        part = rows[rows.request_id == request_id]
        assert (part.variant == answer["variant"]).all() and (part.model_version == answer["model"]["version"]).all()
        returned = part[part["rank"].notna()].sort_values("rank")
        assert returned.item_id.tolist() == [i["item_id"] for i in answer["items"]]
        np.testing.assert_allclose(returned.score.to_numpy(), [i["score"] for i in answer["items"]], rtol=1e-12)
        assert (part.request_ts == pd.Timestamp(REQUEST_TS, unit="s", tz="UTC")).all()
    for request_id, (items, fetched) in expected_rows.items():
        mask = (rows.request_id == request_id).to_numpy()
        logged = frames[0].matrix[mask]
        keep = [i for i, sold in zip(items, fetched.sold, strict=False) if not sold]
        assert rows.item_id[mask].tolist() == keep
        np.testing.assert_array_equal(logged, fetched.matrix[~fetched.sold])  # bit for bit


def test_a_variant_without_a_model_serves_the_control_and_is_reported(world, trained, tmp_path, live_env):
    settings = world.with_(registry_uri=(tmp_path / "registry").resolve().as_uri())
    registry = Registry.from_settings(settings)
    registry.publish(trained["good"])
    card = json.loads((trained["good"] / "card.json").read_text())
    registry.promote(card["name"], card["version"], stage="production", gate=None, force=True, reason="test")
    with scorer(settings, tmp_path / "log", RANKER_VARIANTS=AB) as app:  # no staging version exists
        client = app.test_client()
        ready = client.get("/readyz")
        sent = _send(client, live_env, 20)
        text = client.get("/metrics").get_data(as_text=True)
    assert ready.status_code == 503
    assert any("variant treatment (staging) has no model loaded" in r for r in ready.get_json()["reasons"])
    assert {s["answer"]["variant"] for s in sent} == {"control"}
    assert {s["answer"]["model"]["version"] for s in sent} == {card["version"]}
    # The registry never answered for the treatment: the reload clock stays at 0 (the alert fires).
    assert 'ranker_model_last_check_timestamp_seconds{surface="search"} 0.0' in text


def test_a_failing_log_never_fails_a_request(registry_settings, live_env, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with scorer(registry_settings, blocker, RANKER_SERVED_LOG_ROTATE_S=0.05) as app:
        client = app.test_client()
        _send(client, live_env, 3)
        assert app.extensions["ranker"].served_log.flush(timeout=30)
        text = client.get("/metrics").get_data(as_text=True)
    assert 'ranker_served_log_dropped_total{reason="write_error"}' in text
    value = float(text.split('ranker_served_log_dropped_total{reason="write_error"} ')[1].split()[0])
    assert value > 0


# ------------------------------------------------------------------------------------------ skew


def test_skew_is_clean_then_names_the_feature_transformed_differently_at_serving(registry_settings, live_env, tmp_path):
    from ranker.monitoring.skew import SkewOptions, skew_report

    clean_dir, bug_dir = tmp_path / "clean", tmp_path / "bug"
    with scorer(registry_settings, clean_dir) as app:
        _send(app.test_client(), live_env, 12)
    with scorer(registry_settings, bug_dir, features_factory=_skewed_factory) as app:
        _send(app.test_client(), live_env, 12)
    clean = skew_report(registry_settings, read_served_log(LocalStore(root=clean_dir)), SkewOptions())
    assert clean["ok"] and clean["rows"] > 100
    assert max(f["mismatch_rate"] for f in clean["features"]) == 0.0, clean["features"][:3]
    buggy = skew_report(registry_settings, read_served_log(LocalStore(root=bug_dir)), SkewOptions())
    assert not buggy["ok"]
    assert buggy["failed"] == ["discount_pct"]
    worst = buggy["features"][0]
    assert worst["feature"] == "discount_pct" and worst["mismatch_rate"] > 0.5
    assert worst["example"]["served"] == pytest.approx(worst["example"]["recomputed"] * 100, rel=1e-5)


# ------------------------------------------------------------------------------------------ drift


def _training_records(world: Settings, card: dict, *, shift: dict | None = None, n_requests: int = 150) -> list:
    """Requests made of training-set rows (the unchanged population), optionally shifted."""
    from ranker.training.dataset import load_dataset

    df, _ = load_dataset(world, "search")
    features = card["features"]
    df = df[df.event_timestamp < pd.Timestamp(card["split"]["train_end"])]
    ids = df.request_id.drop_duplicates().sample(n_requests, random_state=0)
    records = []
    for rid in ids:
        part = df[df.request_id == rid]
        matrix = part[features].to_numpy(dtype=np.float32).copy()
        for feature, factor in (shift or {}).items():
            matrix[:, features.index(feature)] *= np.float32(factor)
        records.append(
            ServedRecord(
                request_id=str(rid),
                request_ts=REQUEST_TS,
                logged_at=time.time(),
                surface="search",
                user_id=str(part.user_id.iloc[0]),
                query=None,
                model_name=card["name"],
                model_version=card["version"],
                variant="control",
                feature_service=card["feature_service"],
                feature_names=tuple(features),
                degraded=False,
                item_ids=part.item_id.astype(str).tolist(),
                scores=np.zeros(len(part)),
                ranks=np.arange(1, len(part) + 1, dtype=np.int32),
                matrix=matrix,
            )
        )
    return records


def _log(records: list, folder: Path) -> list:
    writer = ServedLogWriter(LocalStore(root=folder), ServedLogConfig(sample_rate=1.0))
    for r in records:
        assert writer.submit(r)
    writer.close()
    return read_served_log(LocalStore(root=folder))


def test_drift_quiet_on_the_training_population_and_catches_a_shifted_feature(
    world, registry_settings, trained, tmp_path
):
    from prometheus_client import generate_latest

    from ranker.monitoring.drift import DriftOptions, cards_for, drift_report, reference_scores
    from ranker.monitoring.export import drift_metrics

    card = json.loads((trained["good"] / "card.json").read_text())
    registry = Registry.from_settings(registry_settings)
    same = _log(_training_records(world, card), tmp_path / "same")
    cards = cards_for(same, registry)
    key = (card["name"], card["version"])
    booster = registry.fetch(key[0], version=key[1]).booster()
    for frame in same:  # score the logged vectors with the model, as the scorer would
        frame.rows["score"] = booster.predict(frame.matrix)
    refs = {key: reference_scores(registry, *key, cards[key])}
    assert refs[key] is not None and len(refs[key]) > 100
    # No served reference: shown, not judged (the training rows are another policy's impressions) ...
    unjudged = drift_report(same, cards, DriftOptions(), refs)
    (entry,) = unjudged["models"]
    assert unjudged["ok"] and not entry["judged"] and "like-with-like" in entry["unjudged_reason"]
    assert {f["verdict"] for f in entry["features"]} == {"unjudged"}
    assert "ranker_drift_max_psi{" not in generate_latest(drift_metrics(unjudged)).decode()
    # ... unless asked for: here the served rows are training rows, so the comparison is like with like.
    quiet = drift_report(same, cards, DriftOptions(against_training=True), refs)
    assert quiet["ok"], quiet["drifted"]
    model = quiet["models"][0]
    assert model["judged"] and max(f["psi"] for f in model["features"]) < 0.1
    assert model["score_psi"] is not None and model["score_psi"] < 0.25

    shifted = _log(_training_records(world, card, shift={"price": 3.0}), tmp_path / "shifted")
    for frame in shifted:
        frame.rows["score"] = booster.predict(frame.matrix)
    loud = drift_report(shifted, cards, DriftOptions(against_training=True), refs)
    assert not loud["ok"]
    # price is named; the scores may move with it (a model that uses price); nothing else drifts.
    assert f"{key[0]}:{key[1]}:price" in loud["drifted"]
    assert set(loud["drifted"]) <= {f"{key[0]}:{key[1]}:price", f"{key[0]}:{key[1]}:score"}
    assert loud["models"][0]["features"][0]["feature"] == "price" and loud["models"][0]["features"][0]["psi"] > 1.0


def day_frames(df: pd.DataFrame, card: dict, folder: Path, *, transform=None, version: str | None = None) -> list:
    """The training-set rows of ``df`` as a served log (one record per request), optionally changed."""
    features = card["features"]
    if transform is not None:
        df = transform(df.copy())
    records = []
    for rid, part in df.groupby("request_id", sort=True):
        matrix = part[features].to_numpy(dtype=np.float32)
        records.append(
            ServedRecord(
                request_id=str(rid),
                request_ts=REQUEST_TS,
                logged_at=time.time(),
                surface="search",
                user_id=str(part.user_id.iloc[0]),
                query=None,
                model_name=card["name"],
                model_version=version or card["version"],
                variant="control",
                feature_service=card["feature_service"],
                feature_names=tuple(features),
                degraded=False,
                item_ids=part.item_id.astype(str).tolist(),
                scores=np.zeros(len(part)),
                ranks=np.arange(1, len(part) + 1, dtype=np.int32),
                matrix=matrix,
            )
        )
    return _log(records, folder)


def test_monitors_skip_and_name_an_unknown_model_version(registry_settings, trained, world, tmp_path, monkeypatch):
    """A stale log part (a version the registry never had) is counted and named; the rest is reported."""
    from ranker.training.dataset import load_dataset

    card = json.loads((trained["good"] / "card.json").read_text())
    df, _ = load_dataset(world, "search")
    df = df[df.request_id.isin(df.request_id.drop_duplicates().sample(120, random_state=1))]
    log_dir = tmp_path / "log"
    good = df[df.request_id < df.request_id.iloc[len(df) // 2]]
    stale = df[df.request_id >= df.request_id.iloc[len(df) // 2]]
    day_frames(good, card, log_dir)
    day_frames(stale, card, log_dir, version="20200101T000000Z-deadbeef")
    uri = log_dir.resolve().as_uri()
    drift = _cli(
        ["monitor", "drift", "--log-uri", uri, "--json", "--textfile-dir", str(tmp_path / "prom"), "--min-rows", "10"],
        monkeypatch,
        registry_settings,
    )
    # no served window a day earlier: the PSIs are shown and not judged, so the command succeeds
    assert drift.exit_code == 0 and "drift not judged: no like-with-like reference" in drift.output, drift.output
    report = json.loads(drift.output[: drift.output.rindex("}") + 1])
    assert [m["version"] for m in report["models"]] == [card["version"]]
    (skipped,) = report["skipped_versions"]
    assert skipped["version"] == "20200101T000000Z-deadbeef" and skipped["rows"] == int(len(stale))
    assert "skipped" in drift.output and "Traceback" not in drift.output
    for key in ("feature", "psi", "healthy_high", "threshold", "verdict"):
        assert key in report["models"][0]["features"][0]

    skew = _cli(
        ["monitor", "skew", "--log-uri", uri, "--json", "--textfile-dir", str(tmp_path / "prom")],
        monkeypatch,
        registry_settings,
    )
    assert skew.exit_code in (0, 1) and "Traceback" not in skew.output, skew.output
    skew_report = json.loads(skew.output[: skew.output.rindex("}") + 1])
    assert [s["version"] for s in skew_report["skipped_versions"]] == ["20200101T000000Z-deadbeef"]
    assert skew_report["rows"] == int(len(good))

    events = pd.DataFrame(
        {
            "event_type": "click",
            "timestamp": pd.Timestamp.now(tz="UTC"),
            "request_id": df.request_id.astype(str),
            "item_id": df.item_id.astype(str),
        }
    )
    events.to_parquet(tmp_path / "events.parquet")
    online = _cli(
        [
            "monitor",
            "online",
            "--log-uri",
            uri,
            "--json",
            "--events",
            str(tmp_path / "events.parquet"),
            "--textfile-dir",
            str(tmp_path / "prom"),
        ],
        monkeypatch,
        registry_settings,
    )
    assert online.exit_code == 0, online.output
    online_report = json.loads(online.output[: online.output.rindex("}") + 1])
    assert [s["version"] for s in online_report["skipped_versions"]] == ["20200101T000000Z-deadbeef"]
    (group,) = online_report["groups"]
    assert group["requests"] == int(good.request_id.nunique()) and group["ctr@10"]["low"] is not None


# ------------------------------------------------------------------------------------------ A/B + online


@pytest.mark.slow
def test_ab_through_the_scorer_finds_the_better_model(registry_settings, live_env, tmp_path):
    from ranker.monitoring.live import append_events, client_sender, read_events
    from ranker.monitoring.online import online_report, per_request, served_rankings

    log_dir = tmp_path / "log"
    with scorer(registry_settings, log_dir, RANKER_VARIANTS=AB) as app:
        # 1,000 requests: on this small world the CTR@10 gap is ~0.03, decided after 100-400 requests
        # across seeds (NDCG@10 after 20-200); 500 was not always enough.
        result = live_env.run(client_sender(app.test_client()), 1000, request_ts=REQUEST_TS, limit=20)
    assert result["failed"] == 0 and set(result["by_variant"]) == {"search/control", "search/treatment"}
    path = append_events(registry_settings, result["events"], folder=tmp_path / "events")
    events = read_events([path.parent])
    assert (events.event_type == "click").sum() > 100
    truth = result["utility"]
    assert truth["rank"].between(1, 20).all() and truth.request_id.nunique() == result["requests"]
    reqs = per_request(served_rankings(read_served_log(LocalStore(root=log_dir))), events, k=10, utility=truth)
    # Every served request has its top 10's mean hidden utility; the trained model's lists hold better listings.
    assert reqs["utility@10"].notna().all()
    by_variant = reqs.groupby("variant")["utility@10"].mean()
    assert by_variant["control"] > by_variant["treatment"], by_variant
    # This small world has ~150 searching users: a burn-in of 30 users per variant, not the default 100.
    report = online_report(
        reqs,
        k=10,
        weights={"search": {"control": 0.5, "treatment": 0.5}},
        sequential=SequentialOptions(burn_in_users=30),
    )
    assert {g["variant"] for g in report["groups"]} == {"control", "treatment"}
    (comparison,) = report["comparisons"]
    assert comparison["treatment"] == "treatment" and comparison["control"] == "control"
    assert comparison["srm"]["ok"] and comparison["rule"].startswith("mSPRT")
    ctr = comparison["ctr@10"]
    assert ctr["high"] < 0, ctr  # the trained model beats the no-skill one (user-level interval at the end)
    # Users repeat (requests drawn with replacement): the request-level se understates the user-level one.
    assert ctr["request_level_se"] < ctr["se"]
    assert "utility@10" in report["metrics"] and comparison["utility@10"]["high"] < 0, comparison["utility@10"]
    ndcg = comparison["ndcg@10"]
    assert ndcg["better"] == "control" and ndcg["requests_needed"] <= 1000, ndcg
    assert ndcg["sequential"]["high"] < 0
    if shutil.which("promtool"):  # the real exported figures of a healthy A/B: no monitor alert would fire
        from prometheus_client import generate_latest

        from ranker.monitoring.alertcheck import alerts_that_would_fire
        from ranker.monitoring.export import online_metrics
        from tests.conftest import REPO_ROOT

        text = generate_latest(online_metrics(report)).decode()
        assert "ranker_ab_srm_p_value" in text
        assert alerts_that_would_fire([text], REPO_ROOT / "infra" / "prometheus" / "alerts.yml") == []


# ------------------------------------------------------------------------------------------ CLI


def _cli(args: list[str], monkeypatch, settings: Settings):
    from click.testing import CliRunner

    from pipelines import cli

    monkeypatch.setenv("RANKER_HOME", str(settings.home))
    monkeypatch.setenv("RANKER_REGISTRY_URI", settings.registry_uri)
    if "monitor" not in cli.cli.commands:
        cli._register()
    return CliRunner().invoke(cli.cli, args)


@pytest.mark.parametrize(
    "args, message",
    [
        (["monitor", "skew", "--since", "yesterday-ish"], "--since='yesterday-ish' is not a time"),
        (["monitor", "drift", "--since", "2026-10-09", "--until", "2026-10-08"], "is not after"),
        (["monitor", "drift", "--log-uri", "ftp://x/y"], "RANKER_SERVED_LOG_URI"),
        (["monitor", "drift", "--reference-offset", "soon"], "--reference-offset='soon' is not a duration"),
        (["monitor", "online", "--variants", "{bad"], "is not valid JSON"),
        (["monitor", "online", "--alpha", "2"], "alpha must be within (0, 1)"),
        (["monitor", "ab-plan", "--mde", "0"], "--mde must be > 0"),
    ],
)
def test_monitor_commands_reject_bad_input_in_one_line(args, message, registry_settings, monkeypatch, tmp_path):
    result = _cli(args, monkeypatch, registry_settings)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_monitor_cli_skew_exit_codes_and_prometheus_textfile(registry_settings, live_env, tmp_path, monkeypatch):
    bug_dir = tmp_path / "bug"
    with scorer(registry_settings, bug_dir, features_factory=_skewed_factory) as app:
        _send(app.test_client(), live_env, 5)
    out = tmp_path / "prom"
    result = _cli(
        ["monitor", "skew", "--log-uri", bug_dir.resolve().as_uri(), "--textfile-dir", str(out)],
        monkeypatch,
        registry_settings,
    )
    assert result.exit_code == 1, result.output
    assert result.output.splitlines()[1].startswith("discount_pct")
    text = (out / "ranker_monitor_skew.prom").read_text()
    line = next(row for row in text.splitlines() if row.startswith('ranker_skew_mismatch_rate{feature="discount_pct"'))
    assert float(line.split()[-1]) > 0.3
    empty = _cli(
        ["monitor", "online", "--log-uri", bug_dir.resolve().as_uri(), "--events", str(tmp_path)],
        monkeypatch,
        registry_settings,
    )
    assert empty.exit_code == 2 and "no events" in empty.output

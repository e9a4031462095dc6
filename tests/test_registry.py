"""Model registry: the same tests against a local folder and a real S3 HTTP server (moto server mode).

Synchronisation uses barriers, never sleeps; the only network is loopback.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import sys
import threading
import time
import types
import uuid
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ranker.config import Settings
from ranker.errors import RankerError
from ranker.registry import (
    GateEvidence,
    GateFailed,
    GatePolicy,
    LocalStore,
    PreconditionFailed,
    Registry,
    S3Store,
    evaluate_gate,
    measure_predict_ms,
)
from tests.s3_server import aws_env, closed_port, create_bucket, moto_s3_server, s3_client, silent_listener

NAME = "search_ranker"
FEATURES = [f"f{i}" for i in range(5)]


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def s3_endpoint():
    with moto_s3_server() as endpoint:
        yield endpoint


@pytest.fixture(params=["local", "s3"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def settings(request, backend, tmp_path, monkeypatch) -> Settings:
    """Settings for an empty registry on ``backend``; the env is set too, for the CLI."""
    home = tmp_path / "home"
    monkeypatch.setenv("USER", "tester")
    if backend == "local":
        uri = ""
    else:
        # The server fixture is module-scoped and only started when an S3 case runs.
        endpoint = request.getfixturevalue("s3_endpoint")
        for key, value in aws_env(endpoint=endpoint, home=tmp_path).items():
            monkeypatch.setenv(key, value)
        bucket = f"reg-{uuid.uuid4().hex[:12]}"  # one bucket per test: isolation without a server restart
        create_bucket(endpoint=endpoint, bucket=bucket)
        uri = f"s3://{bucket}/models"
    monkeypatch.setenv("RANKER_HOME", str(home))
    monkeypatch.setenv("RANKER_REGISTRY_URI", uri)
    return Settings(home=home, registry_uri=uri)


@pytest.fixture
def reg(settings) -> Registry:
    return Registry.from_settings(settings)


def _train_model_text(seed: int) -> str:
    import lightgbm as lgb

    rng = np.random.default_rng(seed)
    x = rng.random((200, len(FEATURES)))
    y = rng.integers(0, 4, 200)
    params = {
        "objective": "lambdarank",
        "num_leaves": 7,
        "min_data_in_leaf": 5,
        "verbose": -1,
        "seed": seed,
        "num_threads": 1,
        "deterministic": True,
    }
    booster = lgb.train(params, lgb.Dataset(x, y, group=[10] * 20), num_boost_round=5)
    return booster.model_to_string()


@pytest.fixture(scope="session")
def model_texts() -> list[str]:
    return [_train_model_text(seed) for seed in (1, 2, 3, 4)]


def make_model_dir(
    root: Path, *, version: str, model_text: str, name: str = NAME, created_at: str = "2026-11-25T21:04:05Z", **extra
) -> Path:
    folder = root / f"{name}-{version}"
    folder.mkdir(parents=True)
    data = model_text.encode()
    (folder / "model.txt").write_bytes(data)
    card = {
        "name": name,
        "version": version,
        "created_at": created_at,
        "feature_service": "search_ranker_v1",
        "features": FEATURES,
        "model_sha256": hashlib.sha256(data).hexdigest(),
        "metrics": {"test": {"ndcg@10": 0.41}},
        "dataset_fingerprint": "abc123",  # fields the registry does not know must survive untouched
        "lightgbm": {"params": {"num_leaves": 7}, "best_iteration": 5},
        **extra,
    }
    (folder / "card.json").write_text(json.dumps(card, indent=1))
    return folder


@pytest.fixture
def published(reg, tmp_path, model_texts) -> list[str]:
    """Versions v1..v4 published, no stage set."""
    versions = []
    for i, text in enumerate(model_texts, start=1):
        version = f"20261125T21040{i}Z-v{i}"
        reg.publish(
            make_model_dir(tmp_path / "out", version=version, model_text=text, created_at=f"2026-11-25T21:04:0{i}Z")
        )
        versions.append(version)
    return versions


def _evidence(
    *,
    delta: float = 0.05,
    n: int = 300,
    slice_drop: float = 0.0,
    fs: bool = True,
    ms: float = 1.0,
    champion: bool = True,
    seed: int = 0,
) -> GateEvidence:
    rng = np.random.default_rng(seed)
    champ = rng.uniform(0.2, 0.8, n)
    chall = np.clip(champ + delta + rng.normal(0.0, 0.02, n), 0.0, 1.0)
    champ_slices = {"new_listings": 0.50, "returning_users": 0.60, "mobile": 0.55}
    chall_slices = {k: v + delta for k, v in champ_slices.items()}
    chall_slices["new_listings"] = champ_slices["new_listings"] - slice_drop
    return GateEvidence(
        challenger_ndcg=chall,
        champion_ndcg=champ if champion else None,
        challenger_slice_ndcg=chall_slices,
        champion_slice_ndcg=champ_slices if champion else None,
        feature_service_exists=fs,
        predict_ms=ms,
        feature_service="search_ranker_v1",
    )


def passing_gate():
    return evaluate_gate(_evidence())


def all_keys(reg: Registry) -> list[str]:
    return reg.store.list_keys("")


# ------------------------------------------------------------------------------------------------ publish / read


def test_publish_list_show_fetch_roundtrip(reg, settings, backend, tmp_path, model_texts):
    folder = make_model_dir(tmp_path / "out", version="20261125T210401Z-aa", model_text=model_texts[0])
    result = reg.publish(folder)
    assert result.created and result.name == NAME

    assert reg.list_models() == [NAME]
    [info] = reg.list_versions(NAME)
    assert info.version == "20261125T210401Z-aa" and info.published_by == "tester"
    assert info.model_sha256 == hashlib.sha256(model_texts[0].encode()).hexdigest()

    # The card is stored byte for byte: unknown fields survive.
    card = reg.card(NAME, version=info.version)
    assert card == json.loads((folder / "card.json").read_text())
    assert card["dataset_fingerprint"] == "abc123"

    loaded = reg.fetch(NAME, version=info.version)
    assert loaded.model_sha256 == info.model_sha256
    assert loaded.model_path.read_bytes() == (folder / "model.txt").read_bytes()
    assert loaded.features == FEATURES
    if backend == "s3":
        assert loaded.path.is_relative_to(settings.artifacts_dir / "registry-cache")
        assert reg.fetch(NAME, version=info.version).path == loaded.path  # cache hit, re-verified
    else:
        assert loaded.path.is_relative_to(settings.artifacts_dir / "registry")
    rows = np.random.default_rng(0).random((20, len(FEATURES)))
    import lightgbm as lgb

    expected = lgb.Booster(model_str=model_texts[0]).predict(rows)
    np.testing.assert_allclose(loaded.booster().predict(rows), expected)

    events = reg.audit_log(NAME)
    assert [(e["action"], e["to"], e["who"]) for e in events] == [("publish", info.version, "tester")]


def test_republish_identical_is_noop(reg, tmp_path, model_texts):
    folder = make_model_dir(tmp_path / "out", version="20261125T210401Z-aa", model_text=model_texts[0])
    assert reg.publish(folder).created
    keys = all_keys(reg)
    again = reg.publish(folder)
    assert not again.created
    assert all_keys(reg) == keys  # nothing written, not even an audit event


def test_republish_different_content_refused(reg, tmp_path, model_texts):
    version = "20261125T210401Z-aa"
    reg.publish(make_model_dir(tmp_path / "a", version=version, model_text=model_texts[0]))
    keys = all_keys(reg)
    with pytest.raises(RankerError, match="already published with a different model.txt"):
        reg.publish(make_model_dir(tmp_path / "b", version=version, model_text=model_texts[1]))
    with pytest.raises(RankerError, match="different card.json.*metrics"):
        reg.publish(make_model_dir(tmp_path / "c", version=version, model_text=model_texts[0], metrics={}))
    assert all_keys(reg) == keys
    assert reg.fetch(NAME, version=version).model_path.read_text() == model_texts[0]


def test_publish_validates_folder(reg, tmp_path, model_texts):
    folder = make_model_dir(tmp_path / "out", version="20261125T210401Z-aa", model_text=model_texts[0])
    (folder / "model.txt").write_text(model_texts[1])  # card now describes another model
    with pytest.raises(RankerError, match="does not match model.txt"):
        reg.publish(folder)
    pickled = make_model_dir(tmp_path / "p", version="20261125T210402Z-bb", model_text="\x80\x04pickle")
    with pytest.raises(RankerError, match="not a LightGBM text model"):
        reg.publish(pickled)
    with pytest.raises(RankerError, match="is missing"):
        reg.publish(tmp_path / "out")  # a folder without model.txt/card.json
    assert all_keys(reg) == []


def test_fetch_refuses_tampered_model(reg, backend, tmp_path, model_texts):
    version = "20261125T210401Z-aa"
    reg.publish(make_model_dir(tmp_path / "out", version=version, model_text=model_texts[0]))
    expected = hashlib.sha256(model_texts[0].encode()).hexdigest()
    tampered = model_texts[0].replace("num_leaves=", "num_leaves=1", 1).encode()
    reg.store.put(f"{NAME}/versions/{version}/model.txt", tampered)  # bytes changed after publish
    with pytest.raises(RankerError) as info:
        reg.fetch(NAME, version=version)
    message = str(info.value)
    assert "corrupt or tampered" in message
    assert expected in message and hashlib.sha256(tampered).hexdigest() in message


def test_loaded_model_reverifies_on_load(reg, backend, tmp_path, model_texts):
    version = "20261125T210401Z-aa"
    reg.publish(make_model_dir(tmp_path / "out", version=version, model_text=model_texts[0]))
    loaded = reg.fetch(NAME, version=version)
    loaded.model_path.write_text(model_texts[1])  # swapped after fetch
    with pytest.raises(RankerError, match="corrupt or tampered"):
        loaded.booster()
    if backend == "s3":
        # A damaged cache is repaired from the bucket; the bucket copy is intact.
        assert reg.fetch(NAME, version=version).model_path.read_text() == model_texts[0]
    else:
        with pytest.raises(RankerError, match="corrupt or tampered"):
            reg.fetch(NAME, version=version)


def test_card_swapped_after_publish_is_detected(reg, tmp_path, model_texts):
    version = "20261125T210401Z-aa"
    reg.publish(make_model_dir(tmp_path / "out", version=version, model_text=model_texts[0]))
    other = make_model_dir(tmp_path / "x", version=version, model_text=model_texts[1])
    reg.store.put(f"{NAME}/versions/{version}/model.txt", (other / "model.txt").read_bytes())
    reg.store.put(f"{NAME}/versions/{version}/card.json", (other / "card.json").read_bytes())
    with pytest.raises(RankerError, match="card.json .* was modified after publish"):
        reg.fetch(NAME, version=version)


def test_missing_version_and_unknown_model(reg, published):
    with pytest.raises(RankerError, match=r"has no version 'nope'.*latest versions: .*-v4"):
        reg.fetch(NAME, version="nope")
    with pytest.raises(RankerError, match=r"unknown model 'recs_ranker'.*known models: search_ranker"):
        reg.fetch("recs_ranker", version=published[0])
    with pytest.raises(RankerError, match="unknown model"):
        reg.rollback("recs_ranker")
    with pytest.raises(RankerError, match="no production version yet"):
        reg.fetch(NAME, stage="production")
    with pytest.raises(RankerError, match="exactly one of version or stage"):
        reg.fetch(NAME)
    with pytest.raises(RankerError, match="invalid version"):
        reg.fetch(NAME, version="../../etc")


def test_partial_upload_is_invisible(reg, published, model_texts, tmp_path):
    # model.txt and card.json present, _COMPLETE never written (a crashed upload).
    folder = make_model_dir(tmp_path / "partial", version="20261125T210409Z-crash", model_text=model_texts[0])
    prefix = f"{NAME}/versions/20261125T210409Z-crash"
    reg.store.put(f"{prefix}/model.txt", (folder / "model.txt").read_bytes())
    reg.store.put(f"{prefix}/card.json", (folder / "card.json").read_bytes())
    assert "20261125T210409Z-crash" not in [v.version for v in reg.list_versions(NAME)]
    with pytest.raises(RankerError, match="missing or upload incomplete"):
        reg.fetch(NAME, version="20261125T210409Z-crash")
    with pytest.raises(RankerError, match="missing or upload incomplete"):
        reg.promote(NAME, "20261125T210409Z-crash", stage="production", gate=passing_gate())
    assert reg.pointer(NAME, "production") is None
    # Publishing the real folder afterwards completes the version over the leftovers.
    assert reg.publish(folder).created
    assert reg.fetch(NAME, version="20261125T210409Z-crash").model_sha256


class _FailingStore:
    """Delegates to a real store but fails writing one key: a crash mid-upload."""

    def __init__(self, inner, *, fail_suffix: str) -> None:
        self.inner, self.fail_suffix = inner, fail_suffix

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def put(self, key, data, **kwargs):
        if key.endswith(self.fail_suffix):
            raise RankerError("simulated network failure")
        return self.inner.put(key, data, **kwargs)


def test_failed_upload_leaves_nothing_visible(reg, tmp_path, model_texts):
    broken = Registry(store=_FailingStore(reg.store, fail_suffix="/_COMPLETE"), cache_dir=reg.cache_dir)
    folder = make_model_dir(tmp_path / "out", version="20261125T210401Z-aa", model_text=model_texts[0])
    with pytest.raises(RankerError, match="simulated"):
        broken.publish(folder)
    assert reg.list_models() == []
    assert all_keys(reg) == []  # the pieces were cleaned up
    assert reg.publish(folder).created


# ------------------------------------------------------------------------------------------------ stages


def test_promote_to_unknown_stage_writes_nothing(reg, published):
    keys = all_keys(reg)
    with pytest.raises(RankerError, match="unknown stage 'prod'"):
        reg.promote(NAME, published[0], stage="prod", gate=passing_gate())
    with pytest.raises(RankerError, match="unknown stage"):
        reg.rollback(NAME, stage="canary")
    assert all_keys(reg) == keys


def test_promote_unknown_version_and_gate_rules_write_nothing(reg, published):
    keys = all_keys(reg)
    with pytest.raises(RankerError, match="has no version"):
        reg.promote(NAME, "20990101T000000Z-x", stage="production", gate=passing_gate())
    with pytest.raises(RankerError, match="needs a gate result"):
        reg.promote(NAME, published[0], stage="production", gate=None)
    with pytest.raises(RankerError, match="--force needs --reason"):
        reg.promote(NAME, published[0], stage="production", gate=None, force=True)
    failing = evaluate_gate(_evidence(delta=-0.05))
    with pytest.raises(GateFailed, match="ndcg_vs_champion") as info:
        reg.promote(NAME, published[0], stage="production", gate=failing)
    assert not info.value.result.passed
    assert all_keys(reg) == keys


def test_rollback_with_no_previous_version(reg, published):
    keys = all_keys(reg)
    with pytest.raises(RankerError, match="no production pointer"):
        reg.rollback(NAME)
    assert all_keys(reg) == keys
    reg.promote(NAME, published[0], stage="production", gate=passing_gate())
    keys = all_keys(reg)
    with pytest.raises(RankerError, match="no previous version to roll back to"):
        reg.rollback(NAME)
    assert all_keys(reg) == keys


def test_promote_then_rollback_restores_previous_pointer(reg, published):
    v1, v2, v3 = published[:3]
    gate = passing_gate()
    assert reg.promote(NAME, v1, stage="production", gate=gate).changed
    assert reg.promote(NAME, v2, stage="production", gate=gate).from_version == v1
    assert reg.promote(NAME, v3, stage="staging", gate=gate).changed  # stages are independent
    assert not reg.promote(NAME, v2, stage="production", gate=gate).changed  # already there: no-op
    assert reg.resolve(NAME, "production") == v2
    assert reg.pointer(NAME, "production").previous_version == v1

    change = reg.rollback(NAME, reason="p99 regression")
    assert (change.from_version, change.to_version) == (v2, v1)
    assert reg.resolve(NAME, "production") == v1
    assert reg.resolve(NAME, "staging") == v3
    assert reg.fetch(NAME, stage="production").version == v1

    events = [e for e in reg.audit_log(NAME) if e["action"] != "publish"]
    assert [(e["action"], e["stage"], e["from"], e["to"]) for e in events] == [
        ("promote", "production", None, v1),
        ("promote", "production", v1, v2),
        ("promote", "staging", None, v3),
        ("rollback", "production", v2, v1),
    ]
    assert events[0]["gate"]["passed"] is True and events[0]["who"] == "tester"
    assert events[-1]["reason"] == "p99 regression"


def test_forced_promotion_is_audited_with_gate_figures(reg, published):
    failing = evaluate_gate(_evidence(delta=-0.05))
    change = reg.promote(NAME, published[0], stage="production", gate=failing, force=True, reason="hotfix INC-42")
    assert change.changed and change.action == "force"
    [event] = [e for e in reg.audit_log(NAME) if e["action"] == "force"]
    assert event["reason"] == "hotfix INC-42"
    assert event["gate"]["failed"] == ["ndcg_vs_champion", "slice_regression"]
    ndcg = next(c for c in event["gate"]["checks"] if c["name"] == "ndcg_vs_champion")
    assert ndcg["figures"]["ci95_high"] < 0


def _promote_chain_ok(reg: Registry, versions: list[str], *, strict: bool) -> None:
    """The pointer is valid and one of ``versions``; the audit log has one promote per version.

    ``strict`` also checks that no update was lost (each swap's ``from`` is the previous ``to``).
    """
    pointer = reg.pointer(NAME, "production")
    assert pointer is not None and pointer.version in versions
    reg.fetch(NAME, stage="production")
    events = [e for e in reg.audit_log(NAME) if e["action"] == "promote"]
    assert sorted(e["to"] for e in events) == sorted(versions)
    if strict:
        assert [h["version"] for h in pointer.history] + [pointer.version] == _chain(events)


def _chain(events: list[dict]) -> list[str]:
    by_from = {e["from"]: e["to"] for e in events}
    assert len(by_from) == len(events), "two promotions replaced the same pointer state: a lost update"
    chain, current = [], None
    while current in by_from:
        current = by_from[current]
        chain.append(current)
    return chain


def test_racing_promotions_threads(reg, published, backend):
    barrier = threading.Barrier(len(published))
    errors: list[BaseException] = []
    gate = passing_gate()

    def worker(version: str) -> None:
        try:
            mine = Registry(store=reg.store, cache_dir=reg.cache_dir)
            barrier.wait(timeout=30)
            mine.promote(NAME, version, stage="production", gate=gate)
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(v,)) for v in published]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    # Locally the fcntl-locked swap is exact. moto's server checks If-Match and stores in two steps
    # without a lock, so only real S3 is strictly atomic; there we check what must hold regardless.
    _promote_chain_ok(reg, published, strict=backend == "local")


def _promote_in_process(home: str, version: str, barrier) -> None:
    registry = Registry.from_settings(Settings(home=Path(home), registry_uri=""))
    barrier.wait(timeout=60)
    registry.promote(NAME, version, stage="production", gate=evaluate_gate(_evidence()))


def test_racing_promotions_processes_local(tmp_path, model_texts, monkeypatch):
    monkeypatch.setenv("USER", "tester")
    home = tmp_path / "home"
    registry = Registry.from_settings(Settings(home=home))
    versions = []
    for i, text in enumerate(model_texts[:3], start=1):
        versions.append(
            registry.publish(
                make_model_dir(tmp_path / "out", version=f"20261125T21040{i}Z-p{i}", model_text=text)
            ).version
        )
    ctx = multiprocessing.get_context("spawn")  # no fork: the test process may hold server threads
    barrier = ctx.Barrier(len(versions))
    procs = [ctx.Process(target=_promote_in_process, args=(str(home), v, barrier)) for v in versions]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0] * len(procs)
    _promote_chain_ok(registry, versions, strict=True)


class _InterleavingStore:
    """Runs ``hook`` (a concurrent writer) just before the first pointer write reaches the store."""

    def __init__(self, inner, hook) -> None:
        self.inner, self.hook, self.fired, self.conflicts = inner, hook, False, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def put(self, key, data, **kwargs):
        if "/stages/" in key and not self.fired:
            self.fired = True
            self.hook()
        try:
            return self.inner.put(key, data, **kwargs)
        except PreconditionFailed:
            self.conflicts += 1
            raise


@pytest.mark.parametrize("existing_pointer", [False, True], ids=["create", "replace"])
def test_compare_and_swap_retries_after_conflict(reg, published, existing_pointer):
    v1, v2, v3 = published[:3]
    gate = passing_gate()
    if existing_pointer:
        reg.promote(NAME, v1, stage="production", gate=gate)
    other = Registry(store=reg.store, cache_dir=reg.cache_dir)
    store = _InterleavingStore(reg.store, lambda: other.promote(NAME, v3, stage="production", gate=gate))
    mine = Registry(store=store, cache_dir=reg.cache_dir)
    change = mine.promote(NAME, v2, stage="production", gate=gate)
    assert store.conflicts == 1  # the server refused the stale write (If-Match / If-None-Match) ...
    assert change.from_version == v3  # ... and the retry built on the interloper's pointer
    pointer = reg.pointer(NAME, "production")
    assert pointer.version == v2
    assert [h["version"] for h in pointer.history] == ([v1, v3] if existing_pointer else [v3])


def test_store_conditional_writes(reg):
    store = reg.store
    etag = store.put("x/stages/p.json", b"1", if_absent=True)
    with pytest.raises(PreconditionFailed):
        store.put("x/stages/p.json", b"2", if_absent=True)
    new_etag = store.put("x/stages/p.json", b"2", if_etag=etag)
    with pytest.raises(PreconditionFailed):
        store.put("x/stages/p.json", b"3", if_etag=etag)  # stale
    current = store.get("x/stages/p.json")
    assert current.data == b"2" and current.etag == new_etag
    assert store.get("x/stages/missing.json") is None


# ------------------------------------------------------------------------------------------------ backends


def test_file_uri_backend(tmp_path, model_texts):
    root = tmp_path / "elsewhere"
    registry = Registry.from_settings(Settings(home=tmp_path / "home", registry_uri=root.as_uri()))
    registry.publish(make_model_dir(tmp_path / "out", version="20261125T210401Z-aa", model_text=model_texts[0]))
    assert (root / NAME / "versions" / "20261125T210401Z-aa" / "_COMPLETE").is_file()
    assert isinstance(registry.store, LocalStore)
    with pytest.raises(RankerError, match="absolute file URI"):
        Registry.from_settings(Settings(home=tmp_path, registry_uri="file://relative/path"))
    with pytest.raises(RankerError, match="not supported"):
        Registry.from_settings(Settings(home=tmp_path, registry_uri="gs://bucket/x"))


def test_s3_unreachable_endpoint_fails_fast(tmp_path, monkeypatch):
    for key, value in aws_env(endpoint=f"http://127.0.0.1:{closed_port()}", home=tmp_path).items():
        monkeypatch.setenv(key, value)
    registry = Registry.from_settings(Settings(home=tmp_path, registry_uri="s3://models/prod"))
    start = time.perf_counter()
    with pytest.raises(RankerError, match="unreachable"):
        registry.list_models()
    assert time.perf_counter() - start < 5


def test_s3_silent_endpoint_times_out(tmp_path, monkeypatch):
    with silent_listener() as port:
        for key, value in aws_env(endpoint=f"http://127.0.0.1:{port}", home=tmp_path).items():
            monkeypatch.setenv(key, value)
        store = S3Store(bucket="models", connect_timeout=0.5, read_timeout=0.5, max_attempts=1)
        start = time.perf_counter()
        with pytest.raises(RankerError, match="not answering"):
            store.get("x/stages/production.json")
        assert time.perf_counter() - start < 3


def test_s3_missing_bucket(s3_endpoint, tmp_path, monkeypatch):
    for key, value in aws_env(endpoint=s3_endpoint, home=tmp_path).items():
        monkeypatch.setenv(key, value)
    registry = Registry.from_settings(Settings(home=tmp_path, registry_uri="s3://no-such-bucket/models"))
    with pytest.raises(RankerError, match="bucket 'no-such-bucket' does not exist"):
        registry.list_models()
    with pytest.raises(RankerError, match="does not exist"):
        registry.fetch(NAME, version="v1")


def test_s3_layout(s3_endpoint, tmp_path, monkeypatch, model_texts):
    for key, value in aws_env(endpoint=s3_endpoint, home=tmp_path).items():
        monkeypatch.setenv(key, value)
    create_bucket(endpoint=s3_endpoint, bucket="layout")
    registry = Registry.from_settings(Settings(home=tmp_path, registry_uri="s3://layout/team/models"))
    version = registry.publish(
        make_model_dir(tmp_path, version="20261125T210401Z-aa", model_text=model_texts[0])
    ).version
    registry.promote(NAME, version, stage="production", gate=passing_gate())
    keys = [o["Key"] for o in s3_client(endpoint=s3_endpoint).list_objects_v2(Bucket="layout")["Contents"]]
    base = f"team/models/{NAME}"
    assert {
        f"{base}/versions/{version}/model.txt",
        f"{base}/versions/{version}/card.json",
        f"{base}/versions/{version}/_COMPLETE",
        f"{base}/stages/production.json",
    } <= set(keys)
    assert sorted(k.split("/")[3] for k in keys) == ["audit", "audit", "stages", "versions", "versions", "versions"]


# ------------------------------------------------------------------------------------------------ gate


def test_gate_better_challenger_passes():
    result = evaluate_gate(_evidence(delta=0.03))
    assert result.passed, result.format()
    ndcg = result.check("ndcg_vs_champion").figures
    assert ndcg["ci95_low"] > 0 and ndcg["n_requests"] == 300
    assert json.loads(json.dumps(result.to_dict()))["passed"] is True


def test_gate_worse_challenger_fails_naming_check():
    result = evaluate_gate(_evidence(delta=-0.03))
    assert not result.passed
    assert [c.name for c in result.failed] == ["ndcg_vs_champion", "slice_regression"]
    table = result.format()
    assert "FAIL" in table and "ndcg_vs_champion" in table and "ci95=[" in table


def test_gate_margin_and_non_inferiority():
    tiny_drop = _evidence(delta=-0.003)
    assert not evaluate_gate(tiny_drop).check("ndcg_vs_champion").passed
    assert evaluate_gate(tiny_drop, GatePolicy(margin=-0.01)).check("ndcg_vs_champion").passed
    assert not evaluate_gate(_evidence(delta=0.01), GatePolicy(margin=0.05)).passed


def test_gate_slice_regression_fails():
    result = evaluate_gate(_evidence(delta=0.03, slice_drop=0.05))
    assert [c.name for c in result.failed] == ["slice_regression"]
    figures = result.check("slice_regression").figures
    assert figures["regressed"] == ["new_listings"] and figures["worst_delta"] == pytest.approx(-0.05)
    assert "new_listings" in result.format()
    assert evaluate_gate(_evidence(delta=0.03, slice_drop=0.01)).passed  # within tolerance 0.02
    assert evaluate_gate(_evidence(delta=0.03, slice_drop=0.02)).passed  # exactly the tolerance is allowed


def test_gate_missing_feature_service_fails():
    result = evaluate_gate(_evidence(fs=False))
    assert [c.name for c in result.failed] == ["feature_service"]
    assert "NOT registered" in result.format()


def test_gate_over_budget_predict_fails():
    result = evaluate_gate(_evidence(ms=7.5))
    assert [c.name for c in result.failed] == ["predict_latency"]
    assert result.check("predict_latency").figures == {"predict_ms": 7.5, "budget_ms": 5.0}


def test_gate_no_champion_passes():
    result = evaluate_gate(_evidence(champion=False))
    assert result.passed
    assert "no champion" in result.format()


def test_gate_rejects_misaligned_evidence():
    with pytest.raises(RankerError, match="same requests"):
        GateEvidence(
            challenger_ndcg=np.ones(3),
            champion_ndcg=np.ones(4),
            challenger_slice_ndcg={},
            champion_slice_ndcg={},
            feature_service_exists=True,
            predict_ms=1.0,
        )


def test_gate_is_deterministic():
    evidence = _evidence(delta=0.001)
    assert evaluate_gate(evidence).to_dict() == evaluate_gate(evidence).to_dict()


def test_measure_predict_ms(tmp_path, model_texts):
    path = tmp_path / "model.txt"
    path.write_text(model_texts[0])
    ms = measure_predict_ms(path, repeats=5)
    assert 0 < ms < 1000


# ------------------------------------------------------------------------------------------------ CLI


@pytest.fixture(scope="module")
def cli():
    from pipelines.cli import _register, cli as group

    if "registry" not in group.commands:
        _register()
    return group


def _fake_evaluate(monkeypatch, evidence: GateEvidence) -> list[dict]:
    calls: list[dict] = []

    def gate_evidence(settings, *, challenger_dir, champion_dir):
        calls.append({"challenger_dir": challenger_dir, "champion_dir": champion_dir})
        return evidence

    module = types.ModuleType("ranker.registry.evidence")
    module.gate_evidence = gate_evidence
    monkeypatch.setitem(sys.modules, "ranker.registry.evidence", module)
    return calls


def test_cli_help(cli):
    runner = CliRunner()
    for args in (
        ["registry"],
        ["registry", "publish"],
        ["registry", "list"],
        ["registry", "show"],
        ["registry", "promote"],
        ["registry", "rollback"],
        ["registry", "audit"],
        ["deploy"],
    ):
        result = runner.invoke(cli, [*args, "--help"])
        assert result.exit_code == 0, result.output
        assert "Usage" in result.output


def test_cli_publish_list_show(cli, settings, tmp_path, model_texts):
    runner = CliRunner()
    folder = make_model_dir(tmp_path / "out", version="20261125T210401Z-aa", model_text=model_texts[0])
    result = runner.invoke(cli, ["registry", "publish", str(folder)])
    assert result.exit_code == 0, result.output
    assert "published: search_ranker 20261125T210401Z-aa" in result.output
    assert "unchanged" in runner.invoke(cli, ["registry", "publish", str(folder)]).output

    listed = runner.invoke(cli, ["registry", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    [row] = json.loads(listed.output)
    assert (row["name"], row["version"], row["stages"]) == (NAME, "20261125T210401Z-aa", [])

    shown = runner.invoke(cli, ["registry", "show", NAME, "--version", "20261125T210401Z-aa", "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output) == json.loads((folder / "card.json").read_text())
    human = runner.invoke(cli, ["registry", "show", NAME])
    assert human.exit_code == 0 and "search_ranker_v1" in human.output

    missing = runner.invoke(cli, ["registry", "show", "nope"])
    assert missing.exit_code == 2
    assert missing.output.startswith("error: unknown model 'nope'") and "Traceback" not in missing.output


def test_cli_promote_gate_failure_and_force(cli, settings, published, monkeypatch):
    runner = CliRunner()
    v1, v2 = published[:2]
    calls = _fake_evaluate(monkeypatch, _evidence(champion=False))
    ok = runner.invoke(cli, ["registry", "promote", NAME, v1, "--to", "production"])
    assert ok.exit_code == 0, ok.output
    assert calls[-1]["champion_dir"] is None and Path(calls[-1]["challenger_dir"]).is_dir()

    calls = _fake_evaluate(monkeypatch, _evidence(delta=-0.05))
    failed = runner.invoke(cli, ["registry", "promote", NAME, v2, "--to", "production"])
    assert failed.exit_code == 1
    assert "FAIL" in failed.output and "ndcg_vs_champion" in failed.output and "ci95=[" in failed.output
    assert calls[-1]["champion_dir"] is not None
    registry = Registry.from_settings(settings)
    assert registry.resolve(NAME, "production") == v1

    no_reason = runner.invoke(cli, ["registry", "promote", NAME, v2, "--to", "production", "--force"])
    assert no_reason.exit_code == 2
    assert "--force needs --reason" in no_reason.output and "Traceback" not in no_reason.output

    forced = runner.invoke(
        cli, ["registry", "promote", NAME, v2, "--to", "production", "--force", "--reason", "incident 42"]
    )
    assert forced.exit_code == 0, forced.output
    assert registry.resolve(NAME, "production") == v2
    [event] = [e for e in registry.audit_log(NAME) if e["action"] == "force"]
    assert event["reason"] == "incident 42" and event["gate"]["failed"] == ["ndcg_vs_champion", "slice_regression"]

    listed = json.loads(runner.invoke(cli, ["registry", "list", "--json"]).output)
    assert {r["version"]: r["stages"] for r in listed}[v2] == ["production"]

    back = runner.invoke(cli, ["registry", "rollback", NAME, "--reason", "bad"])
    assert back.exit_code == 0, back.output
    assert registry.resolve(NAME, "production") == v1
    assert "rollback" in runner.invoke(cli, ["registry", "audit", NAME]).output

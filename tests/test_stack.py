"""End to end on the `make stack` topology: a private redis-server, moto's S3 server as the model
registry and the gunicorn scorer started with the image's config (api/gunicorn_conf.py), all as
local processes on loopback. Models go in and out through the `ranker registry` CLI only; the test
sees the running scorer pick up promotions and a rollback without a restart."""

from __future__ import annotations

import json
import shutil
import time

import pandas as pd
import psutil
import pytest

from infra.stack import LocalStack, http_json, wait_until
from ranker.config import Settings
from tests.conftest import make_home

pytestmark = [pytest.mark.slow, pytest.mark.redis]

POLL_S = 0.5  # the scorer's registry poll period in this test


@pytest.fixture(scope="module")
def stack_home(world, tmp_path_factory):
    """A home of its own (copied world data) with two search models trained on it (seeds 42 and 7)."""
    from ranker.training.dataset import DatasetOptions, build_dataset
    from ranker.training.train import TrainOptions, train_model

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server binary not installed: the stack needs a real Redis")
    settings = make_home(tmp_path_factory.mktemp("stack") / "home")
    for part in ("raw", "features", "feast"):
        shutil.copytree(world.data_dir / part, settings.data_dir / part)
    build_dataset(settings, DatasetOptions(surface="search", chunk_rows=50_000))
    first = train_model(settings, TrainOptions(surface="search", seed=42))
    second = train_model(settings, TrainOptions(surface="search", seed=7))
    assert first.name != second.name
    return settings, first, second


def _version(folder) -> str:
    return json.loads((folder / "card.json").read_text())["version"]


def _served_version(url: str) -> str | None:
    status, body = http_json(url + "/readyz")
    return body.get("surfaces", {}).get("search", {}).get("version") if status in (200, 503) else None


def _versions_served(url: str) -> set[str]:
    """The search model versions the workers serve, from /metrics summed over them: empty until
    every live worker has a model (``ranker_model_loaded`` is their minimum), then the versions
    some worker serves (``ranker_model_info`` is their maximum; a worker zeroes the version it
    swapped out). Unlike answers to a few requests, this sees every worker, whichever answers."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    with urlopen(url + "/metrics", timeout=10) as response:
        families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}

    def samples(name):
        return [s for s in families[name].samples if s.labels.get("surface") == "search"] if name in families else []

    loaded = [s.value for s in samples("ranker_model_loaded")]
    if not loaded or min(loaded) < 1:
        return set()
    return {s.labels["version"] for s in samples("ranker_model_info") if s.value == 1}


def _rank_versions(url: str, body: dict, n: int) -> set[str]:
    """Model versions of ``n`` consecutive /v1/rank answers (2 workers: both get requests)."""
    seen = set()
    for _ in range(n):
        status, answer = http_json(url + "/v1/rank", body=body)
        assert status == 200, answer
        seen.add(answer["model"]["version"])
    return seen


def test_stack_ranks_with_a_model_from_s3_and_follows_promotions_without_restart(stack_home):
    settings: Settings = stack_home[0]
    first, second = _version(stack_home[1]), _version(stack_home[2])
    listings = pd.read_parquet(settings.raw_dir / "listings.parquet")
    live = listings[listings.sold_at.isna()].sort_values("created_at").item_id.tolist()[-12:]
    sold = listings[listings.sold_at.notna()].sort_values("sold_at").item_id.iloc[0]
    body = {"surface": "search", "user_id": "u000001", "query": "black dress", "items": [*live, sold]}

    with LocalStack(settings.home, workers=2, reload_interval_s=POLL_S, surfaces=("search",)) as stack:
        started = time.perf_counter()
        stack.start_redis()
        stack.start_s3()
        stack.ranker("features", "materialize", "--full")
        url = stack.start_scorer()
        startup_s = time.perf_counter() - started
        print(f"stack (redis, s3, materialize, gunicorn x2) up in {startup_s:.1f} s")

        # No production model yet: alive but not ready, and ranking answers 503 no_model (JSON).
        status, ready = http_json(url + "/readyz")
        assert status == 503 and ready["surfaces"]["search"]["version"] is None
        status, answer = http_json(url + "/v1/rank", body=body)
        assert status == 503 and answer["error"]["code"] == "no_model"

        # Publish and promote through the registry (the gate passes: no champion yet).
        stack.ranker("registry", "publish", str(stack_home[1]))
        promoted = stack.ranker("registry", "promote", "search_ranker", first, "--to", "production")
        assert "gate: PASSED" in promoted.stdout
        wait_until(lambda: _versions_served(url) == {first}, timeout_s=60, what="every worker serving the first model")
        assert http_json(url + "/readyz")[0] == 200 and _served_version(url) == first
        scorer = psutil.Process(stack.procs["scorer"].pid)
        workers = sorted(p.pid for p in scorer.children())
        assert len(workers) == 2

        status, answer = http_json(url + "/v1/rank", body=body)
        assert status == 200, answer
        assert answer["model"] == {"name": "search_ranker", "version": first}
        assert answer["degraded"] is False and answer["removed_sold"] == 1
        ranked = [item["item_id"] for item in answer["items"]]
        assert sorted(ranked) == sorted(live) and sold not in ranked
        scores = [item["score"] for item in answer["items"]]
        assert scores == sorted(scores, reverse=True) and len(set(scores)) > 1

        # The model really came from the S3 server: the registry's keys are in the bucket and the
        # scorer's verified download sits in the cache for that bucket.
        import boto3

        s3 = boto3.session.Session(
            aws_access_key_id="stack", aws_secret_access_key="stack", region_name="us-east-1"
        ).client("s3", endpoint_url=stack.s3_endpoint)
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket=stack.bucket)["Contents"]}
        assert f"registry/search_ranker/versions/{first}/model.txt" in keys
        cached = settings.artifacts_dir / "registry-cache" / f"s3_{stack.bucket}_registry" / "search_ranker" / first
        assert (cached / "model.txt").read_bytes() == (stack_home[1] / "model.txt").read_bytes()

        # Promote the second version; the running workers switch within a few poll periods.
        stack.ranker("registry", "publish", str(stack_home[2]))
        assert _rank_versions(url, body, 4) == {first}
        stack.ranker(
            "registry",
            "promote",
            "search_ranker",
            second,
            "--to",
            "production",
            "--margin",
            "-1",
            "--slice-tolerance",
            "1",
        )
        promoted_at = time.perf_counter()
        wait_until(lambda: _versions_served(url) == {second}, timeout_s=30, what="every worker serving v2")
        assert _rank_versions(url, body, 6) == {second}
        print(
            f"promotion picked up {time.perf_counter() - promoted_at:.2f} s after the CLI returned "
            f"(poll period {POLL_S} s; the CLI's own gate run overlaps the polls)"
        )
        assert _served_version(url) == second

        # A rollback is a pointer move too: picked up the same way.
        stack.ranker("registry", "rollback", "search_ranker", "--reason", "e2e test")
        wait_until(lambda: _versions_served(url) == {first}, timeout_s=30, what="every worker back on v1")
        assert _rank_versions(url, body, 6) == {first}

        # Same processes throughout: no restart, no worker recycled.
        assert scorer.is_running() and sorted(p.pid for p in scorer.children()) == workers
        audit = json.loads(stack.ranker("registry", "audit", "search_ranker", "--json").stdout)
        assert [e["action"] for e in audit] == ["publish", "promote", "publish", "promote", "rollback"]

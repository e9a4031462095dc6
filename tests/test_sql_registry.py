"""Feast's SQL registry on the real PostgreSQL server of this machine (127.0.0.1:5432), selected by
RANKER_FEAST_REGISTRY. Each test module creates its own database and drops it afterwards."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid

import pytest

from ranker.config import Settings
from tests.conftest import REPO_ROOT, make_home
from tests.s3_server import closed_port

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="module")
def pg_url():
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL on 127.0.0.1:5432 is not reachable: {exc}")
    name = f"ranker_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="module")
def sql_home(world, pg_url, tmp_path_factory) -> Settings:
    """A home whose feature tables are the world's and whose Feast registry is the SQL database."""
    from ranker.features.store import apply

    settings = make_home(tmp_path_factory.mktemp("sqlreg") / "home").with_(feast_registry=pg_url)
    shutil.copytree(world.features_dir, settings.features_dir)
    summary = apply(settings)
    assert "search_ranker_v1" in summary["feature_services"]
    return settings


def test_apply_writes_the_registry_into_postgres_not_a_file(sql_home, pg_url):
    import psycopg

    assert not (sql_home.feast_dir / "registry.db").exists()
    with psycopg.connect(pg_url) as con:
        services = {
            r[0]
            for r in con.execute(
                "SELECT feature_service_name FROM feature_services WHERE project_id = %s", (sql_home.feast_project,)
            )
        }
        views = {r[0] for r in con.execute("SELECT feature_view_name FROM feature_views")}
    assert {"search_ranker_v1", "recs_ranker_v1"} <= services
    assert {"listing_fv", "item_stats_fv", "user_stats_fv"} <= views


def test_a_second_process_sees_the_same_contracts_as_the_file_registry(sql_home, world, pg_url):
    from ranker.features.store import feature_store, service_spec

    shared = feature_store(Settings(home=sql_home.home, feast_registry=pg_url))
    assert type(shared.registry).__name__ == "SqlRegistry"
    reference = feature_store(world)
    for name in ("search_ranker_v1", "recs_ranker_v1"):
        assert service_spec(shared, name) == service_spec(reference, name)


def test_materialize_state_is_shared_through_the_registry(sql_home, pg_url):
    """One job materializes; a fresh store (another scorer or job) sees the recorded intervals and
    the online values, and a second incremental run writes nothing."""
    from ranker.features.materialize import materialize
    from ranker.features.store import feature_store

    first = materialize(sql_home, full=True)
    assert first["rows"] > 0
    other = feature_store(Settings(home=sql_home.home, feast_registry=pg_url))
    assert other.get_feature_view("item_stats_fv").materialization_intervals
    again = materialize(Settings(home=sql_home.home, feast_registry=pg_url))
    assert again["rows"] == 0
    item = other.get_online_features(features=["listing_fv:price"], entity_rows=[{"item_id": "i0000001"}]).to_dict()
    assert item["price"][0] is not None


def test_the_scorer_feature_path_reads_its_plan_from_the_sql_registry(sql_home, world):
    from ranker.serving.features import OnlineFeatures

    with (
        OnlineFeatures(sql_home, service="search_ranker_v1") as shared,
        OnlineFeatures(world, service="search_ranker_v1") as ref,
    ):
        assert shared.feature_names == ref.feature_names


def test_cache_ttl_comes_from_feature_store_yaml(sql_home):
    from ranker.features.store import repo_config

    config = repo_config(sql_home)
    assert config.registry.registry_type == "sql"
    assert config.registry.path.startswith("postgresql+psycopg://")
    assert config.registry.cache_ttl_seconds == 60 and config.registry.cache_mode == "sync"


@pytest.mark.parametrize("url", ["mysql://u@h/db", "postgresql:///nodb", "postgresql://127.0.0.1:5432/", "not a url"])
def test_a_malformed_registry_url_is_a_one_line_error(url, tmp_path):
    from ranker.features.store import FeatureRepoError, repo_config

    with pytest.raises(FeatureRepoError, match="is not a PostgreSQL URL"):
        repo_config(make_home(tmp_path / "h").with_(feast_registry=url))


def test_an_unreachable_registry_fails_the_cli_with_one_line(tmp_path):
    make_home(tmp_path)
    env = {
        "RANKER_HOME": str(tmp_path),
        "RANKER_FEAST_REGISTRY": f"postgresql://postgres:s3cret@127.0.0.1:{closed_port()}/x",
        "PATH": "/usr/bin:/bin",
    }
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "features", "apply"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert (
        lines[-1].startswith("error: the Feast SQL registry postgresql://postgres:***@127.0.0.1:")
        and "unreachable" in lines[-1]
    )
    assert "Traceback" not in result.stderr and "s3cret" not in result.stderr


def test_ranking_requests_never_read_the_registry(sql_home, pg_url):
    """The scorer resolves its feature plan from the registry once per model load; afterwards requests
    do not touch it, so a registry refresh (or outage) never lands on a ranking request. Shown by
    removing every registry table under a live feature path: it keeps answering the same values.
    (Runs last in this module: it destroys the registry.)"""
    import numpy as np
    import pandas as pd
    import psycopg

    from ranker.serving.features import OnlineFeatures

    listings = pd.read_parquet(sql_home.features_dir / "listings.parquet")
    items = listings.item_id.drop_duplicates().head(50).tolist()
    with OnlineFeatures(sql_home, service="search_ranker_v1") as features:
        before = features.fetch(user_id="u000001", item_ids=items, query="black dress", request_ts=1_790_000_000)
        with psycopg.connect(pg_url, autocommit=True) as con:
            tables = [r[0] for r in con.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
            assert "feature_views" in tables
            for table in tables:
                con.execute(f'DROP TABLE "{table}" CASCADE')
        after = features.fetch(user_id="u000001", item_ids=items, query="black dress", request_ts=1_790_000_000)
    assert np.array_equal(before.matrix, after.matrix, equal_nan=True) and np.isfinite(before.matrix).any()

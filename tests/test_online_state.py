"""A new user's path through the feature store: every online store remembers what it holds, so
switching from the demo's sqlite to an empty Redis loads everything; Feast's SDK and CLI resolve the
feature tables wherever they are called from."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ranker.config import Settings

# An item and a user of the small world that have rows in every batch table by its last snapshot.
ENTITY_TS = pd.Timestamp("2026-10-08", tz="UTC")


def _status_cli(settings: Settings) -> tuple[int, str, str]:
    from click.testing import CliRunner

    from pipelines import cli

    cli._register()
    env = {
        "RANKER_HOME": str(settings.home),
        "RANKER_ONLINE_STORE": settings.online_store,
        "REDIS_URL": settings.redis_url,
    }
    result = CliRunner().invoke(cli.cli, ["features", "status"], env=env)
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.redis
def test_an_empty_redis_gets_a_full_load_after_sqlite_was_loaded(world, redis_server):
    """The demo loads sqlite; Feast's registry (shared by both stores) then records the interval. A
    plain incremental materialize into a new Redis must still load every view, because Redis holds
    no marker; the next run writes nothing; a flushed Redis is loaded again."""
    import redis

    from ranker.features.materialize import materialize
    from ranker.features.online_state import status
    from ranker.features.store import feature_store

    materialize(world)  # sqlite: whatever earlier tests left, it is up to date afterwards
    assert materialize(world)["rows"] == 0, "sqlite's marker says it is up to date"

    settings = world.with_(online_store="redis", redis_url=f"{redis_server}/7")
    redis.Redis.from_url(settings.redis_url).flushdb()  # this test's own database of the private server
    before = status(settings)
    assert not any(v["loaded"] for v in before["views"].values())
    code, out, err = _status_cli(settings)
    assert code == 1 and "EMPTY" in out and "hold no rows" in err

    first = materialize(settings)
    assert first["rows"] > 0
    assert {v["load"] for v in first["views"].values()} == {"full"}
    assert all(v["rows"] > 0 for v in first["views"].values()), first["views"]
    after = status(settings)
    assert all(v["loaded"] and v["rows_total"] > 0 for v in after["views"].values())
    assert all(v["newest_event"].startswith("2026-10-0") for v in after["views"].values())
    code, out, _ = _status_cli(settings)
    assert code == 0 and "EMPTY" not in out and "loaded" in out

    # The values are there and are the latest offline ones (not the defaults).
    online = (
        feature_store(settings)
        .get_online_features(
            features=["item_stats_fv:item_impressions_7d", "listing_fv:price"],
            entity_rows=[{"item_id": "i0000001"}],
        )
        .to_dict()
    )
    assert online["price"][0] is not None and online["item_impressions_7d"][0] is not None

    assert materialize(settings)["rows"] == 0, "an incremental rerun with no new data writes nothing"
    redis.Redis.from_url(settings.redis_url).flushdb()
    again = materialize(settings)
    assert again["rows"] == first["rows"], "a flushed store is a store that holds nothing: full load"


def test_marker_counts_follow_full_and_incremental_loads():
    from datetime import datetime, timezone

    from ranker.features.online_state import missing_views, next_marker

    t0 = datetime(2026, 10, 1, tzinfo=timezone.utc)
    t1 = datetime(2026, 10, 2, tzinfo=timezone.utc)
    full = next_marker(None, view="v", end=t0, rows_written=0, rows_seen=10, newest_event=t0, full=False)
    assert full.rows_total == 10, "a full load whose rows were all stored already still holds them"
    inc = next_marker(full, view="v", end=t1, rows_written=3, rows_seen=3, newest_event=None, full=False)
    assert (inc.rows_total, inc.rows_last_run, inc.newest_event) == (13, 3, t0.isoformat())
    assert inc.full_load_at == full.full_load_at
    empty = next_marker(None, view="w", end=t0, rows_written=0, rows_seen=0, newest_event=None, full=True)
    assert missing_views({"v": inc, "w": empty}, ["v", "w", "x"]) == ["w", "x"]


_SDK_SCRIPT = """
import os, sys
import pandas as pd
from feast import FeatureStore
os.chdir(sys.argv[2])
store = FeatureStore(repo_path=sys.argv[1])
entities = pd.DataFrame({"item_id": ["i0000001", "i0000002"],
                         "event_timestamp": pd.to_datetime(["2026-10-07", "2026-10-08"], utc=True)})
frame = store.get_historical_features(
    entity_df=entities, features=["item_stats_fv:item_clicks_7d", "listing_fv:price"]).to_df()
assert len(frame) == 2 and frame["price"].notna().all(), frame
online = store.get_online_features(features=["listing_fv:price"], entity_rows=[{"item_id": "i0000001"}]).to_dict()
print("ok", len(frame), online["price"][0] is not None)
"""


def test_feast_sdk_finds_the_feature_tables_from_any_working_directory(world, tmp_path):
    """The SDK from the home (repo_path="feature_repo", as from the repository root), from an
    unrelated folder with an absolute repo_path, and the plain `feast plan` inside feature_repo/."""
    from ranker.features.materialize import materialize

    materialize(world)
    elsewhere = tmp_path / "notebooks"
    elsewhere.mkdir()
    runs = [("feature_repo", world.home), (str(world.feature_repo), elsewhere)]
    for repo_path, cwd in runs:
        proc = subprocess.run(
            [sys.executable, "-c", _SDK_SCRIPT, repo_path, str(cwd)], capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.strip().splitlines()[-1] == "ok 2 True"
    feast = Path(sys.executable).with_name("feast")
    plan = subprocess.run([str(feast), "plan"], cwd=world.feature_repo, capture_output=True, text=True, timeout=300)
    assert plan.returncode == 0, plan.stderr[-2000:]
    # Whatever Feast's plan lists (it reports refreshed timestamps after a materialization), every
    # source path it would register is the home's own table, absolute.
    import re

    uris = set(re.findall(r'uri: "([^"]+)"', plan.stdout))
    assert all(u.startswith(str(world.features_dir.resolve()) + "/") for u in uris), uris


def test_each_home_registers_its_own_tables_when_one_process_applies_several(world, tmp_path):
    """Feast imports definition files by top-level name (`data_sources`, ...): a second home applied
    in the same process must not reuse the first home's modules and their absolute table paths."""
    import shutil

    from ranker.features.store import apply, feature_store
    from tests.conftest import make_home

    other = make_home(tmp_path / "other")
    shutil.copytree(world.features_dir, other.features_dir)
    apply(world)  # the world's modules are imported (and cached) first
    apply(other)
    for settings in (other, world):
        path = feature_store(settings).get_data_source("listing_source").path
        assert path == str(settings.features_dir.resolve() / "listings.parquet"), path
    apply(world)  # and back: the world's registry points at the world's tables again
    assert feature_store(world).get_data_source("listing_source").path.startswith(str(world.home.resolve()))

"""ranker.features.feast_compat, the one door to Feast's internals, pinned to Feast's public results.

Each wrapped private function (or wire detail) is checked against what Feast's public API does on
a real store: the tables ``apply`` created, the hash ``write_to_online_store`` wrote to a private
redis-server, the keys ``serialize_entity_key`` returns, the values ``get_online_features`` reads.
A Feast upgrade that changes one of them fails here first, by name.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from ranker.features import feast_compat

# A value per Feast dtype name, written through Feast's public API and read back through the wrappers.
_SAMPLE = {"Float32": 1.5, "Float64": 2.25, "Int64": 7, "Int32": 3, "String": "m", "Bool": True}


def _row(view, keys: dict, ts: datetime) -> pd.DataFrame:
    row = dict(keys, event_timestamp=[ts])
    for f in view.features:
        row[f.name] = [_SAMPLE.get(str(f.dtype), "x")]
    return pd.DataFrame({k: v if isinstance(v, list) else [v] for k, v in row.items()})


@pytest.fixture(scope="module")
def redis_home(world, redis_server):
    import redis as redis_py

    settings = world.with_(online_store="redis", redis_url=f"{redis_server}/7")
    redis_py.Redis.from_url(settings.redis_url).flushdb()  # private server, our database
    return settings


def test_the_checked_version_is_the_installed_one():
    """The wrappers were checked against this Feast; pyproject.toml pins it (an upgrade reruns this file)."""
    import feast

    assert feast.__version__ == feast_compat.FEAST_CHECKED, (
        f"feast {feast.__version__} installed, feast_compat checked against {feast_compat.FEAST_CHECKED}: "
        "run tests/test_feast_compat.py, fix what fails, then update FEAST_CHECKED and the pin"
    )


@pytest.mark.parametrize("seed", range(3))
def test_string_entity_keys_are_feasts_serialized_keys(seed):
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    rng = np.random.default_rng(seed)
    alphabet = list("abz09 -_") + ["é", "日", "\U0001f457"]
    for join_keys in (["item_id"], ["user_id", "category"], ["query", "category"]):
        columns = [["".join(rng.choice(alphabet, size=int(rng.integers(0, 12)))) for _ in range(20)] for _ in join_keys]
        got = feast_compat.string_entity_keys(join_keys, columns, b"proj")
        order = sorted(range(len(join_keys)), key=lambda i: join_keys[i])
        for r, key in enumerate(got):
            proto = EntityKey(
                join_keys=[join_keys[i] for i in order], entity_values=[Value(string_val=columns[i][r]) for i in order]
            )
            version = feast_compat.ENTITY_KEY_SERIALIZATION_VERSION
            want = serialize_entity_key(proto, entity_key_serialization_version=version)
            assert key == want + b"proj"
            assert key.startswith(feast_compat.entity_key_prefix(tuple(sorted(join_keys))))


def test_sqlite_table_and_path_are_where_feast_apply_created_them(world):
    from ranker.features.store import feature_store, repo_config

    store = feature_store(world)
    path = feast_compat.sqlite_path(repo_config(world))
    assert path.exists(), "apply creates the sqlite online store"
    with sqlite3.connect(path) as con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    for view in store.list_feature_views():
        assert feast_compat.sqlite_table(store.project, view) in tables
        assert feast_compat.versioned_view_name(view, versioning=False) == view.name


def test_repo_contents_are_what_apply_registered(world):
    from ranker.features.store import feature_store, in_feature_repo

    store = feature_store(world)
    with in_feature_repo(world.feature_repo):
        repo = feast_compat.repo_contents(world.feature_repo, store.project, store.config)
    assert sorted(v.name for v in repo.feature_views) == sorted(v.name for v in store.list_feature_views())
    assert sorted(v.name for v in repo.on_demand_feature_views) == sorted(
        v.name for v in store.list_on_demand_feature_views()
    )


@pytest.mark.redis
@pytest.mark.parametrize("view_name", ["user_category_fv", "listing_fv"])
def test_redis_layout_is_what_feast_writes(redis_home, view_name):
    """Feast's public write (``write_to_online_store``) puts the row where the wrappers say: the
    hash at the serialized entity key + project, each feature under ``redis_field``, the timestamp
    under ``_ts:{redis_ts_view_name}``, values as serialized ``Value`` protobufs."""
    import redis as redis_py
    from feast.protos.feast.types.Value_pb2 import Value

    from ranker.features.store import feature_store

    store = feature_store(redis_home)
    view = store.get_feature_view(view_name)
    join_keys = [c.name for c in view.entity_columns]
    keys = {k: f"{k}-compat-é" for k in join_keys}
    store.write_to_online_store(view_name, _row(view, keys, datetime(2026, 11, 1, tzinfo=timezone.utc)))
    key = feast_compat.string_entity_keys(join_keys, [[keys[k]] for k in join_keys], store.project.encode())[0]
    stored = redis_py.Redis.from_url(redis_home.redis_url).hgetall(key)
    assert stored, "Feast wrote no hash at the key feast_compat computes"
    assert b"_ts:" + feast_compat.redis_ts_view_name(view, store.config).encode() in stored
    for f in view.features:
        field = feast_compat.redis_field(view, f.name, versioning=feast_compat.online_versioning(store))
        assert field in stored, f"{view_name}:{f.name} is not under redis_field's name"
        value = Value()
        value.ParseFromString(stored[field])
        assert getattr(value, value.WhichOneof("val")) == _SAMPLE.get(str(f.dtype), "x")


@pytest.mark.redis
def test_feasts_own_writer_rows_read_back_through_get_online_features(redis_home):
    """``arrow_to_online_rows`` + ``online_write_batch`` (what materialize uses for non-Redis
    stores) write rows that Feast's public ``get_online_features`` reads back."""
    import pyarrow as pa

    from ranker.features.store import feature_store

    store = feature_store(redis_home)
    view = store.get_feature_view("user_stats_fv")
    frame = _row(view, {"user_id": "u-compat-writer"}, datetime(2026, 11, 2, tzinfo=timezone.utc))
    rows = feast_compat.arrow_to_online_rows(
        pa.Table.from_pandas(frame), view, {c.name: c.dtype.to_value_type() for c in view.entity_columns}
    )
    assert len(rows) == 1
    feast_compat.online_write_batch(store, view, rows)
    names = [f.name for f in view.features]
    got = store.get_online_features(
        features=[f"user_stats_fv:{n}" for n in names], entity_rows=[{"user_id": "u-compat-writer"}]
    ).to_dict()
    for f in view.features:
        want = _SAMPLE.get(str(f.dtype), "x")
        assert got[f.name][0] == pytest.approx(want) if isinstance(want, float) else got[f.name][0] == want


@pytest.mark.redis
def test_connection_socket_is_the_connected_socket(redis_server):
    import redis as redis_py

    pool = redis_py.ConnectionPool.from_url(f"{redis_server}/0")
    conn = pool.get_connection()
    try:
        sock = feast_compat.connection_socket(conn)
        assert sock is not None
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        assert sock.recv(64) == b"+PONG\r\n"
        conn.disconnect()
        assert feast_compat.connection_socket(conn) is None
    finally:
        pool.release(conn)
        pool.disconnect()


def test_offline_helpers_prepare_entity_rows_as_feasts_duckdb_store():
    """The helpers ranker.features.offline borrows from Feast's ibis/DuckDB store (the whole store is
    pinned by tests/test_training.py: identical frames to Feast's own join): schema, timestamp
    range and UTC conversion of the entity rows."""
    frame = pd.DataFrame(
        {
            "user_id": ["u1", "u2", "u3"],
            "event_timestamp": pd.to_datetime(["2026-11-01 10:00", "2026-11-03 09:30", "2026-11-02 00:00"]),
            "request_ts": [1, 2, 3],
        }
    )
    schema = feast_compat.entity_schema(frame)
    assert set(schema) == {"user_id", "event_timestamp", "request_ts"}
    lo, hi = feast_compat.entity_timestamp_range(frame, "event_timestamp")
    assert pd.Timestamp(lo).replace(tzinfo=None) == frame.event_timestamp.min()
    assert pd.Timestamp(hi).replace(tzinfo=None) == frame.event_timestamp.max()
    # text timestamps are parsed as UTC; datetimes are left as they are
    text = frame.assign(event_timestamp=frame.event_timestamp.astype(str))
    utc = feast_compat.entity_rows_utc(text, "event_timestamp")
    assert str(utc.event_timestamp.dt.tz) == "UTC"
    assert (utc.event_timestamp.dt.tz_localize(None) == frame.event_timestamp).all()
    same = feast_compat.entity_rows_utc(frame.copy(), "event_timestamp")
    assert same.event_timestamp.equals(frame.event_timestamp)

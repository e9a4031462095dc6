"""The one door to Feast's internals (and redis-py's socket): every private name and wire detail of
Feast's online layout the platform relies on is reached through this module, nowhere else.

Checked against feast 0.67.0 and redis-py 7.4 (the pins in ``pyproject.toml``). Each function here
is pinned by ``tests/test_feast_compat.py`` to what Feast's *public* API produces (the tables
``apply`` creates, the hashes ``write_to_online_store`` writes, the keys ``serialize_entity_key``
returns, the values ``get_online_features`` reads), so a Feast upgrade that moves one of them fails
there first, by name. ``tests/test_import_graph.py`` fails when any other module imports a private
Feast name or touches these attributes.

What is wrapped, and why it is needed:

* the Redis layout: field names (murmur3 of ``"{view}:{feature}"``, with the view's version suffix
  when online versioning is on), the ``_ts:{view}`` field, and the serialized entity key (version 3
  for string join keys) + project: the scorer and the materialize writer read and write it directly
  (the Feast SDK costs ~25 ms per request, the direct read ~4 ms);
* the sqlite layout: the ``{project}_{view}`` table names and the database path Feast resolves;
* Feast's own writer (``_convert_arrow_to_proto`` + the provider's ``online_write_batch``) and
  repository parser (``_get_repo_contents``), used as Feast's ``materialize`` and ``apply`` use
  them but without their per-run overheads;
* redis-py's connected socket (``Connection._sock``): the scorer writes a round's commands and
  parses the replies itself (see :mod:`ranker.serving.redis_reader`).
"""

from __future__ import annotations

import functools
import socket
import struct
from pathlib import Path
from typing import Any

FEAST_CHECKED = "0.67.0"  # the Feast version these wrappers were checked against (tests/test_feast_compat.py)
ENTITY_KEY_SERIALIZATION_VERSION = 3  # what Feast 0.67 writes by default (feature_store.yaml does not override it)
STRING_VALUE_TYPE = 2  # ValueType.STRING in the serialized entity key


# --- the Redis layout -----------------------------------------------------------------------------


def online_versioning(store: Any) -> bool:
    """Whether the registry has online feature-view versioning on (names then carry ``_v{N}``)."""
    return bool(getattr(store.config.registry, "enable_online_feature_view_versioning", False))


def versioned_view_name(view: Any, *, versioning: bool) -> str:
    """The view's name in the online store (``name`` or ``name_v{N}`` under versioning)."""
    from feast.infra.online_stores.helpers import compute_versioned_name

    return compute_versioned_name(view, versioning)


def redis_field(view: Any, feature: str, *, versioning: bool) -> bytes:
    """The hash field Feast's Redis store writes a feature under: murmur3_32 of ``"{view}:{feature}"``."""
    from feast.infra.online_stores.helpers import _mmh3

    return _mmh3(f"{versioned_view_name(view, versioning=versioning)}:{feature}")


def redis_ts_view_name(view: Any, config: Any) -> str:
    """The view name in the hash's ``_ts:{view}`` field, as Feast's Redis store computes it."""
    from feast.infra.online_stores.redis import _versioned_fv_name

    return _versioned_fv_name(view, config)


@functools.lru_cache(maxsize=64)
def entity_key_prefix(join_keys: tuple[str, ...]) -> bytes:
    """What every serialized entity key on these (sorted) string join keys starts with: their count,
    then each name with the STRING type and its length; the values follow in the same order."""
    if list(join_keys) != sorted(join_keys):
        raise ValueError(f"join keys {join_keys} are not sorted")
    parts = [struct.pack("<I", len(join_keys))]
    for name in join_keys:
        raw = name.encode("utf-8")
        parts.append(struct.pack("<II", STRING_VALUE_TYPE, len(raw)) + raw)
    return b"".join(parts)


def string_entity_keys(join_keys: list[str], columns: list[list[str]], suffix: bytes) -> list[bytes]:
    """Feast's serialized entity keys (version 3) for string join keys, each followed by ``suffix``
    (the project name for Redis, ``b""`` for sqlite): count, the sorted key names, then each value
    with its type and length. ``columns[i]`` holds the values of ``join_keys[i]``."""
    order = sorted(range(len(join_keys)), key=lambda i: join_keys[i])
    prefix = entity_key_prefix(tuple(join_keys[i] for i in order))
    type_tag = struct.pack("<I", STRING_VALUE_TYPE)
    keys = []
    for values in zip(*(columns[i] for i in order), strict=True):
        parts = [prefix]
        for v in values:
            e = v.encode("utf-8")
            parts.append(type_tag + struct.pack("<I", len(e)) + e)
        parts.append(suffix)
        keys.append(b"".join(parts))
    return keys


# --- the sqlite layout ----------------------------------------------------------------------------


def sqlite_table(project: str, view: Any, *, versioning: bool = False) -> str:
    """The table Feast's sqlite store keeps a view in (``{project}_{view}``)."""
    from feast.infra.online_stores.helpers import compute_table_id

    return compute_table_id(project, view, versioning)


def sqlite_path(config: Any) -> Path:
    """The sqlite online store's database file, resolved as Feast resolves it (repo-relative)."""
    from feast.infra.online_stores.sqlite import SqliteOnlineStore

    return Path(SqliteOnlineStore._get_db_path(config))


def sqlite_ts_value(ts_us: int) -> int:
    """A timestamp as Feast's sqlite store keeps it in ``event_ts``/``created_ts``: its datetime
    adapter's ``int(naive_utc.timestamp())``, whole seconds (so within one second a later write wins)."""
    from datetime import datetime, timedelta

    return int((datetime(1970, 1, 1) + timedelta(microseconds=int(ts_us))).timestamp())


def sqlite_write_newer(
    conn: Any,
    table: str,
    entity_keys: list[bytes],
    ts_us: list[int],
    created_us: list[int],
    features: list[tuple[str, list[bytes], list]],
) -> list[bool]:
    """Write rows into a view's sqlite table in Feast's layout (one row per entity key and feature:
    ``value`` the serialized Value, ``value_text`` as Feast derives it, ``event_ts``, ``created_ts``),
    never over a newer one (at the layout's whole-second resolution). In one ``BEGIN IMMEDIATE``
    transaction (other writers wait, so nothing lands between the check and the write) an entity
    whose stored view timestamp (the newest ``event_ts`` of its rows) is later than the new one is
    skipped; an equal one is rewritten. A written entity's other features of the view keep their
    values and take the new ``event_ts`` (one timestamp per entity and view, as Redis'
    ``_ts:{view}``). ``features`` holds ``(feature_name, values, value_texts)`` per feature written.
    Returns, per row, whether it was written. ``conn`` must be in autocommit mode
    (``isolation_level=None``)."""
    quoted = '"' + table.replace('"', '""') + '"'
    written = [False] * len(entity_keys)
    conn.execute("BEGIN IMMEDIATE")
    try:
        stored: dict[bytes, int] = {}
        unique = list(dict.fromkeys(entity_keys))
        for lo in range(0, len(unique), 10_000):
            chunk = unique[lo : lo + 10_000]
            rows = conn.execute(
                f"SELECT entity_key, MAX(event_ts) FROM {quoted} WHERE entity_key IN ({','.join('?' * len(chunk))}) "
                "GROUP BY entity_key",
                chunk,
            ).fetchall()
            stored.update({bytes(k): int(ts) for k, ts in rows})
        bump = []
        upserts = []
        for i, key in enumerate(entity_keys):
            ts_s = sqlite_ts_value(ts_us[i])
            old = stored.get(key)
            if old is not None and old > ts_s:
                continue
            written[i] = True
            created = sqlite_ts_value(created_us[i])
            stored[key] = ts_s
            bump.append((ts_s, created, key))
            for name, values, texts in features:
                upserts.append((key, name, values[i], texts[i], ts_s, created))
        conn.executemany(f"UPDATE {quoted} SET event_ts = ?, created_ts = ? WHERE entity_key = ?", bump)
        conn.executemany(
            f"INSERT INTO {quoted} (entity_key, feature_name, value, value_text, event_ts, created_ts) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(entity_key, feature_name) DO UPDATE SET "
            "value = excluded.value, value_text = excluded.value_text, event_ts = excluded.event_ts, "
            "created_ts = excluded.created_ts WHERE event_ts <= excluded.event_ts",
            upserts,
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return written


# --- Feast's own writer and repository parser -----------------------------------------------------


def arrow_to_online_rows(table: Any, view: Any, join_keys: dict) -> list:
    """Feast's conversion of an Arrow table/batch into the rows ``online_write_batch`` takes."""
    from feast.utils import _convert_arrow_to_proto

    return _convert_arrow_to_proto(table, view, join_keys)


def online_write_batch(store: Any, view: Any, rows: list) -> None:
    """Write converted rows through the store's provider, as Feast's materialize does."""
    store._get_provider().online_write_batch(store.config, view, rows, None)


def repo_contents(repo_path: Path, project: str, config: Any) -> Any:
    """The definitions of a feature repository, parsed as ``feast apply`` parses them."""
    from feast.repo_operations import _get_repo_contents

    return _get_repo_contents(repo_path, project, config)


def apply_repo(store: Any, repo: Any) -> None:
    """Register parsed definitions and update the online tables, as ``feast apply`` does."""
    from feast.repo_operations import apply_total_with_repo_instance

    apply_total_with_repo_instance(store, store.config.project, store.registry, repo, skip_source_validation=False)


# --- the DuckDB offline store's helpers (ranker.features.offline reuses Feast's preparation) -------


def validate_lance_feature_views(views: list) -> None:
    """Feast's DuckDB store's check of Lance-backed views (raises on an unsupported one)."""
    from feast.infra.offline_stores.duckdb import _validate_lance_feature_views

    _validate_lance_feature_views(views)


def entity_schema(entity_df: Any) -> dict:
    """The entity rows' column types, as Feast's ibis stores infer them."""
    from feast.infra.offline_stores.ibis import _get_entity_schema

    return _get_entity_schema(entity_df=entity_df)


def entity_timestamp_range(entity_df: Any, ts_col: str) -> tuple:
    """(min, max) of the entity rows' timestamps, as Feast's ibis stores compute them."""
    from feast.infra.offline_stores.ibis import _get_entity_df_event_timestamp_range

    return _get_entity_df_event_timestamp_range(entity_df, ts_col)


def entity_rows_utc(entity_df: Any, ts_col: str) -> Any:
    """The entity rows with their timestamps in UTC, as Feast's ibis stores convert them."""
    from feast.infra.offline_stores.ibis import _to_utc

    return _to_utc(entity_df, ts_col)


def read_data_source(source: Any, repo_path: str) -> Any:
    """A view's batch source as an ibis table, read by Feast's DuckDB store's reader."""
    from feast.infra.offline_stores.duckdb import _read_data_source

    return _read_data_source(source, repo_path)


def write_data_source(*args: Any, **kwargs: Any) -> Any:
    """Feast's DuckDB store's writer (what its retrieval jobs persist results with)."""
    from feast.infra.offline_stores.duckdb import _write_data_source

    return _write_data_source(*args, **kwargs)


# --- redis-py -------------------------------------------------------------------------------------


def connection_socket(conn: Any) -> socket.socket | None:
    """The connected socket of a redis-py ``Connection`` (None when not connected)."""
    return conn._sock

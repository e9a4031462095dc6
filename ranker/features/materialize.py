"""Load the online store with the latest feature values, incrementally and safely rerunnable.

For each feature view, the rows with ``start < event_timestamp <= end`` are read from the view's
parquet source with DuckDB, reduced to the latest row per entity, and written:

* to Redis by a vectorised writer that produces Feast's own layout byte for byte (one hash per
  entity key = Feast's serialized entity key + project; fields ``murmur3("{view}:{feature}")``
  holding serialized ``Value`` protobufs; ``_ts:{view}`` holding the event timestamp), sent as raw
  pipelined ``HSET`` commands. Like Feast, a row never overwrites a newer one already stored.
  On a Redis Cluster (``RANKER_REDIS_CLUSTER=1``) the rows are split by the master serving their
  key's hash slot, each master written in turn with the same pipelines (:class:`ClusterWriter`).
* to sqlite in Feast's layout through :func:`ranker.features.feast_compat.sqlite_write_newer`: the
  check and the upsert in one transaction, never over a newer row. Feast's own sqlite
  ``online_write_batch`` overwrites unconditionally, so a daily run would put back the values a
  stream wrote later (a listing the stream marked sold would be for sale again).
* to any other online store through Feast's own ``online_write_batch``.

``start`` is where the previous run for that view ended *in this online store*: a marker written
into the store with the data (:mod:`ranker.features.online_state`) says what it holds, so a store
that never received data (a new Redis after the demo loaded sqlite, a flushed one) gets a full load,
although Feast's registry, which both stores share, records the sqlite run's interval. The interval
is still recorded in Feast's registry (``feast materialize-incremental`` continues from it). Unlike
Feast's first run, which only looks back one TTL, a full load offers the latest row of every
entity: the online store then answers for the latest snapshot that exists, which is what a scorer
starting on historical data needs.
"""

from __future__ import annotations

import time
from functools import partial
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ranker.config import Settings
from ranker.features.feast_compat import (
    arrow_to_online_rows,
    online_versioning,
    online_write_batch,
    redis_ts_view_name,
    sqlite_path,
    sqlite_table,
    sqlite_write_newer,
    string_entity_keys,
)
from ranker.errors import RankerError
from ranker.features.online_state import OnlineStateError, next_marker, read_markers, write_markers
from ranker.features.slots import key_slots, slot_map
from ranker.features.store import feature_store

BATCH_ROWS = 20_000


class MaterializeError(RankerError):
    """The online store could not be loaded; the message says why and what to do."""


# --- Feast Value protobuf encoding, by hand and vectorised -------------------------------------
# Value is a oneof; a set member is always written, even when zero. Field numbers from
# feast/protos/feast/types/Value.proto: string_val=2, int64_val=4, double_val=5, float_val=6.


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


_SMALL_INT64 = [b"\x20" + _varint(i) for i in range(4096)]


def encode_values(column: pa.ChunkedArray | pa.Array, feast_type: str) -> list[bytes]:
    """Serialized Feast ``Value`` protos for one column; nulls become the empty message."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    n = len(column)
    if feast_type in ("Float32", "Float64"):
        width, tag, dtype = (4, 0x35, "<f4") if feast_type == "Float32" else (8, 0x29, "<f8")
        values = column.fill_null(0).to_numpy(zero_copy_only=False).astype(dtype)
        buf = np.empty((n, width + 1), dtype=np.uint8)
        buf[:, 0] = tag
        buf[:, 1:] = values.view(np.uint8).reshape(n, width)
        raw = buf.tobytes()
        step = width + 1
        out = [raw[i * step : (i + 1) * step] for i in range(n)]
    elif feast_type in ("Int64", "Int32"):
        tag = 0x20 if feast_type == "Int64" else 0x18
        values = column.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64).tolist()
        if tag == 0x20:
            out = [_SMALL_INT64[v] if 0 <= v < 4096 else b"\x20" + _varint(v) for v in values]
        else:
            out = [b"\x18" + _varint(v) for v in values]
    elif feast_type == "String":
        out = []
        for v in column.to_pylist():
            if v is None:
                out.append(b"")
            else:
                e = v.encode("utf-8")
                out.append(b"\x12" + _varint(len(e)) + e)
        return out
    elif feast_type == "Bool":
        values = column.fill_null(False).to_pylist()
        out = [b"\x38\x01" if v else b"\x38\x00" for v in values]
    else:
        raise MaterializeError(f"feature type {feast_type} is not supported by the Redis writer")
    if not valid.all():
        for i in np.flatnonzero(~valid):
            out[i] = b""
    return out


def encode_timestamp(ts_us: int) -> bytes:
    """A serialized google.protobuf.Timestamp (seconds=1, nanos=2; zero fields omitted)."""
    seconds, micros = divmod(int(ts_us), 1_000_000)
    out = b"\x08" + _varint(seconds) if seconds else b""
    if micros:
        out += b"\x10" + _varint(micros * 1000)
    return out


def _resp(args: list[bytes]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        parts.append(b"$%d\r\n" % len(a))
        parts.append(a)
        parts.append(b"\r\n")
    return b"".join(parts)


def _redis_client(settings: Settings):
    import redis

    client = redis.Redis.from_url(settings.redis_url, socket_timeout=30, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise MaterializeError(
            f"Redis at {settings.redis_url} is not reachable ({exc}); start it or fix REDIS_URL"
        ) from None
    return client


class ClusterWriter:
    """Writes to a Redis Cluster: each view's rows split by the master serving their keys' hash
    slot (slot map read once per run by ``CLUSTER SLOTS``), then written to each master with
    :func:`write_redis`, whose pipelines hold one node's keys only."""

    def __init__(self, settings: Settings) -> None:
        import redis

        self.seeds = settings.redis_seeds
        replies = None
        for host, port in self.seeds:
            try:
                replies = redis.Redis(
                    host=host, port=port, socket_timeout=30, socket_connect_timeout=5
                ).execute_command("CLUSTER SLOTS")
                break
            except redis.RedisError as exc:
                last = exc
        if replies is None:
            raise MaterializeError(
                f"no Redis Cluster seed of REDIS_URL={settings.redis_url} answered ({last}); start it or fix REDIS_URL"
            ) from None
        self.nodes, self.owner = slot_map(_raw_slots(replies))
        if (self.owner < 0).any():
            raise MaterializeError("the Redis Cluster does not cover every hash slot: fix it (redis-cli --cluster fix)")
        self.clients = [redis.Redis(host=h, port=p, socket_timeout=30, socket_connect_timeout=5) for h, p in self.nodes]

    def write(self, *, project: str, view, table: pa.Table, ts_key_view: str) -> int:
        join_keys = [c.name for c in view.entity_columns]
        keys = string_entity_keys(join_keys, [table.column(k).to_pylist() for k in join_keys], project.encode())
        from concurrent.futures import ThreadPoolExecutor

        node_of = self.owner[key_slots(keys)]
        parts = [(client, np.flatnonzero(node_of == n)) for n, client in enumerate(self.clients)]

        def one(client, rows) -> int:
            return write_redis(client, project=project, view=view, table=table.take(rows), ts_key_view=ts_key_view)

        # one thread per master: one master's round trips overlap the others' encoding
        with ThreadPoolExecutor(max_workers=len(parts)) as pool:
            return sum(pool.map(lambda part: one(*part) if len(part[1]) else 0, parts))


def _raw_slots(replies) -> list:
    """redis-py's parsed CLUSTER SLOTS (a dict by range) back in the raw reply's shape."""
    if isinstance(replies, dict):
        return [[start, end, list(info["primary"])] for (start, end), info in replies.items()]
    return list(replies)


def write_redis(client, *, project: str, view, table: pa.Table, ts_key_view: str) -> int:
    """Write the latest rows of one view to Redis in Feast's layout; returns rows written."""
    import mmh3

    join_keys = [c.name for c in view.entity_columns]
    for k in join_keys:
        if table.schema.field(k).type not in (pa.string(), pa.large_string()):
            raise MaterializeError(f"{view.name}: join key {k} must be a string column")
    keys = string_entity_keys(join_keys, [table.column(k).to_pylist() for k in join_keys], project.encode())
    ts_field = f"_ts:{ts_key_view}".encode()
    ts_us = table.column("event_timestamp").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()

    conn = client.connection_pool.get_connection()
    try:
        # Never overwrite a newer row (Feast's rule: skip when stored >= new). Raw pipelined HGETs:
        # redis-py's per-command packing would cost more than Redis itself here.
        stored = []
        for lo in range(0, len(keys), 5000):
            stored += _roundtrip(conn, [_resp([b"HGET", k, ts_field]) for k in keys[lo : lo + 5000]])
        keep = np.ones(len(keys), dtype=bool)
        for i, raw in enumerate(stored):
            if raw:
                seconds, nanos = _decode_timestamp(raw)
                if seconds * 1_000_000 + nanos // 1000 >= ts_us[i]:
                    keep[i] = False
        fields = list(view.features)
        names = [mmh3.hash(f"{ts_key_view}:{f.name}", signed=False).to_bytes(4, "little") for f in fields]
        encoded = [encode_values(table.column(f.name), str(f.dtype)) for f in fields]
        commands = []
        written = 0
        for i in np.flatnonzero(keep).tolist():
            args = [b"HSET", keys[i], ts_field, encode_timestamp(ts_us[i])]
            for name, col in zip(names, encoded, strict=True):
                args.append(name)
                args.append(col[i])
            commands.append(_resp(args))
            written += 1
            if len(commands) >= 5000:
                _roundtrip(conn, commands)
                commands = []
        if commands:
            _roundtrip(conn, commands)
    except BaseException:
        conn.disconnect()  # replies may be left unread: never hand this connection back dirty
        raise
    finally:
        client.connection_pool.release(conn)
    return written


def write_sqlite(store, view, table: pa.Table) -> int:
    """Write the latest rows of one view to the sqlite online store in Feast's layout, never over a
    newer row (one transaction per batch of rows); returns the rows written."""
    import sqlite3

    join_keys = [c.name for c in view.entity_columns]
    name = sqlite_table(store.project, view, versioning=online_versioning(store))
    created = view.batch_source.created_timestamp_column
    conn = sqlite3.connect(str(sqlite_path(store.config)), timeout=30, isolation_level=None)
    written = 0
    try:
        for batch in table.to_batches(max_chunksize=BATCH_ROWS):
            keys = string_entity_keys(join_keys, [batch.column(k).to_pylist() for k in join_keys], b"")
            ts_us = _micros(batch.column("event_timestamp"))
            created_us = _micros(batch.column(created)) if created else [time.time_ns() // 1000] * len(keys)
            cols = [
                (
                    f.name,
                    encode_values(batch.column(f.name), str(f.dtype)),
                    value_texts(batch.column(f.name), str(f.dtype)),
                )
                for f in view.features
            ]
            written += sum(sqlite_write_newer(conn, name, keys, ts_us, created_us, cols))
    finally:
        conn.close()
    return written


def _micros(column) -> list[int]:
    return column.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_pylist()


def value_texts(column, feast_type: str) -> list:
    """``value_text`` as Feast's sqlite store derives it from each Value (None for a null)."""
    values = column.to_pylist()
    if feast_type == "Float32":
        return [None if v is None else str(float(np.float32(v))) for v in values]
    if feast_type == "Float64":
        return [None if v is None else str(float(v)) for v in values]
    if feast_type in ("Int64", "Int32"):
        return [None if v is None else str(int(v)) for v in values]
    if feast_type == "Bool":
        return [None if v is None else str(bool(v)) for v in values]
    return [None if v is None else str(v) for v in values]


def _roundtrip(conn, commands: list[bytes]) -> list:
    """Send packed commands in one write and read every reply."""
    import redis

    conn.send_packed_command([b"".join(commands)], check_health=False)
    replies = []
    for _ in commands:
        reply = conn.read_response()
        if isinstance(reply, redis.ResponseError):
            raise MaterializeError(f"Redis refused a write: {reply}")
        replies.append(reply)
    return replies


def _decode_timestamp(raw: bytes) -> tuple[int, int]:
    """(seconds, nanos) of a serialized google.protobuf.Timestamp."""
    from google.protobuf.timestamp_pb2 import Timestamp

    t = Timestamp()
    t.ParseFromString(raw)
    return t.seconds, t.nanos


def _latest_rows(view, path: str, start: datetime | None, end: datetime) -> pa.Table:
    import duckdb

    keys = ", ".join(f'"{c.name}"' for c in view.entity_columns)
    # A source with a created column (the stream-fed views: a row revised at the same event time) breaks
    # ties by it, as Feast's point-in-time join does; Feast's row conversion then expects the column.
    created = view.batch_source.created_timestamp_column
    cols = ", ".join(
        [
            *(f'"{c.name}"' for c in view.entity_columns),
            "event_timestamp",
            *([f'"{created}"'] if created else []),
            *(f'"{f.name}"' for f in view.features),
        ]
    )
    order = "event_timestamp DESC" + (f', "{created}" DESC' if created else "")
    where = "event_timestamp <= $end" + (" AND event_timestamp > $start" if start else "")
    sql = f"""
        SELECT {cols} FROM read_parquet($path)
        WHERE {where}
        QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY {order}) = 1
    """
    params = {"path": path, "end": end}
    if start:
        params["start"] = start
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone='UTC'")
        return con.sql(sql, params=params).to_arrow_table()
    finally:
        con.close()


def materialize(settings: Settings, *, end: datetime | None = None, full: bool = False, progress=None) -> dict:
    """Load every online feature view's latest values up to ``end`` (default now).

    Args:
        settings: selects the repository and the online store (sqlite or Redis).
        end: load rows with event_timestamp <= end.
        full: ignore earlier runs and reload from the start of the data.
        progress: optional tqdm-like object with ``update(n)`` and ``set_description(s)``.

    Returns per-view rows written, the interval, seconds and rows/s.
    """
    end = end or datetime.now(timezone.utc)
    if end.tzinfo is None:
        raise MaterializeError("--end must carry a timezone (e.g. 2026-11-25T00:00:00+00:00)")
    store = feature_store(settings)
    views = [v for v in store.list_feature_views() if v.online]
    if not views:
        raise MaterializeError("no feature views registered: run `ranker features apply` first")
    client = None
    cluster = None
    if settings.online_store == "redis" and settings.redis_cluster:
        cluster = ClusterWriter(settings)
    elif settings.online_store == "redis":
        client = _redis_client(settings)
    try:
        markers = read_markers(settings, store.project)
    except OnlineStateError as exc:
        raise MaterializeError(str(exc)) from None
    summary: dict = {"online_store": settings.online_store, "end": end.isoformat(), "views": {}}
    total_rows, started = 0, time.perf_counter()
    for view in views:
        abs_path = str((settings.feature_repo / view.batch_source.path).resolve())
        if not Path(abs_path).exists():
            raise MaterializeError(f"{abs_path} not found: run `ranker features build` first")
        marker = markers.get(view.name)
        start = None if full or marker is None else marker.end_time
        if start is not None and start >= end:
            summary["views"][view.name] = {"rows": 0, "start": start.isoformat(), "note": "up to date"}
            continue
        if progress is not None:
            progress.set_description(view.name)
        table = _latest_rows(view, abs_path, start, end)
        t0 = time.perf_counter()
        if client is not None or cluster is not None:
            write = cluster.write if cluster is not None else partial(write_redis, client)
            written = write(
                project=store.project, view=view, table=table, ts_key_view=redis_ts_view_name(view, store.config)
            )
            if progress is not None:
                progress.update(table.num_rows)
        elif settings.online_store == "sqlite":
            written = write_sqlite(store, view, table)
            if progress is not None:
                progress.update(table.num_rows)
        else:
            join_keys = {c.name: c.dtype.to_value_type() for c in view.entity_columns}
            written = 0
            for batch in table.to_batches(max_chunksize=BATCH_ROWS):
                rows = arrow_to_online_rows(batch, view, join_keys)
                online_write_batch(store, view, rows)
                written += len(rows)
                if progress is not None:
                    progress.update(len(rows))
        seconds = time.perf_counter() - t0
        if start is not None:
            interval_start = start
        elif table.num_rows:
            interval_start = pc.min(table.column("event_timestamp")).as_py()
        else:
            interval_start = end
        store.registry.apply_materialization(view, store.project, interval_start, end, commit=True)
        try:  # after the data it describes: an interrupted run leaves the previous marker, and reruns
            write_markers(
                settings,
                store.project,
                [
                    next_marker(
                        marker,
                        view=view.name,
                        end=end,
                        rows_written=written,
                        rows_seen=table.num_rows,
                        newest_event=pc.max(table.column("event_timestamp")).as_py() if table.num_rows else None,
                        full=start is None,
                    )
                ],
            )
        except OnlineStateError as exc:
            raise MaterializeError(str(exc)) from None
        total_rows += written
        summary["views"][view.name] = {
            "rows": int(written),
            "start": start.isoformat() if start else None,
            "load": "full" if start is None else "incremental",
            "seconds": round(seconds, 3),
            "rows_per_s": round(written / seconds) if seconds > 0 and written else None,
        }
    elapsed = time.perf_counter() - started
    summary["rows"] = total_rows
    summary["seconds"] = round(elapsed, 2)
    return summary

"""Write the stream's feature updates into Feast's exact online layout, never over a newer value.

An update is a table per feature view: the join key(s) first, ``event_timestamp``, optionally
``created``, then any subset of the view's features (``listing_fv`` with only ``is_sold``, say);
features not in the table keep their stored values. The values are encoded by the materializer's
encoders (:func:`ranker.features.materialize.encode_values`, :func:`encode_timestamp`), the keys
and names by :mod:`ranker.features.feast_compat`, so ``get_online_features`` and the scorer's fast
path read them unchanged.

"Never over a newer value" is atomic, unlike Feast's own read-then-write check:

* Redis: a Lua script (Redis runs a script alone) compares, for each entity, the stored
  ``_ts:{view}`` with the new event time: older is written, equal is rewritten (a replay after a
  restart writes the same value again), newer stays and the row counts as ``skipped_not_newer``.
  One script call per view and ``SCRIPT_KEYS`` entities, every call of a :meth:`OnlineWriter.write`
  sent in one pipeline: one round trip per processor batch;
* sqlite: the check and the upsert in one ``BEGIN IMMEDIATE`` transaction
  (:func:`ranker.features.feast_compat.sqlite_write_newer`).

On a Redis Cluster a script may only touch keys of one hash slot: the rows are grouped per slot
(one script call per slot group, ``ranker.features.slots.key_slots``), the calls sent in one
pipeline per master (the slot map of ``CLUSTER SLOTS``, as the materializer's
:class:`~ranker.features.materialize.ClusterWriter` reads it). A call answered ``MOVED`` (a slot
moved since the map was read) refreshes the map and goes to the new owner; ``ASK`` (a slot being
migrated) is sent again to the target after ``ASKING``; ``TRYAGAIN`` is retried after a short wait.
A retried call is safe: the script rewrites an equal event time with the same values.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pyarrow as pa

from ranker.config import Settings
from ranker.features.feast_compat import (
    online_versioning,
    redis_ts_view_name,
    sqlite_path,
    sqlite_table,
    sqlite_write_newer,
    string_entity_keys,
)
from ranker.features.materialize import encode_timestamp, encode_values, value_texts
from ranker.streaming.errors import StreamError

SCRIPT_KEYS = 1000  # entities per Lua script call
CLUSTER_ATTEMPTS = 6  # rounds of MOVED / ASK / TRYAGAIN retries before a write fails
_timestamp = lru_cache(maxsize=1 << 14)(encode_timestamp)  # rows of a batch often share their time

# ARGV: ts_field, n_features, the n field names, then per key: new ts (µs), its serialized
# Timestamp, the n serialized Values. Returns {written, skipped}.
_WRITE_NEWER = """
local ts_field = ARGV[1]
local nf = tonumber(ARGV[2])
local per = nf + 2
local base = nf + 3
local written, skipped = 0, 0
for i = 1, #KEYS do
  local o = base + (i - 1) * per
  local new_us = tonumber(ARGV[o])
  local raw = redis.call('HGET', KEYS[i], ts_field)
  local newer = false
  if raw then
    local secs, nanos, pos = 0, 0, 1
    while pos <= #raw do
      local tag = string.byte(raw, pos)
      pos = pos + 1
      local v, mul = 0, 1
      while true do
        local b = string.byte(raw, pos)
        pos = pos + 1
        v = v + (b % 128) * mul
        mul = mul * 128
        if b < 128 then break end
      end
      if tag == 8 then secs = v elseif tag == 16 then nanos = v end
    end
    newer = secs * 1000000 + math.floor(nanos / 1000) > new_us
  end
  if newer then
    skipped = skipped + 1
  else
    local args = {ts_field, ARGV[o + 1]}
    for j = 1, nf do
      args[#args + 1] = ARGV[2 + j]
      args[#args + 1] = ARGV[o + 1 + j]
    end
    redis.call('HSET', KEYS[i], unpack(args))
    written = written + 1
  end
end
return {written, skipped}
"""
_SCRIPT_SHA = hashlib.sha1(_WRITE_NEWER.encode()).hexdigest()


@dataclass
class WriteStats:
    written: int = 0
    skipped_not_newer: int = 0
    by_view: dict = field(default_factory=dict)

    def add(self, view: str, written: int, skipped: int) -> None:
        self.written += written
        self.skipped_not_newer += skipped
        w, s = self.by_view.get(view, (0, 0))
        self.by_view[view] = (w + written, s + skipped)


class OnlineWriter:
    """Writes update tables into the settings' online store (Redis or sqlite)."""

    def __init__(self, settings: Settings, store=None) -> None:
        from ranker.features.store import feature_store

        self.settings = settings
        self.store = store if store is not None else feature_store(settings)
        self.project = self.store.project
        self._views: dict = {}
        self._redis = None
        self._script = None
        self._cluster: ClusterScripts | None = None
        self._sqlite: sqlite3.Connection | None = None
        if settings.online_store == "redis" and settings.redis_cluster:
            self._cluster = ClusterScripts(settings)
        elif settings.online_store == "redis":
            import redis

            self._redis = redis.Redis.from_url(settings.redis_url, socket_timeout=30, socket_connect_timeout=5)
            self._script = self._redis.register_script(_WRITE_NEWER)  # its sha; loaded on first use

    def view(self, name: str):
        if name not in self._views:
            try:
                self._views[name] = self.store.get_feature_view(name)
            except Exception:
                self.store.refresh_registry()
                try:
                    self._views[name] = self.store.get_feature_view(name)
                except Exception:
                    raise StreamError(f"feature view {name} is not registered: run `ranker features apply`") from None
        return self._views[name]

    def write(self, updates: dict[str, pa.Table]) -> WriteStats:
        stats = WriteStats()
        calls: list[tuple[str, int, list[bytes], list[bytes]]] = []  # Redis: (view, slot, keys, args) per call
        for name, table in updates.items():
            if table.num_rows == 0:
                continue
            view = self.view(name)
            join_keys, key_columns, features, ts_us, created_us = self._columns(view, table)
            encoded = [encode_values(table.column(f.name), str(f.dtype)) for f in features]
            if self._redis is not None or self._cluster is not None:
                for slot, keys, args in self._redis_calls(view, join_keys, key_columns, features, encoded, ts_us):
                    calls.append((name, slot, keys, args))
            else:
                written, skipped = self._write_sqlite(
                    view, join_keys, key_columns, features, encoded, table, ts_us, created_us
                )
                stats.add(name, written, skipped)
        if calls:
            replies = self._cluster.run(calls) if self._cluster is not None else self._run_scripts(calls)
            for (name, *_), (written, skipped) in zip(calls, replies, strict=True):
                stats.add(name, int(written), int(skipped))
        return stats

    def _run_scripts(self, calls: list[tuple[str, int, list[bytes], list[bytes]]]) -> list:
        """Every script call in one pipeline (not a transaction: each call is atomic on its own); the
        script is loaded again when Redis lost it (a restart, SCRIPT FLUSH), and only those calls rerun."""
        from redis.exceptions import NoScriptError

        assert self._redis is not None and self._script is not None
        results: list = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(2):
            pipe = self._redis.pipeline(transaction=False)
            for i in todo:
                _, _, keys, args = calls[i]
                pipe.evalsha(self._script.sha, len(keys), *keys, *args)
            replies = pipe.execute(raise_on_error=False)
            missing = []
            for i, reply in zip(todo, replies, strict=True):
                if isinstance(reply, NoScriptError) and attempt == 0:
                    missing.append(i)
                elif isinstance(reply, Exception):
                    raise reply
                else:
                    results[i] = reply
            if not missing:
                break
            self._redis.script_load(_WRITE_NEWER)
            todo = missing
        return results

    def _columns(self, view, table: pa.Table):
        join_keys = [c.name for c in view.entity_columns]
        for k in join_keys:
            if k not in table.column_names:
                raise StreamError(f"update of {view.name} lacks its join key {k}")
        features = [f for f in view.features if f.name in table.column_names]
        unknown = set(table.column_names) - {*join_keys, "event_timestamp", "created"} - {f.name for f in view.features}
        if unknown:
            raise StreamError(f"update of {view.name} has columns that are not its features: {sorted(unknown)}")
        ts = table.column("event_timestamp")
        if not pa.types.is_integer(ts.type):
            ts = ts.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
        ts_us = ts.to_numpy().astype(np.int64)
        if "created" in table.column_names:
            created = table.column("created")
            if not pa.types.is_integer(created.type):
                created = created.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
            created_us = created.to_numpy().astype(np.int64)
        else:
            created_us = np.full(len(ts_us), time.time_ns() // 1000, dtype=np.int64)
        key_columns = [[str(v) for v in table.column(k).to_pylist()] for k in join_keys]
        return join_keys, key_columns, features, ts_us, created_us

    def _redis_calls(self, view, join_keys, key_columns, features, encoded, ts_us):
        """(slot, keys, args) of the script calls writing these rows, ``SCRIPT_KEYS`` entities each;
        on a cluster, every call's keys share one hash slot (-1: one node, any keys)."""
        import mmh3

        ts_view = redis_ts_view_name(view, self.store.config)
        keys = string_entity_keys(join_keys, key_columns, self.project.encode())
        names = [mmh3.hash(f"{ts_view}:{f.name}", signed=False).to_bytes(4, "little") for f in features]
        head = [f"_ts:{ts_view}".encode(), str(len(features)).encode(), *names]
        ts = ts_us.tolist()
        ts_text = [b"%d" % t for t in ts]
        ts_value = [_timestamp(t) for t in ts]
        values = list(zip(*encoded, strict=True)) if encoded else [()] * len(keys)
        groups = self._cluster.groups(keys) if self._cluster is not None else _chunks(len(keys))
        for slot, rows in groups:
            args = list(head)
            for i in rows:
                args.append(ts_text[i])
                args.append(ts_value[i])
                args.extend(values[i])
            yield slot, [keys[i] for i in rows], args

    def _sqlite_conn(self) -> sqlite3.Connection:
        if self._sqlite is None:
            path = sqlite_path(self.store.config)
            if not path.exists():
                raise StreamError(f"{path} does not exist: run `ranker features apply` first")
            self._sqlite = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
        return self._sqlite

    def _write_sqlite(self, view, join_keys, key_columns, features, encoded, table, ts_us, created_us):
        keys = string_entity_keys(join_keys, key_columns, b"")
        cols = []
        for f, values in zip(features, encoded, strict=True):
            cols.append((f.name, values, value_texts(table.column(f.name), str(f.dtype))))
        table_name = sqlite_table(self.project, view, versioning=online_versioning(self.store))
        done = sqlite_write_newer(self._sqlite_conn(), table_name, keys, ts_us.tolist(), created_us.tolist(), cols)
        written = sum(done)
        return written, len(done) - written

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
            self._sqlite = None
        if self._redis is not None:
            self._redis.close()
        if self._cluster is not None:
            self._cluster.close()


def _chunks(n: int) -> Iterator[tuple[int, range]]:
    for lo in range(0, n, SCRIPT_KEYS):
        yield -1, range(lo, min(lo + SCRIPT_KEYS, n))


class ClusterScripts:
    """The write script on a Redis Cluster: calls grouped per hash slot, one pipeline per master,
    MOVED / ASK / TRYAGAIN followed (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._clients: dict[tuple[str, int], object] = {}
        self.refreshes = -1
        self.refresh()

    def refresh(self) -> None:
        """Read the slot map again (the materializer's reader of ``CLUSTER SLOTS``)."""
        from ranker.features.materialize import ClusterWriter

        mapper = ClusterWriter(self.settings)
        self.nodes, self.owner = mapper.nodes, mapper.owner
        for client in mapper.clients:
            client.close()
        self.refreshes += 1

    def client(self, address: tuple[str, int]):
        if address not in self._clients:
            import redis

            host, port = address
            self._clients[address] = redis.Redis(host=host, port=port, socket_timeout=30, socket_connect_timeout=5)
        return self._clients[address]

    @staticmethod
    def groups(keys: list[bytes]) -> Iterator[tuple[int, list[int]]]:
        """The rows of ``keys`` per hash slot (at most ``SCRIPT_KEYS`` a group), with their slot."""
        from ranker.features.slots import key_slots

        slots = key_slots(keys)
        order = np.argsort(slots, kind="stable")
        bounds = np.flatnonzero(np.diff(slots[order])) + 1
        for part in np.split(order, bounds):
            if len(part):
                rows = part.tolist()
                for lo in range(0, len(rows), SCRIPT_KEYS):
                    yield int(slots[rows[0]]), rows[lo : lo + SCRIPT_KEYS]

    def run(self, calls: list[tuple[str, int, list[bytes], list[bytes]]]) -> list:
        from redis.exceptions import AskError, MovedError, NoScriptError, TryAgainError

        sha = _SCRIPT_SHA
        results: list = [None] * len(calls)
        todo: list[tuple[int, tuple[str, int] | None]] = [(i, None) for i in range(len(calls))]
        for attempt in range(CLUSTER_ATTEMPTS):
            by_node: dict[tuple[str, int], list[tuple[int, bool]]] = {}
            for i, ask in todo:
                node = ask if ask is not None else self.nodes[int(self.owner[calls[i][1]])]
                by_node.setdefault(node, []).append((i, ask is not None))
            retry: list[tuple[int, tuple[str, int] | None]] = []
            moved = wait = False
            for node, items in by_node.items():
                client = self.client(node)
                pipe = client.pipeline(transaction=False)
                for i, asking in items:
                    _, _, keys, args = calls[i]
                    if asking:
                        pipe.execute_command("ASKING")
                    pipe.evalsha(sha, len(keys), *keys, *args)
                replies = iter(pipe.execute(raise_on_error=False))
                loaded = False
                for i, asking in items:
                    if asking:
                        next(replies)  # ASKING's OK
                    reply = next(replies)
                    if isinstance(reply, NoScriptError):
                        if not loaded:
                            client.script_load(_WRITE_NEWER)
                            loaded = True
                        retry.append((i, None))
                    elif isinstance(reply, MovedError):  # before AskError: MOVED is a kind of ASK in redis-py
                        moved = True
                        retry.append((i, None))
                    elif isinstance(reply, AskError):
                        retry.append((i, (reply.host or node[0], int(reply.port))))
                    elif isinstance(reply, TryAgainError):
                        wait = True
                        retry.append((i, None))
                    elif isinstance(reply, Exception):
                        raise reply
                    else:
                        results[i] = reply
            if not retry:
                return results
            if moved:
                self.refresh()
            if wait:
                time.sleep(0.05 * (attempt + 1))  # a slot's keys are moving: back off, not synchronise
            todo = retry
        raise StreamError(
            f"the Redis Cluster kept redirecting {len(todo)} script calls after {CLUSTER_ATTEMPTS} attempts: "
            "is a resharding stuck? (redis-cli --cluster check)"
        )

    def close(self) -> None:
        for client in self._clients.values():
            client.close()  # type: ignore[attr-defined]
        self._clients = {}

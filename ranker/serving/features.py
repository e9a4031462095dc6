"""The scorer's online feature path: Feast's online store read directly, exactly equal to
``FeatureStore.get_online_features`` for the same feature service.

Feast's Python ``get_online_features`` costs ~25 ms for one user and 200 listings; almost all of it
is Python bookkeeping around a few cheap store reads. :class:`OnlineFeatures` reads the same store
layout without the SDK on the hot path:

* **Redis** (``RANKER_ONLINE_STORE=redis``): one hash per entity key (Feast's serialized entity key
  + project), fields ``murmur3("{view}:{feature}")`` holding serialized ``Value`` protobufs. One
  connection pool per process; per request at most two pipelined round trips, each a single write:
  round 1 the listings' hashes (``listing_fv`` and ``item_stats_fv`` share the item's hash) and the
  user's hash; round 2 the seller, category, user x category and query x category hashes, keyed by
  the seller and category round 1 returned. A hash is read with ``HMGET`` of exactly the fields the
  service needs, or with ``HGETALL`` when those are most of the hash (cheaper for Redis). The
  replies are parsed straight off the receive buffer by the compiled kernels of
  :mod:`ranker.serving.resp` (no Python object per cell). Every wait ends at the caller's deadline
  (or after ``timeout_s``); any Redis error or timeout raises :class:`OnlineStoreUnavailable`.
* **sqlite** (the embedded default): Feast's ``{project}_{view}`` tables (``entity_key``,
  ``feature_name``, ``value`` ...), one query per view and round for all the entity keys of the
  request (the keys are joined from a ``VALUES`` list, so SQLite hands back each row's position),
  one read-only connection per thread.

Values are decoded from the ``Value`` protobuf bytes (float_val, double_val, int64_val, int32_val,
bool_val; by the compiled kernels for Redis, with numpy for sqlite; anything unusual goes through
the protobuf parser), straight into float64 columns, then defaults and the float32 cast are applied exactly as
:func:`ranker.training.dataset.feature_matrix` does on Feast's output. On-demand features are
computed by the same functions of :mod:`ranker.features.transforms` Feast's on-demand views call,
on a DataFrame of the same inputs (numbers as float64 with NaN, strings as objects with None), so
the matrix is bit-identical to ``feature_matrix(get_online_features(...).to_df(), spec)``
(``tests/test_online_features.py`` checks it on random requests against both stores).

Entity rows are those of :func:`feast_reference`: ``user_id``, ``item_id``, ``seller_id`` and
``category`` of the listing (read from ``listing_fv``; empty strings for a listing the store does not
know, so its seller, category and affinity features are missing and take their defaults) and, for a
search service, ``query`` (= the search text, "" when absent). Feast 0.67's online read returns
stored values regardless of the view's TTL; so does this path.
"""

from __future__ import annotations

import functools
import math
import os
import sqlite3
import struct
import threading
import time
from dataclasses import dataclass, field
from itertools import repeat
from operator import length_hint
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import pandas as pd
from google.protobuf.message import DecodeError

from ranker.config import Settings
from ranker.errors import RankerError
from ranker.features import transforms
from ranker.features.materialize import _string_entity_keys
from ranker.features.store import FeatureRepoError, feature_store, repo_config, service_spec
from ranker.training.dataset import feature_matrix

LISTING_VIEW = "listing_fv"
SOLD_FIELD = "is_sold"
# Join keys the request gives directly, and those read from the listing (listing_fv field names).
REQUEST_KEYS = ("user_id", "item_id", "query")
LISTING_KEYS = ("seller_id", "category")
ITEM_KEYS = ("item_id", *LISTING_KEYS)  # keys that vary with the listing: the item-level views
SUPPORTED_REQUEST_FIELDS = ("request_ts", "query_text")
NUMERIC_TYPES = ("Float32", "Float64", "Int64", "Int32", "Bool")

# Tags of the Value protobuf oneof members (field number << 3 | wire type).
_TAG_STRING, _TAG_INT32, _TAG_INT64, _TAG_DOUBLE, _TAG_FLOAT, _TAG_BOOL = 0x12, 0x18, 0x20, 0x29, 0x35, 0x38
_NUMERIC_ONEOF = ("float_val", "double_val", "int64_val", "int32_val", "bool_val")
_R4 = np.arange(1, 5)
_R8 = np.arange(1, 9)
_VARINT_POS = np.arange(10)
_VARINT_SHIFT = (7 * _VARINT_POS).astype(np.uint64)


class OnlineStoreUnavailable(RankerError):
    """The online store is down, timed out, or returned something unreadable."""


class FetchDeadlineExceeded(OnlineStoreUnavailable):
    """The store did not answer before the caller's deadline (``fetch(deadline=...)``)."""


@dataclass(frozen=True)
class FeatureRows:
    """Features of one request's candidates, in the request's item order."""

    matrix: np.ndarray  # float32 (len(item_ids), len(feature_names)), the service's order, defaults applied
    known: np.ndarray  # bool per item: the listing exists in the online store (listing_fv)
    sold: np.ndarray  # bool per item: listing_fv.is_sold == 1
    feature_names: tuple[str, ...]


class _Block(NamedTuple):
    """One read's values, a row per entity key: the numeric fields decoded (NaN = missing), whether
    each numeric cell exists in the store (a null value exists, a missing field or hash does not),
    and the string fields (None = missing)."""

    values: np.ndarray  # float64 (keys, n_num)
    present: np.ndarray | None  # bool (keys, n_num); Redis: only for the field sets that need it (presence)
    text: np.ndarray  # object (keys, n_str)

    @classmethod
    def empty(cls, fs) -> "_Block":
        return cls(np.empty((0, fs.n_num)), np.empty((0, fs.n_num), dtype=bool), np.empty((0, fs.n - fs.n_num), dtype=object))


def data_of(buf: np.ndarray, offset: int, length: int) -> bytes:
    """The bytes of one cell of a receive buffer (b"" for nil)."""
    return bytes(buf[offset : offset + length]) if length > 0 else b""


# --- Value protobuf decoding ----------------------------------------------------------------------

def _slow_number(raw: bytes) -> float:
    from feast.protos.feast.types.Value_pb2 import Value

    value = Value()
    value.ParseFromString(raw)
    kind = value.WhichOneof("val")
    if kind in _NUMERIC_ONEOF:
        return float(getattr(value, kind))
    if kind == "string_val":  # feature_matrix coerces strings (pd.to_numeric, errors="coerce")
        return float(_coerced([value.string_val])[0])
    return math.nan


def _slow_string(raw):
    if not raw:
        return None
    from feast.protos.feast.types.Value_pb2 import Value

    value = Value()
    value.ParseFromString(raw)
    kind = value.WhichOneof("val")
    return None if kind is None else getattr(value, kind)


def _lengths_and_bytes(cells: list) -> tuple[np.ndarray, bytes]:
    """Length of each cell (None counts as empty) and all cells concatenated, both at C speed."""
    lens = np.fromiter(map(length_hint, cells), dtype=np.intp, count=len(cells))  # length_hint(None) == 0
    return lens, b"".join(filter(None, cells))


def decode_numbers(cells: list) -> np.ndarray:
    """float64 values of serialized Feast ``Value`` messages; empty message or None -> NaN.

    Vectorised over the concatenated bytes: float_val (tag 0x35 + 4 bytes), double_val (0x29 + 8),
    int64/int32_val (0x20/0x18 + varint), bool_val (0x38 + 1); anything else is parsed by protobuf."""
    m = len(cells)
    lens, data = _lengths_and_bytes(cells)
    out = np.full(m, np.nan)
    buf = np.frombuffer(data, dtype=np.uint8)
    if not buf.size:
        return out
    ends = np.cumsum(lens)
    starts = ends - lens
    nonempty = lens > 0
    tag = np.zeros(m, dtype=np.uint8)
    tag[nonempty] = buf[starts[nonempty]]
    done = ~nonempty
    sel = (tag == _TAG_FLOAT) & (lens == 5)
    if sel.any():
        out[sel] = np.ascontiguousarray(buf[starts[sel, None] + _R4]).view("<f4")[:, 0]
        done |= sel
    sel = (tag == _TAG_DOUBLE) & (lens == 9)
    if sel.any():
        out[sel] = np.ascontiguousarray(buf[starts[sel, None] + _R8]).view("<f8")[:, 0]
        done |= sel
    sel = ((tag == _TAG_INT64) | (tag == _TAG_INT32)) & (lens >= 2) & (lens <= 11)
    if sel.any():
        s, n = starts[sel], lens[sel] - 1
        sel[sel] = buf[s + n] < 0x80  # the varint ends exactly at the end of the message
        s, n = starts[sel], lens[sel] - 1
        if (n == 1).all():
            out[sel] = buf[s + 1]
        else:
            idx = np.minimum(s[:, None] + 1 + _VARINT_POS, buf.size - 1)
            raw = np.where(_VARINT_POS < n[:, None], buf[idx], 0).astype(np.uint64)
            value = np.bitwise_or.reduce((raw & np.uint64(0x7F)) << _VARINT_SHIFT, axis=1)
            out[sel] = value.view(np.int64)
        done |= sel
    sel = (tag == _TAG_BOOL) & (lens == 2)
    if sel.any():
        b = buf[starts[sel] + 1]
        ok = b < 2
        sel[sel] = ok
        out[sel] = b[ok]
        done |= sel
    if not done.all():
        for i in np.flatnonzero(~done):
            out[i] = _slow_number(cells[i])
    return out


def decode_strings(cells: list) -> list:
    """Python values of serialized Feast ``Value`` messages holding strings; missing -> None.

    The usual message (tag 0x12, one length byte, ASCII text) is sliced out of one decoded buffer;
    anything else goes through the protobuf parser."""
    m = len(cells)
    out = [None] * m
    if not m:
        return out
    lens, data = _lengths_and_bytes(cells)
    if not data:
        return out
    buf = np.frombuffer(data, dtype=np.uint8)
    ends = np.cumsum(lens)
    starts = ends - lens
    ok = lens >= 2
    s = starts[ok]
    ok[ok] = (buf[s] == _TAG_STRING) & (buf[s + 1] == lens[ok] - 2)
    fast = np.flatnonzero(ok)
    if data.isascii():  # byte offsets are character offsets
        text = data.decode("ascii")
        values = [text[a:b] for a, b in zip((starts[fast] + 2).tolist(), ends[fast].tolist())]
    else:
        values = [data[a:b].decode() for a, b in zip((starts[fast] + 2).tolist(), ends[fast].tolist())]
    if len(fast) == m:
        return values
    for i, v in zip(fast.tolist(), values):
        out[i] = v
    for i in np.flatnonzero(~ok & (lens > 0)).tolist():
        out[i] = _slow_string(cells[i])
    return out


# --- The plan: which fields of which hashes/tables the service needs -----------------------------

@dataclass
class _FieldSet:
    """Fields read together from one entity's hash (Redis) or from its rows (sqlite).

    Redis reads a hash with ``HMGET`` of exactly these fields, or with ``HGETALL`` when they are at
    least half of the hash (and more than a handful): Redis then walks the hash once instead of
    searching it per field and parses one argument instead of one per field, which measured 40%
    less server CPU for the listing hash (19 of its 31 fields; benchmarks in the README). The reply
    is parsed by name (:func:`ranker.serving.resp.parse_replies`), other views' fields skipped."""

    n: int
    n_num: int  # the first n_num fields are numeric, the rest strings
    redis_names: list  # Feast's field names in the hash (murmur3 of "view:feature"), in field order
    hgetall: bool
    head: bytes  # RESP of the command up to the key
    tail: bytes  # RESP after the key (HMGET's field names)
    sqlite_views: list  # (table, {feature_name: position})
    _sql: dict
    table: int = -1  # HGETALL: its name table in the plan's tables (parse_replies); -1: HMGET
    presence: bool = False  # its reads report which cells exist (the listing's: known / unknown)

    @classmethod
    def build(cls, fields: list, redis_names: list, tables: dict, hash_fields: int) -> "_FieldSet":
        by_view: dict = {}
        for j, (view, name, _dtype) in enumerate(fields):
            by_view.setdefault(view, {})[name] = j
        n_num = sum(dtype in NUMERIC_TYPES for _v, _n, dtype in fields)
        if any(dtype not in NUMERIC_TYPES for _v, _n, dtype in fields[:n_num]):
            raise FeatureRepoError("a field set lists its numeric fields first")
        hgetall = len(fields) > 4 and 2 * len(fields) >= hash_fields
        if hgetall:
            head, tail = b"*2\r\n$7\r\nHGETALL\r\n", b""
        else:
            head = b"*%d\r\n$5\r\nHMGET\r\n" % (len(fields) + 2)
            tail = b"".join(b"$%d\r\n%s\r\n" % (len(f), f) for f in redis_names)
        return cls(
            n=len(fields),
            n_num=n_num,
            redis_names=list(redis_names),
            hgetall=hgetall,
            head=head,
            tail=tail,
            sqlite_views=[(tables[v], names) for v, names in by_view.items()],
            _sql={},
        )

    def sqlite_queries(self, n_keys: int) -> list[str]:
        """One query per view: rows (position in the flat key x field grid, value)."""
        sql = self._sql.get(n_keys)
        if sql is None:
            values = ",".join(f"({i},?)" for i in range(n_keys))
            sql = []
            for table, names in self.sqlite_views:
                case = " ".join(f"WHEN {_sql_str(name)} THEN {j}" for name, j in names.items())
                listed = ",".join(_sql_str(name) for name in names)
                sql.append(
                    f"WITH k(i, ek) AS (VALUES {values}) "
                    f"SELECT k.i * {self.n} + CASE t.feature_name {case} END, t.value "
                    f'FROM k JOIN "{table}" t ON t.entity_key = k.ek WHERE +t.feature_name IN ({listed})'
                )
            if len(self._sql) < 256:
                self._sql[n_keys] = sql
        return sql


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


@dataclass
class _Group:
    """Views sharing one entity key (so one Redis hash per entity)."""

    join_keys: tuple[str, ...]  # sorted
    varying: tuple[str, ...]  # keys that vary with the listing (item_id, seller_id, category)
    cacheable: bool  # item-level: only keys that vary with the listing
    derived: bool  # needs seller_id/category from listing_fv: second round
    fields: list  # (view, name, dtype): numeric fields first, then strings
    n_num: int
    fieldset: _FieldSet
    cache_num: slice = field(default_factory=lambda: slice(0, 0))  # where its numbers / strings sit in a cached item record
    cache_str: slice = field(default_factory=lambda: slice(0, 0))


class _Plan:
    """Everything about the service that does not change between requests."""

    def __init__(self, store, spec) -> None:
        from feast.infra.online_stores.helpers import _mmh3, compute_table_id, compute_versioned_name

        views = {v.name: v for v in store.list_feature_views()}
        odfvs = {v.name: v for v in store.list_on_demand_feature_views()}
        versioning = bool(getattr(store.config.registry, "enable_online_feature_view_versioning", False))
        self.project = store.project
        needed: dict[str, list[str]] = {}

        def need(view: str, name: str) -> None:
            if view not in views:
                raise FeatureRepoError(f"feature view {view!r} is not registered")
            names = needed.setdefault(view, [])
            if name not in names:
                names.append(name)

        for name in (*LISTING_KEYS, SOLD_FIELD):
            need(LISTING_VIEW, name)
        self.odfvs: list = []  # (function, [(matrix column, output name)], view name)
        self.request_fields: set[str] = set()
        odfv_inputs: list = []
        sources: dict = {}  # on-demand view -> its (view, feature) inputs
        for j, ref in enumerate(spec.refs):
            view, name = ref.split(":", 1)
            if view in views:
                need(view, name)
            elif view in odfvs:
                odfv = odfvs[view]
                entry = next((e for e in self.odfvs if e[2] == view), None)
                if entry is None:
                    fn = getattr(transforms, view, None) or odfv.feature_transformation.udf
                    entry = (fn, [], view)
                    self.odfvs.append(entry)
                    for proj in odfv.source_feature_view_projections.values():
                        for feat in proj.features:
                            need(proj.name, feat.name)
                            odfv_inputs.append((proj.name, feat.name))
                            sources.setdefault(view, []).append((proj.name, feat.name))
                    for src in odfv.source_request_sources.values():
                        self.request_fields.update(f.name for f in src.schema)
                entry[1].append((j, name))
            else:
                raise FeatureRepoError(f"{ref}: unknown view in service {spec.name!r}")
        unsupported = self.request_fields - set(SUPPORTED_REQUEST_FIELDS)
        if unsupported:
            raise FeatureRepoError(f"request fields {sorted(unsupported)} are not supported by the serving path")

        tables = {v: compute_table_id(self.project, views[v], versioning) for v in needed}
        groups: dict[tuple, list] = {}
        for view, names in needed.items():
            keys = tuple(sorted(c.name for c in views[view].entity_columns))
            bad = [k for k in keys if k not in REQUEST_KEYS + LISTING_KEYS]
            if not keys or bad:
                raise FeatureRepoError(f"{view}: join keys {list(keys)} are not supported by the serving path")
            dtypes = {f.name: str(f.dtype) for f in views[view].features}
            for name in names:
                if name not in dtypes:
                    raise FeatureRepoError(f"{view}:{name} is not a feature of {view}")
                groups.setdefault(keys, []).append((view, name, dtypes[name]))
        self.groups: list[_Group] = []
        num_off = str_off = 0
        for keys, fields in groups.items():
            fields = [f for f in fields if f[2] in NUMERIC_TYPES] + [f for f in fields if f[2] not in NUMERIC_TYPES]
            n_num = sum(f[2] in NUMERIC_TYPES for f in fields)
            redis_names = [_mmh3(f"{compute_versioned_name(views[v], versioning)}:{n}") for v, n, _ in fields]
            # Fields of the entity's hash: every view on the same keys writes its features and a _ts.
            hash_fields = sum(len(v.features) + 1 for v in views.values()
                              if tuple(sorted(c.name for c in v.entity_columns)) == keys)
            group = _Group(
                join_keys=keys,
                varying=tuple(k for k in keys if k in ITEM_KEYS),
                cacheable=all(k in ITEM_KEYS for k in keys),
                derived=any(k in LISTING_KEYS for k in keys),
                fields=fields,
                n_num=n_num,
                fieldset=_FieldSet.build(fields, redis_names, tables, hash_fields),
            )
            if group.cacheable:
                group.cache_num = slice(num_off, num_off + n_num)
                group.cache_str = slice(str_off, str_off + len(fields) - n_num)
                num_off, str_off = group.cache_num.stop, group.cache_str.stop
            self.groups.append(group)
        self.cache_width = (num_off, str_off)
        # Where each needed field lands: (group index, "num"/"str", column in that group's block).
        self.loc: dict = {}
        for g, group in enumerate(self.groups):
            for k, (view, name, dtype) in enumerate(group.fields):
                self.loc[(view, name)] = (g, "num", k) if k < group.n_num else (g, "str", k - group.n_num)
        item_keys = ("item_id",)
        self.item_group = next((g for g, grp in enumerate(self.groups) if grp.join_keys == item_keys), None)
        if self.item_group is None or (LISTING_VIEW, SOLD_FIELD) not in self.loc:
            raise FeatureRepoError(f"{LISTING_VIEW} must be keyed by item_id alone")
        self.sold_loc = self.loc[(LISTING_VIEW, SOLD_FIELD)][2]
        self.key_loc = {k: self.loc[(LISTING_VIEW, k)][2] for k in LISTING_KEYS}
        listing_fields = [f for f in self.groups[self.item_group].fields if f[0] == LISTING_VIEW and f[1] == SOLD_FIELD]
        self.sold_fieldset = _FieldSet.build(
            listing_fields,
            [_mmh3(f"{compute_versioned_name(views[LISTING_VIEW], versioning)}:{SOLD_FIELD}")],
            tables,
            hash_fields=1 << 30,  # one field: always HMGET
        )
        self.groups[self.item_group].fieldset.presence = self.sold_fieldset.presence = True
        # Name tables of the HGETALL field sets, one row each, for the reply parser.
        from ranker.serving.resp import name_table

        mapped = [fs for fs in (*(grp.fieldset for grp in self.groups), self.sold_fieldset) if fs.hgetall]
        width = max((name_table(fs.redis_names)[0].shape[1] for fs in mapped), default=8)
        self.map_names = np.zeros((max(len(mapped), 1), width), dtype=np.uint32)
        self.map_columns = np.full((max(len(mapped), 1), width), -1, dtype=np.int64)
        for t, fs in enumerate(mapped):
            fs.table = t
            names, columns = name_table(fs.redis_names, size=width)
            self.map_names[t], self.map_columns[t] = names[0], columns[0]
        # Matrix columns filled straight from a group's numbers, per group; string-typed service
        # features are coerced like feature_matrix does.
        self.columns: list = []  # (group, matrix columns, group number columns)
        self.string_columns: list = []  # (matrix column, group, string column)
        per_group: dict = {}
        for j, ref in enumerate(spec.refs):
            view, name = ref.split(":", 1)
            if view in views:
                g, kind, k = self.loc[(view, name)]
                if kind == "num":
                    per_group.setdefault(g, ([], []))
                    per_group[g][0].append(j)
                    per_group[g][1].append(k)
                else:
                    self.string_columns.append((j, g, k))
        self.columns = [(g, np.array(js), np.array(ks)) for g, (js, ks) in per_group.items()]
        self.odfv_inputs = [(name, self.loc[(view, name)]) for view, name in dict.fromkeys(odfv_inputs)]
        # The groups each on-demand view reads (aligned with self.odfvs): it runs as soon as they are in.
        self.round1_groups = [g for g, group in enumerate(self.groups) if not group.derived]
        self.odfv_groups = [frozenset(self.loc[src][0] for src in sources.get(name, ())) for _fn, _out, name in self.odfvs]
        self.defaults = np.array([spec.defaults[f] for f in spec.features], dtype=np.float64)
        self.has_default = ~np.isnan(self.defaults)
        self.n_features = len(spec.features)


# --- Store backends ------------------------------------------------------------------------------

class _EntityKeys(NamedTuple):
    """The entity keys of one read, not serialized yet: per join key (sorted, as Feast serializes
    them), the values of the ``count`` keys (a list), or one value every key shares (a str: the
    request's user or query)."""

    join_keys: tuple
    columns: tuple
    count: int

    def serialized(self, suffix: bytes = b"") -> list:
        """Feast's serialized keys (+ ``suffix``), by the reference implementation."""
        values = [[c] * self.count if isinstance(c, str) else list(c) for c in self.columns]
        return _string_entity_keys(list(self.join_keys), values, suffix)


@functools.lru_cache(maxsize=64)
def _key_prefix(join_keys: tuple) -> bytes:
    """What every serialized entity key on these join keys starts with (their count, then each
    name with its STRING type and length), as ``_string_entity_keys`` writes it; the values follow
    in the same sorted order."""
    if list(join_keys) != sorted(join_keys):
        raise ValueError(f"join keys {join_keys} are not sorted")
    parts = [struct.pack("<I", len(join_keys))]
    for name in join_keys:
        raw = name.encode("utf-8")
        parts.append(struct.pack("<II", 2, len(raw)) + raw)
    return b"".join(parts)


def _utf8(values: list) -> tuple[bytes, np.ndarray]:
    """The values' UTF-8 bytes concatenated, and each one's length in bytes."""
    text = "".join(values)
    if text.isascii():  # one encode; character lengths are byte lengths
        return text.encode("ascii"), np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    encoded = [v.encode("utf-8") for v in values]
    return b"".join(encoded), np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))


class _Pending:
    """A round written to the store whose replies are not read yet (``send`` / ``receive``)."""

    __slots__ = ("reads", "counts", "deadline", "conn", "widths", "table_of", "timeout")

    def __init__(self, reads: list, counts: list, deadline: float | None) -> None:
        self.reads, self.counts, self.deadline = reads, counts, deadline
        self.conn = self.widths = self.table_of = self.timeout = None


class _RedisBackend:
    RECEIVE_BUFFER = 1 << 18  # bytes per thread to start with; doubled while a round's replies need more

    def __init__(self, url: str, timeout_s: float, map_names: np.ndarray, map_columns: np.ndarray, *,
                 key_suffix: bytes) -> None:
        import redis

        from ranker.serving import resp

        resp.warm_up()  # compile (or load) the kernels now, not on the first request
        self._resp = resp
        self._redis = redis
        # driver_info=None: no CLIENT SETINFO round trips when a connection opens, so against a
        # URL without password or db number connecting is the TCP connect alone and every later
        # wait is bounded by the request's deadline (AUTH/SELECT handshakes by timeout_s).
        self._pool = redis.ConnectionPool.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, health_check_interval=0,
            driver_info=None,
        )
        self._local = threading.local()  # the receive buffer of each thread
        self._idle: list = []  # (pid, connection) handed back by reads, see _connection
        self.map_names, self.map_columns = map_names, map_columns  # HGETALL field name tables (_Plan)
        self._suffix = key_suffix  # Feast's Redis key: the serialized entity key + the project
        self._frames = np.zeros(0, dtype=np.uint8)  # command heads and tails, key prefixes, the suffix
        self._frame_at: dict = {}  # (join keys, head, tail) -> their offsets in _frames (_frames_of)
        self._frame_lock = threading.Lock()
        self.errors = (redis.RedisError, OSError)
        parsed = url.split("@")[-1]
        self.name = f"Redis at {parsed if '://' in parsed else 'redis://' + parsed}"

    def read(self, reads: list, deadline: float | None = None) -> list:
        """reads: (entity keys, fieldset); returns per read a :class:`_Block` (one row per key).
        Socket waits end at ``deadline`` (monotonic; None: the pool's socket timeout)."""
        return self.receive(self.send(reads, deadline))

    def send(self, reads: list, deadline: float | None = None) -> "_Pending":
        """Write one round's commands (all in one write) and return without waiting for the
        replies: the caller works while Redis answers, then calls :meth:`receive` (or
        :meth:`abandon`: a connection with replies left unread is never reused)."""
        payload = self._payload(reads)
        pending = _Pending(reads, [keys.count for keys, _fs in reads], deadline)
        if payload is None:
            return pending
        counts = pending.counts
        pending.widths = np.repeat(np.array([fs.n for _keys, fs in reads], dtype=np.int64), counts)
        pending.table_of = np.repeat(np.array([fs.table for _keys, fs in reads], dtype=np.int64), counts)
        conn = pending.conn = self._connection()
        try:
            sock = conn._sock
            if sock is None:
                raise self._redis.ConnectionError("not connected")
            if deadline is not None:
                pending.timeout = sock.gettimeout()
                self._until(sock, deadline)
            sock.sendall(payload)
        except BaseException:
            self.abandon(pending)
            raise
        return pending

    def receive(self, pending: "_Pending") -> list:
        """The blocks of a round :meth:`send` wrote: its replies received and parsed straight off
        this thread's receive buffer by the compiled kernels of :mod:`ranker.serving.resp` (no
        Python object per cell), numeric fields decoded into float64 and string fields sliced
        once per distinct value."""
        reads, counts = pending.reads, pending.counts
        conn = pending.conn
        if conn is None:
            return [_Block.empty(fs) for _keys, fs in reads]
        cells = int(pending.widths.sum())
        off = np.zeros(cells, dtype=np.int64)
        ln = np.full(cells, -1, dtype=np.int64)  # HGETALL leaves absent fields nil
        try:
            buf = self._receive(conn._sock, pending, off, ln)
            if pending.deadline is not None:
                conn._sock.settimeout(pending.timeout)
        except BaseException:
            self.abandon(pending)  # replies may be left unread: never use this connection again
            raise
        pending.conn = None
        self._idle.append((os.getpid(), conn))
        blocks = []
        at = 0
        for (keys, fs), k in zip(reads, counts):
            o2 = off[at : at + k * fs.n].reshape(k, fs.n)
            l2 = ln[at : at + k * fs.n].reshape(k, fs.n)
            at += k * fs.n
            blocks.append(self._block(buf, o2, l2, fs))
        return blocks

    def abandon(self, pending: "_Pending") -> None:
        """Drop a round whose replies will not be read: its connection is closed, not reused."""
        conn, pending.conn = pending.conn, None
        if conn is not None:
            conn.disconnect()
            self._pool.release(conn)

    def _connection(self):
        """A connected connection: the last one a read handed back (``_idle``, a list: pop and
        append are atomic), else a new one from the pool. The pool's own checkout (a lock, a
        liveness poll, release) cost more than a round trip's parsing; a connection that failed is
        never handed back, and none crosses a fork."""
        while True:
            try:
                pid, conn = self._idle.pop()
            except IndexError:
                return self._pool.get_connection()
            if pid == os.getpid() and conn._sock is not None:
                return conn
            if pid == os.getpid():
                self._pool.release(conn)

    def _frames_of(self, join_keys: tuple, fs: "_FieldSet") -> tuple:
        """(offset, length) in ``self._frames`` of the read's command head, key prefix, command
        tail and key suffix; a new combination is appended (under a lock: offsets never move)."""
        found = self._frame_at.get((join_keys, fs.head, fs.tail))
        if found is None:
            with self._frame_lock:
                raw = bytes(self._frames)
                at = []
                for part in (fs.head, _key_prefix(join_keys), fs.tail, self._suffix):
                    at += (len(raw), len(part))
                    raw += part
                self._frames = np.frombuffer(raw, dtype=np.uint8)
                found = self._frame_at[(join_keys, fs.head, fs.tail)] = tuple(at)
        return found

    def _payload(self, reads: list):
        """The round's commands (per read, ``fs.head`` + entity key + ``fs.tail`` per key) as one
        buffer written by the compiled :func:`ranker.serving.resp.encode_commands` from the keys'
        UTF-8 values (no Python object per key: a memo of serialized keys cost more, its lookups
        missing the CPU cache); None when there is no key to read."""
        values, lens, columns, rows = [], [], [], []
        at = at_lens = value_bytes = 0
        for keys, fs in reads:
            if not keys.count:
                continue
            rows.append((keys.count, len(columns), len(keys.columns), *self._frames_of(keys.join_keys, fs)))
            for col in keys.columns:
                if isinstance(col, str):  # the request's user or query: in every key of the read
                    raw = col.encode("utf-8")
                    columns.append((at, -1, len(raw)))
                    value_bytes += keys.count * len(raw)
                else:
                    raw, col_lens = _utf8(col)
                    columns.append((at, at_lens, 0))
                    lens.append(col_lens)
                    at_lens += len(col_lens)
                    value_bytes += len(raw)
                values.append(raw)
                at += len(raw)
        if not rows:
            return None
        resp = self._resp
        out = np.empty(resp.commands_size(rows, value_bytes), dtype=np.uint8)
        rows = np.array(rows, dtype=np.int64)
        n = resp.encode_commands(
            np.frombuffer(b"".join(values), dtype=np.uint8),
            np.concatenate(lens) if lens else np.zeros(0, dtype=np.int64),
            np.array(columns, dtype=np.int64), rows, self._frames, out,
        )
        if n < 0:
            raise AssertionError("entity key commands larger than their bound")  # a bug, never the store's
        return out[:n]

    def _block(self, buf, o2, l2, fs) -> "_Block":
        resp = self._resp
        k, n_num = o2.shape[0], fs.n_num
        values = np.empty((k, n_num))
        if n_num:
            slow = np.empty((k, n_num), dtype=np.bool_)
            if resp.decode_numbers(buf, o2[:, :n_num], l2[:, :n_num], values, slow):
                for i, j in zip(*np.nonzero(slow)):
                    values[i, j] = _slow_number(data_of(buf, o2[i, j], l2[i, j]))
        present = l2[:, :n_num] >= 0 if fs.presence else None
        n_str = fs.n - n_num
        text = np.empty((k, n_str), dtype=object)
        if n_str and k:
            start = np.empty((k, n_str), dtype=np.int64)
            stop = np.empty((k, n_str), dtype=np.int64)
            resp.string_spans(buf, o2[:, n_num:], l2[:, n_num:], start, stop)
            first = np.empty(k * n_str, dtype=np.int64)
            start, stop = start.ravel(), stop.ravel()
            resp.group_spans(buf, start, stop, first)
            # each distinct text is decoded once; slot -1 (the last) holds None
            distinct = np.empty(k * n_str + 1, dtype=object)
            reps = np.flatnonzero(first == np.arange(k * n_str))
            distinct[reps] = self._texts(buf, start[reps], stop[reps])
            for i in np.flatnonzero(first == -2).tolist():  # not a plain string message
                r, c = divmod(i, n_str)
                distinct[i] = _slow_string(data_of(buf, o2[r, n_num + c], l2[r, n_num + c]))
                first[i] = i
            text[:] = distinct[first].reshape(k, n_str)
        return _Block(values, present, text)

    def _texts(self, buf, start: np.ndarray, stop: np.ndarray) -> list:
        """The UTF-8 texts at the given spans of the buffer: gathered NUL-separated by a kernel,
        decoded and split in one call each (one by one if a text holds a NUL)."""
        if not len(start):
            return []
        out = np.empty(int((stop - start).sum()) + len(start), dtype=np.uint8)
        n = self._resp.gather_spans(buf, start, stop, out)
        if n >= 0:
            return out[:n].tobytes().decode().split("\x00")
        return [bytes(buf[a:b]).decode() for a, b in zip(start.tolist(), stop.tolist())]

    def _receive_buffer(self, size: int) -> np.ndarray:
        buf = getattr(self._local, "buf", None)
        if buf is None or buf.size < size:
            buf = self._local.buf = np.empty(max(size, self.RECEIVE_BUFFER), dtype=np.uint8)
        return buf

    @staticmethod
    def _until(sock, deadline: float | None) -> None:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("deadline passed")
            sock.settimeout(left)

    def _receive(self, sock, pending: "_Pending", off: np.ndarray, ln: np.ndarray):
        resp = self._resp
        until, deadline = self._until, pending.deadline
        widths, table_of = pending.widths, pending.table_of
        buf = self._receive_buffer(0)
        view = memoryview(buf)
        state = np.zeros(3, dtype=np.int64)
        end = 0
        while True:
            if end == buf.size:  # a large round: grow this thread's buffer, keep what arrived
                grown = self._receive_buffer(2 * buf.size)
                grown[:end] = buf[:end]
                buf, view = grown, memoryview(grown)
            until(sock, deadline)
            n = sock.recv_into(view[end:])
            if not n:
                raise self._redis.ConnectionError("connection closed by server")
            end += n
            status = resp.parse_replies(buf, end, widths, table_of, self.map_names, self.map_columns, off, ln, state)
            if status == resp.DONE:
                if state[0] != end:
                    raise self._redis.ResponseError("more replies than commands sent")
                return buf
            if status == resp.ERROR_REPLY:
                line = bytes(buf[state[0] : end]).split(b"\r\n", 1)[0]
                raise self._redis.ResponseError(line[1:].decode(errors="replace"))
            if status != resp.NEED_MORE:
                raise self._redis.ResponseError(f"unexpected reply to HMGET (status {status})")

    def ping(self) -> bool:
        try:
            conn = self._pool.get_connection()
            try:
                conn.send_command("PING", check_health=False)
                return conn.read_response() in (b"PONG", "PONG", True)
            except BaseException:
                conn.disconnect()
                raise
            finally:
                self._pool.release(conn)
        except self.errors:
            return False

    def close(self) -> None:
        self._idle.clear()
        self._pool.disconnect()


class _SqliteBackend:
    MAX_KEYS = 10_000  # per statement (SQLite allows 32,766 parameters)

    def __init__(self, path: Path, timeout_s: float, probe_table: str) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self.errors = (sqlite3.Error,)
        self.name = f"sqlite online store {path}"
        self._probe = probe_table
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list = []

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():  # never use a connection across fork()
            if not self.path.exists():
                raise sqlite3.OperationalError(f"{self.path} does not exist: run `ranker features materialize`")
            conn = sqlite3.connect(
                f"{self.path.as_uri()}?mode=ro", uri=True, timeout=self.timeout_s, check_same_thread=False,
                cached_statements=512,
            )
            self._local.conn = conn
            self._local.pid = os.getpid()
            with self._lock:
                self._conns.append(conn)
        return conn

    def send(self, reads: list, deadline: float | None = None) -> "_Pending":
        """SQLite answers in the caller's thread: the round is read when it is received."""
        return _Pending(reads, [], deadline)

    def receive(self, pending: "_Pending") -> list:
        return self.read(pending.reads, pending.deadline)

    def abandon(self, pending: "_Pending") -> None:
        pass

    def read(self, reads: list, deadline: float | None = None) -> list:
        """Like :meth:`_RedisBackend.read`; statements still running at ``deadline`` are interrupted."""
        conn = self._conn()
        if deadline is None:
            return self._read(conn, reads)
        conn.set_progress_handler(lambda: time.monotonic() >= deadline, 2000)  # non-zero: interrupt
        try:
            if time.monotonic() >= deadline:
                raise sqlite3.OperationalError("deadline passed")
            return self._read(conn, reads)
        finally:
            conn.set_progress_handler(None, 0)

    def _read(self, conn, reads: list) -> list:
        out = []
        for entity_keys, fs in reads:
            keys = entity_keys.serialized()
            cells = np.full(len(keys) * fs.n, None, dtype=object)
            for lo in range(0, len(keys), self.MAX_KEYS):
                chunk = keys[lo : lo + self.MAX_KEYS]
                for sql in fs.sqlite_queries(len(chunk)):
                    rows = conn.execute(sql, chunk).fetchall()
                    if rows:
                        pos, values = zip(*rows)
                        cells[np.fromiter(pos, dtype=np.intp, count=len(pos)) + lo * fs.n] = values
            grid = cells.reshape(len(keys), fs.n)
            nums = grid[:, : fs.n_num]
            text = np.empty((len(keys), fs.n - fs.n_num), dtype=object)
            if text.size:
                text[:] = np.array(decode_strings(grid[:, fs.n_num :].ravel().tolist()), dtype=object).reshape(text.shape)
            out.append(_Block(
                values=decode_numbers(nums.ravel().tolist()).reshape(nums.shape),
                present=(nums != None),  # noqa: E711 - element-wise on an object array
                text=text,
            ))
        return out

    def ping(self) -> bool:
        try:
            self._conn().execute(f'SELECT 1 FROM "{self._probe}" LIMIT 1').fetchall()
            return True
        except self.errors:
            return False

    def close(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:
                pass
        self._local = threading.local()


# --- The item cache ------------------------------------------------------------------------------

class _ItemCache:
    """Item-level records by item id, each valid for ``ttl_s`` seconds after it was read; at most
    ``size`` items, the least recently used evicted first.

    The records sit in rows of two tables (numbers, texts) with a dict from item id to row, so a
    request's hits cost one dict lookup per item (at C speed) and one gather per table, not a
    Python object per item. Recency is a tick per row; when no row is free, the least recently used
    eighth of the rows (at least what the insert needs) is evicted in one pass. An expired record
    stays until its item is stored again (in the same row) or evicted."""

    FIRST_ROWS = 4096  # rows allocated at first; doubled as needed up to ``size``
    _UNUSED = np.iinfo(np.int64).max  # the recency of a free row: never an eviction victim

    def __init__(self, ttl_s: float, size: int, widths: tuple[int, int]) -> None:
        self.ttl_s = ttl_s
        self.size = size
        self._widths = widths
        self._lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        n_num, n_str = self._widths
        with self._lock:
            self._row: dict = {}  # item id -> row
            self._ids: list = []  # row -> item id (None: free)
            self._free: list = []  # free rows
            self._num = np.empty((0, n_num))
            self._text = np.empty((0, n_str), dtype=object)
            self._expires = np.empty(0)
            self._used = np.empty(0, dtype=np.int64)
            self._tick = 0

    def __len__(self) -> int:
        return len(self._row)

    def get(self, keys: list, now: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(positions in ``keys`` of the live records, their numbers, their texts); the rows are
        copied out, so a later insert may reuse them."""
        with self._lock:
            rows = np.fromiter(map(self._row.get, keys, repeat(-1)), dtype=np.intp, count=len(keys))
            hit = np.flatnonzero(rows >= 0)
            rows = rows[hit]
            live = self._expires[rows] > now
            if not live.all():
                hit, rows = hit[live], rows[live]
            self._tick += 1
            self._used[rows] = self._tick
            return hit, self._num[rows], self._text[rows]

    def put(self, keys: list, num: np.ndarray, text: np.ndarray, now: float) -> None:
        """Store the records of ``keys`` (distinct item ids), valid until ``now + ttl_s``."""
        if len(keys) > self.size:  # more than fit: the last ones, as an LRU would keep
            keys, num, text = keys[-self.size :], num[-self.size :], text[-self.size :]
        with self._lock:
            self._tick += 1
            rows = np.fromiter(map(self._row.get, keys, repeat(-1)), dtype=np.intp, count=len(keys))
            self._used[rows[rows >= 0]] = self._tick  # stored again: never this insert's victims
            new = np.flatnonzero(rows < 0)
            if len(new):
                rows[new] = self._allocate(len(new))
                for i, r in zip(new.tolist(), rows[new].tolist()):
                    self._row[keys[i]] = r
                    self._ids[r] = keys[i]
            self._num[rows] = num
            self._text[rows] = text
            self._expires[rows] = now + self.ttl_s
            self._used[rows] = self._tick

    def _allocate(self, k: int) -> list:
        """``k`` free rows (k <= size): the tables grown while below ``size``, else rows of the
        least recently used items, evicted."""
        n = len(self._ids)
        if len(self._free) < k and n < self.size:
            self._grow(min(self.size, max(2 * n, self.FIRST_ROWS, n + k - len(self._free))))
        if len(self._free) < k:
            # not the rows this insert stores again (their tick is the current one)
            m = min(max(k - len(self._free), len(self._ids) // 8), int((self._used < self._tick).sum()))
            victims = np.argpartition(self._used, m - 1)[:m].tolist()
            for r in victims:
                del self._row[self._ids[r]]
                self._ids[r] = None
            self._used[victims] = self._UNUSED
            self._free.extend(victims)
        rows = self._free[-k:]
        del self._free[-k:]
        return rows

    def _grow(self, rows: int) -> None:
        n = len(self._ids)
        extra = rows - n
        self._num = np.concatenate([self._num, np.empty((extra, self._num.shape[1]))])
        self._text = np.concatenate([self._text, np.empty((extra, self._text.shape[1]), dtype=object)])
        self._expires = np.concatenate([self._expires, np.full(extra, -np.inf)])
        self._used = np.concatenate([self._used, np.full(extra, self._UNUSED, dtype=np.int64)])
        self._ids.extend([None] * extra)
        self._free.extend(range(rows - 1, n - 1, -1))  # popped from the end: lowest rows first


# --- The public class ----------------------------------------------------------------------------

class OnlineFeatures:
    """The feature rows of one request, read from Feast's online store without the Feast SDK.

    Args:
        settings: selects the repository (Feast registry) and the online store (sqlite or Redis).
        service: the feature service (model contract), e.g. ``search_ranker_v1``.
        timeout_s: socket connect/read timeout for Redis, lock wait for sqlite; a store that does not
            answer in time raises :class:`OnlineStoreUnavailable` (per socket operation: a request
            makes at most two round trips).
        item_cache_ttl_s: 0 (default) = no cache. Otherwise the item-level values (``listing_fv``,
            ``item_stats_fv``, the listing's seller and category features and the seller/category
            keys) are kept in process per item id for this many seconds. **Staleness bound**: a
            served item-level value is at most ``item_cache_ttl_s`` seconds older than the online
            store's (so at most ttl + the materialization lag older than the source). The sold flag
            is never cached: it is read from the store on every request (the listing's hash, one
            field), so a sold listing is reported sold as soon as the store says so, and the
            listing's existence (``known``) is read with it. User, user x category and query x
            category values are never cached. Only listings the store knows are cached.
        item_cache_size: most items kept; when full, the least recently used are evicted (an eighth of
            the cache at a time, see :class:`_ItemCache`).

    Thread-safe: one instance serves all threads of a process (one Redis connection pool, one
    sqlite connection per thread).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        service: str,
        timeout_s: float = 0.05,
        item_cache_ttl_s: float = 0.0,
        item_cache_size: int = 100_000,
    ) -> None:
        if timeout_s <= 0:
            raise RankerError("timeout_s must be > 0")
        if item_cache_ttl_s < 0 or item_cache_size < 0:
            raise RankerError("item_cache_ttl_s and item_cache_size must be >= 0")
        self.settings = settings
        self.service = service
        self.timeout_s = timeout_s
        store = feature_store(settings)
        self.spec = service_spec(store, service)
        self.feature_names: tuple[str, ...] = tuple(self.spec.features)
        self._plan = _Plan(store, self.spec)
        self._project = self._plan.project.encode()
        if settings.online_store == "redis":
            self._backend = _RedisBackend(settings.redis_url, timeout_s, self._plan.map_names, self._plan.map_columns,
                                          key_suffix=self._project)
        else:
            from feast.infra.online_stores.helpers import compute_table_id
            from feast.infra.online_stores.sqlite import SqliteOnlineStore

            config = repo_config(settings)
            path = Path(SqliteOnlineStore._get_db_path(config))
            probe = compute_table_id(self._plan.project, store.get_feature_view(LISTING_VIEW))
            self._backend = _SqliteBackend(path, timeout_s, probe)  # its keys: the serialized entity key alone
        self._cache = _ItemCache(item_cache_ttl_s, item_cache_size, self._plan.cache_width) if item_cache_ttl_s > 0 and item_cache_size > 0 else None
        self._clock = time.monotonic  # the item cache's clock
        self.cache_hits = 0
        self.cache_misses = 0
        self._count_lock = threading.Lock()

    # -- public API --------------------------------------------------------------------------------
    def fetch(self, *, user_id: str, item_ids: Sequence[str], query: str | None, request_ts: int,
              deadline: float | None = None) -> FeatureRows:
        """Feature rows for ``item_ids`` (any order, repeats allowed) as the service defines them.

        ``deadline`` (a ``time.monotonic()`` instant): every wait on the store ends by then (Redis:
        the socket timeouts of the request's round trips; sqlite: the statement is interrupted),
        raising :class:`FetchDeadlineExceeded`; None: ``timeout_s`` per store operation. Opening a
        Redis connection (after one was lost) is bounded by ``timeout_s``.
        Raises OnlineStoreUnavailable when the store is down, times out or is unreadable."""
        try:
            return self._fetch(str(user_id), list(map(str, item_ids)), query or "", int(request_ts), deadline)
        except self._backend.errors as exc:
            if deadline is not None and time.monotonic() >= deadline:
                raise FetchDeadlineExceeded(
                    f"{self._backend.name} did not answer within the deadline: {exc or type(exc).__name__}"
                ) from exc
            raise OnlineStoreUnavailable(f"{self._backend.name} is unavailable: {exc}") from exc
        except (DecodeError, UnicodeDecodeError) as exc:
            raise OnlineStoreUnavailable(f"{self._backend.name} returned an unreadable value: {exc}") from exc

    def ping(self) -> bool:
        """True when the store answers (for readiness probes); never raises."""
        return self._backend.ping()

    def close(self) -> None:
        self._backend.close()
        if self._cache is not None:
            self._cache.clear()

    def __enter__(self) -> "OnlineFeatures":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the hot path --------------------------------------------------------------------------------
    def _keys(self, group: _Group, columns: dict, rows, shared: dict) -> tuple["_EntityKeys", np.ndarray]:
        """The distinct entity keys of ``group`` for the given unique-item rows (their join-key
        values, serialized by the backend when it writes the read), and each row's entity.

        ``shared`` is the request's scratch: the distinct values of the varying keys, computed once
        per rows object for the groups that vary by the same keys (category, user x category,
        query x category)."""
        join_keys, varying = group.join_keys, group.varying
        if not varying:
            return _EntityKeys(join_keys, tuple(columns[k] for k in join_keys), 1), np.zeros(len(rows), np.intp)
        if varying == ("item_id",):  # the rows are unique items already
            col = columns["item_id"]
            idx = np.arange(len(rows), dtype=np.intp)
            distinct = col if isinstance(rows, range) and len(rows) == len(col) else [col[i] for i in rows]
            values = {"item_id": distinct}
        else:
            memo_key = (varying, id(rows))
            made = shared.get(memo_key)
            if made is None or made[0] is not rows:
                if len(varying) == 1:
                    col = columns[varying[0]]
                    keyed = col if isinstance(rows, range) and len(rows) == len(col) else [col[i] for i in rows]
                else:
                    keyed = [tuple(columns[k][i] for k in varying) for i in rows]
                distinct = list(dict.fromkeys(keyed))
                position = {v: i for i, v in enumerate(distinct)}
                idx = np.fromiter(map(position.__getitem__, keyed), dtype=np.intp, count=len(keyed))
                made = shared[memo_key] = (rows, distinct, idx)  # rows kept: its id stays its own
            _rows, distinct, idx = made
            if len(varying) == 1:
                values = {varying[0]: distinct}
            else:
                values = {k: [v[c] for v in distinct] for c, k in enumerate(varying)}
        # the request's own keys (user, query) are one value shared by every entity of the read
        keyed_columns = tuple(values[k] if k in values else columns[k] for k in join_keys)
        return _EntityKeys(join_keys, keyed_columns, len(distinct)), idx

    def _fetch(self, user_id: str, items: list, query: str, request_ts: int, deadline: float | None) -> FeatureRows:
        plan = self._plan
        n = len(items)
        if n == 0:
            empty = np.zeros(0, dtype=bool)
            return FeatureRows(np.zeros((0, plan.n_features), np.float32), empty, empty.copy(), self.feature_names)
        uniq = list(dict.fromkeys(items))
        inv = None
        if len(uniq) != n:
            pos = {item: i for i, item in enumerate(uniq)}
            inv = np.fromiter((pos[item] for item in items), dtype=np.intp, count=n)
        u = len(uniq)
        groups = plan.groups
        item_g = groups[plan.item_group]

        # Cache lookup (item-level values only; sold is always read live).
        cache = self._cache
        now = self._clock()
        if cache is not None:
            hit_rows, cnum, cstr = cache.get(uniq, now)
            hits = hit_rows.tolist()
            if len(hits) == u:
                misses = []
            else:
                missed = np.ones(u, dtype=bool)
                missed[hit_rows] = False
                misses = np.flatnonzero(missed).tolist()
            with self._count_lock:
                self.cache_hits += len(hits)
                self.cache_misses += len(misses)
        else:
            hits, misses = [], []
        all_rows = range(u)
        if not hits:
            misses = all_rows  # one object for "every row": _keys shares its work between groups by it

        columns: dict = {"item_id": uniq, "user_id": user_id, "query": query}
        shared: dict = {}  # _keys' work this request, shared between groups
        num: list = [None] * len(groups)  # per group: (u, n_num) float64 at unique-item level
        strs: list = [None] * len(groups)  # per group: (u, n_str) object
        known = np.zeros(u, dtype=bool)
        sold_val = np.full(u, np.nan)

        # Cached item-level blocks for the hits.
        if hits:
            for g, group in enumerate(groups):
                if group.cacheable:
                    num[g] = np.empty((u, group.n_num))
                    strs[g] = np.empty((u, len(group.fields) - group.n_num), dtype=object)
                    num[g][hit_rows] = cnum[:, group.cache_num]
                    strs[g][hit_rows] = cstr[:, group.cache_str]
            istr = strs[plan.item_group]
            for k, c in plan.key_loc.items():
                col = np.full(u, "", dtype=object)  # the misses' values are filled after round 1
                col[hit_rows] = istr[hit_rows, c]
                col[col == None] = ""  # noqa: E711 - element-wise on an object array; a missing key is ""
                columns[k] = col.tolist()

        # Round 1: the listings not cached, the request-keyed views (user), the live sold flag of the
        # cached listings, and, when every listing is cached, the pair views too.
        reads, todo = [], []
        if misses:
            keys, _ = self._keys(item_g, columns, misses, shared)
            reads.append((keys, item_g.fieldset))
            todo.append(("items", plan.item_group, None))
        if hits:
            keys, _ = self._keys(item_g, columns, hits, shared)
            reads.append((keys, plan.sold_fieldset))
            todo.append(("sold", plan.item_group, None))
        for g, group in enumerate(groups):
            if group.cacheable or (group.derived and misses):
                continue
            keys, idx = self._keys(group, columns, all_rows, shared)
            reads.append((keys, group.fieldset))
            todo.append(("group", g, idx))
        self._absorb(self._backend.read(reads, deadline), todo, num, strs, u, misses, hits, known, sold_val)
        assembly = _Assembly(plan, u, query, request_ts)

        if misses:
            istr = strs[plan.item_group]
            for k, c in plan.key_loc.items():
                if not hits:
                    columns[k] = [v or "" for v in istr[:, c].tolist()]
                    continue
                col = columns[k]
                for i, v in zip(misses, istr[misses, c].tolist()):
                    col[i] = v or ""
            # Round 2: seller and category views of the listings read in round 1, and the pair views.
            reads, todo = [], []
            for g, group in enumerate(groups):
                if not group.derived:
                    continue
                if group.cacheable:
                    keys, idx = self._keys(group, columns, misses, shared)
                    todo.append(("misses", g, idx))
                else:
                    keys, idx = self._keys(group, columns, all_rows, shared)
                    todo.append(("group", g, idx))
                reads.append((keys, group.fieldset))
            # While Redis answers round 2, place what round 1 brought (its groups' columns and the
            # on-demand views they feed): that work is off the request's critical path.
            backend = self._backend
            pending = backend.send(reads, deadline)
            try:
                assembly.add(num, strs, plan.round1_groups)
                blocks = backend.receive(pending)
            except BaseException:
                backend.abandon(pending)
                raise
            self._absorb(blocks, todo, num, strs, u, misses, hits, known, sold_val)
            if cache is not None:
                stored = [i for i in misses if known[i]]
                if stored:
                    cache.put(
                        [uniq[i] for i in stored],
                        np.concatenate([num[g][stored] for g, grp in enumerate(groups) if grp.cacheable], axis=1),
                        np.concatenate([strs[g][stored] for g, grp in enumerate(groups) if grp.cacheable], axis=1),
                        now,
                    )

        assembly.add(num, strs, range(len(groups)))
        matrix = assembly.matrix()
        sold = sold_val == 1
        if inv is not None:
            matrix, known, sold = matrix[inv], known[inv], sold[inv]
        return FeatureRows(matrix=matrix, known=known, sold=sold, feature_names=self.feature_names)

    def _absorb(self, blocks, todo, num, strs, u, misses, hits, known, sold_val) -> None:
        """Place one round's decoded blocks at unique-item level."""
        plan = self._plan
        every = isinstance(misses, range)  # every listing was read (no cache hits): no scatter needed
        for block, (kind, g, idx) in zip(blocks, todo):
            values, present, text = block
            if kind == "sold":  # one field per cached listing: existence and sold flag, never cached
                known[hits] = present[:, 0]
                sold_val[hits] = values[:, 0]
                continue
            if every and kind in ("items", "misses"):
                if kind == "items":
                    known[:] = present[:, plan.sold_loc]
                    sold_val[:] = values[:, plan.sold_loc]
                    num[g], strs[g] = values, text
                else:
                    num[g], strs[g] = values[idx], text[idx]
                continue
            if kind in ("items", "misses") and num[g] is None:
                group = plan.groups[g]
                num[g] = np.empty((u, group.n_num))
                strs[g] = np.empty((u, group.fieldset.n - group.n_num), dtype=object)
            if kind == "items":
                num[g][misses] = values
                strs[g][misses] = text
                known[misses] = present[:, plan.sold_loc]  # a null value exists; a missing hash does not
                sold_val[misses] = values[:, plan.sold_loc]
            elif kind == "misses":
                num[g][misses] = values[idx]
                strs[g][misses] = text[idx]
            else:
                num[g] = values[idx]
                strs[g] = text[idx]


def _coerced(values) -> np.ndarray:
    """float64 of a column, as :func:`ranker.training.dataset.feature_matrix` coerces Feast's output."""
    return pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(np.float64, na_value=np.nan)


class _Assembly:
    """One request's matrix (unique-item rows, float64), filled group by group as the rounds bring
    them: a group's columns once its values are in, an on-demand view once every group it reads is
    (round 1's while Redis answers round 2), then defaults and the float32 cast, exactly as
    :func:`ranker.training.dataset.feature_matrix` applies them to Feast's output."""

    def __init__(self, plan: "_Plan", u: int, query: str, request_ts: int) -> None:
        self.plan = plan
        self.m = np.empty((u, plan.n_features), dtype=np.float64)
        self.placed: set = set()  # groups whose columns are in
        self.done: set = set()  # on-demand views computed (indices into plan.odfvs)
        self.inputs: dict = {}  # on-demand inputs available so far, as the transforms take them
        if "request_ts" in plan.request_fields:
            self.inputs["request_ts"] = np.full(u, float(request_ts))  # float64, as _num makes of int64
        if "query_text" in plan.request_fields:
            self.inputs["query_text"] = [query] * u

    def add(self, num: list, strs: list, ready) -> None:
        """Place the groups of ``ready`` (indices of groups whose rows are all in ``num``/``strs``)
        not placed yet, and run the on-demand views they complete."""
        plan, m = self.plan, self.m
        new = set(ready) - self.placed
        if not new:
            return
        self.placed |= new
        for g, js, ks in plan.columns:
            if g in new:
                m[:, js] = num[g][:, ks]
        for j, g, k in plan.string_columns:
            if g in new:
                m[:, j] = _coerced(strs[g][:, k])
        inputs = self.inputs
        for name, (g, kind, k) in plan.odfv_inputs:
            if g in new:
                inputs[name] = num[g][:, k] if kind == "num" else strs[g][:, k].tolist()
        frame = None
        for i, ((fn, outputs, _name), needs) in enumerate(zip(plan.odfvs, plan.odfv_groups)):
            if i in self.done or not needs <= self.placed:
                continue
            self.done.add(i)
            if fn.__module__ == transforms.__name__:  # ours take a dict of arrays and lists: no pandas
                out = fn(dict(inputs))
            else:  # a user-defined on-demand view: the DataFrame Feast would pass
                if frame is None:
                    frame = pd.DataFrame({k: (np.array(v, dtype=object) if isinstance(v, list) else v)
                                          for k, v in inputs.items()}, copy=False)
                out = fn(frame)
            for j, name in outputs:
                col = np.asarray(out[name])
                m[:, j] = col if col.dtype.kind == "f" else _coerced(col)  # floats: what the coercion returns

    def matrix(self) -> np.ndarray:
        plan, m = self.plan, self.m
        if plan.has_default.any():
            m = np.where(np.isnan(m) & plan.has_default, plan.defaults, m)
        return m.astype(np.float32)


# --- The Feast SDK anchor -------------------------------------------------------------------------

def feast_reference(store, spec, *, user_id: str, item_ids: Sequence[str], query: str | None, request_ts: int) -> FeatureRows:
    """The same rows through the Feast SDK: ``listing_fv`` lookups for seller and category, then
    ``get_online_features(features=<the service>)`` on the entity rows and ``feature_matrix``.
    The anchor of the exactness tests and the benchmark (slow: ~25 ms for 200 items)."""
    items = [str(i) for i in item_ids]
    n = len(items)
    names = tuple(spec.features)
    if n == 0:
        empty = np.zeros(0, dtype=bool)
        return FeatureRows(np.zeros((0, len(names)), np.float32), empty, empty.copy(), names)
    q = query or ""
    lookup = store.get_online_features(
        features=[f"{LISTING_VIEW}:{k}" for k in (*LISTING_KEYS, SOLD_FIELD)], entity_rows={"item_id": items}
    ).to_dict()
    is_sold = lookup[SOLD_FIELD]
    rows: dict = {"item_id": items}
    for key in spec.entity_keys:
        if key in LISTING_KEYS:
            rows[key] = [v if isinstance(v, str) else "" for v in lookup[key]]
        elif key == "user_id":
            rows[key] = [str(user_id)] * n
        elif key == "query":
            rows[key] = [q] * n
    if "request_ts" in spec.request_fields:
        rows["request_ts"] = [int(request_ts)] * n
    if "query_text" in spec.request_fields:
        rows["query_text"] = [q] * n
    frame = store.get_online_features(features=store.get_feature_service(spec.name), entity_rows=rows).to_df()
    return FeatureRows(
        matrix=feature_matrix(frame, spec),
        known=np.array([v is not None for v in is_sold], dtype=bool),
        sold=np.array([v == 1 for v in is_sold], dtype=bool),
        feature_names=names,
    )

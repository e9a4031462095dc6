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
:func:`ranker.features.matrix.feature_matrix` does on Feast's output. On-demand features are
computed by the very functions Feast stored for the on-demand views (:mod:`ranker.serving.on_demand`),
on the same inputs (numbers as float64 with NaN, strings as objects with None), so
the matrix is bit-identical to ``feature_matrix(get_online_features(...).to_df(), spec)``
(``tests/test_online_features.py`` checks it on random requests against both stores).

Entity rows are those of :func:`ranker.features.reference.feast_reference`: ``user_id``,
``item_id``, ``seller_id`` and ``category`` of the listing (read from ``listing_fv``; empty strings
for a listing the store does not know, so its seller, category and affinity features are missing
and take their defaults) and, for a search service, ``query`` (= the search text, "" when absent).
Feast 0.67's online read returns stored values regardless of the view's TTL; so does this path.

The package, one concern per module: :mod:`~ranker.serving.plan` (the service's fields, groups
and columns, built once), :mod:`~ranker.serving.reads` (a request's reads and where each lands),
:mod:`~ranker.serving.redis_reader` and :mod:`~ranker.serving.sqlite_reader` (the stores),
:mod:`~ranker.serving.values` (Value decoding), :mod:`~ranker.serving.cache` (the item cache),
:mod:`~ranker.serving.assembly` and :mod:`~ranker.serving.on_demand` (the matrix), and this module
(the request: two rounds of reads, then the matrix).
"""

from __future__ import annotations

import threading
import time
from typing import Sequence

import numpy as np
from google.protobuf.message import DecodeError

from ranker.config import Settings
from ranker.errors import RankerError
from ranker.features import feast_compat
from ranker.features.matrix import FeatureRows
from ranker.features.store import feature_store, repo_config, service_spec
from ranker.serving.assembly import Assembly
from ranker.serving.cache import ItemCache
from ranker.serving.plan import Plan
from ranker.serving.reads import (
    FetchDeadlineExceeded,
    Gathered,
    ListingRead,
    MissedItemsRead,
    OnlineStoreUnavailable,
    Read,
    RequestRead,
    RowSelection,
    SoldFlagRead,
    entity_keys,
    place_all,
    store_reads,
)
from ranker.serving.cluster_reader import ClusterReader
from ranker.serving.redis_reader import RedisReader
from ranker.serving.sqlite_reader import SqliteReader

__all__ = ["FeatureRows", "FetchDeadlineExceeded", "OnlineFeatures", "OnlineStoreUnavailable"]


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
            the cache at a time, see :class:`~ranker.serving.cache.ItemCache`).

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
        self._plan = Plan(store, self.spec)
        self._project = self._plan.project.encode()
        self._backend: RedisReader | ClusterReader | SqliteReader
        if settings.online_store == "redis" and settings.redis_cluster:
            self._backend = ClusterReader(
                settings.redis_seeds, timeout_s, self._plan.map_names, self._plan.map_columns, key_suffix=self._project
            )
        elif settings.online_store == "redis":
            self._backend = RedisReader(
                settings.redis_url, timeout_s, self._plan.map_names, self._plan.map_columns, key_suffix=self._project
            )
        else:  # its keys: the serialized entity key alone
            path = feast_compat.sqlite_path(repo_config(settings))
            self._backend = SqliteReader(path, timeout_s, self._plan.listing_table)
        self._cache = (
            ItemCache(item_cache_ttl_s, item_cache_size, self._plan.cache_width)
            if item_cache_ttl_s > 0 and item_cache_size > 0
            else None
        )
        self._clock = time.monotonic  # the item cache's clock
        self.cache_hits = 0
        self.cache_misses = 0
        self._count_lock = threading.Lock()

    # -- public API --------------------------------------------------------------------------------
    def fetch(
        self,
        *,
        user_id: str,
        item_ids: Sequence[str],
        query: str | None,
        request_ts: int,
        deadline: float | None = None,
    ) -> FeatureRows:
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
        """Close the store's connections and empty the item cache."""
        self._backend.close()
        if self._cache is not None:
            self._cache.clear()

    def __enter__(self) -> OnlineFeatures:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the hot path --------------------------------------------------------------------------------
    def _fetch(self, user_id: str, items: list, query: str, request_ts: int, deadline: float | None) -> FeatureRows:
        """The request in two rounds: round 1 the listings not cached, the request-keyed views
        (user), the live sold flag of the cached listings and, when every listing is cached, the
        pair views too; round 2 the seller, category and pair views keyed by what round 1 read."""
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
        now = self._clock()
        columns: dict = {"item_id": uniq, "user_id": user_id, "query": query}
        every = RowSelection(range(u), every=True)
        cached = self._cache_lookup(uniq, now)
        if cached is None:
            got = Gathered(plan.groups, u, every, [])
        else:
            hit_rows, missed, cnum, cstr = cached
            got = Gathered(plan.groups, u, RowSelection(missed, every=False), hit_rows.tolist())
            self._place_cached(got, columns, hit_rows, cnum, cstr)

        backend = self._backend
        first = self._round1(got, columns, every)
        place_all(first, backend.read(store_reads(first), deadline), got)
        assembly = Assembly(plan, u, query, request_ts)
        if len(got.misses):
            self._listing_keys(got, columns)
            second = self._round2(got, columns, every)
            # While Redis answers round 2, place what round 1 brought (its groups' columns and the
            # on-demand views they feed): that work is off the request's critical path.
            pending = backend.send(store_reads(second), deadline)
            try:
                assembly.add(got.num, got.strs, plan.round1_groups)
                blocks = backend.receive(pending)
            except BaseException:
                backend.abandon(pending)
                raise
            place_all(second, blocks, got)
            self._cache_store(got, uniq, now)

        assembly.add(got.num, got.strs, range(len(plan.groups)))
        matrix, known, sold = assembly.matrix(), got.known, got.sold_flag == 1
        if inv is not None:
            matrix, known, sold = matrix[inv], known[inv], sold[inv]
        return FeatureRows(matrix=matrix, known=known, sold=sold, feature_names=self.feature_names)

    def _cache_lookup(self, uniq: list, now: float) -> tuple[np.ndarray, list, np.ndarray, np.ndarray] | None:
        """The cached listings (rows, the rows missed, their numbers and texts); None without a
        cache or when nothing is cached (every listing is then read)."""
        cache = self._cache
        if cache is None:
            return None
        hit_rows, cnum, cstr = cache.get(uniq, now)
        u = len(uniq)
        if len(hit_rows) == u:
            missed: list = []
        else:
            unread = np.ones(u, dtype=bool)
            unread[hit_rows] = False
            missed = np.flatnonzero(unread).tolist()
        with self._count_lock:
            self.cache_hits += len(hit_rows)
            self.cache_misses += len(missed)
        if not len(hit_rows):
            return None
        return hit_rows, missed, cnum, cstr

    def _place_cached(
        self, got: Gathered, columns: dict, hit_rows: np.ndarray, cnum: np.ndarray, cstr: np.ndarray
    ) -> None:
        """The cached item-level values at their rows, and the cached listings' seller and category."""
        plan = self._plan
        for g, group in enumerate(plan.groups):
            if group.cacheable:
                got.allocate(g)
                got.num[g][hit_rows] = cnum[:, group.cache_num]
                got.strs[g][hit_rows] = cstr[:, group.cache_str]
        listing = got.strs[plan.item_group]
        for k, c in plan.key_loc.items():
            col = np.full(got.u, "", dtype=object)  # the misses' values are filled after round 1
            col[hit_rows] = listing[hit_rows, c]
            col[col == None] = ""  # noqa: E711 - element-wise on an object array; a missing key is ""
            columns[k] = col.tolist()

    def _round1(self, got: Gathered, columns: dict, every: RowSelection) -> list[Read]:
        plan = self._plan
        listing = plan.groups[plan.item_group]
        reads: list[Read] = []
        if len(got.misses):
            keys, _ = entity_keys(listing, columns, got.misses)
            reads.append(ListingRead(keys, listing.fieldset, plan.item_group, plan.sold_loc))
        if got.hits:
            keys, _ = entity_keys(listing, columns, RowSelection(got.hits, every=False))
            reads.append(SoldFlagRead(keys, plan.sold_fieldset))
        for g, group in enumerate(plan.groups):
            if group.cacheable or (group.derived and len(got.misses)):
                continue
            keys, idx = entity_keys(group, columns, every)
            reads.append(RequestRead(keys, group.fieldset, g, idx))
        return reads

    def _listing_keys(self, got: Gathered, columns: dict) -> None:
        """The seller and category of the listings round 1 read ("" when unknown)."""
        plan = self._plan
        listing = got.strs[plan.item_group]
        for k, c in plan.key_loc.items():
            if not got.hits:
                columns[k] = [v or "" for v in listing[:, c].tolist()]
                continue
            col = columns[k]
            rows = got.misses.rows
            for i, v in zip(rows, listing[rows, c].tolist(), strict=True):
                col[i] = v or ""

    def _round2(self, got: Gathered, columns: dict, every: RowSelection) -> list[Read]:
        reads: list[Read] = []
        for g, group in enumerate(self._plan.groups):
            if not group.derived:
                continue
            if group.cacheable:
                keys, idx = entity_keys(group, columns, got.misses)
                reads.append(MissedItemsRead(keys, group.fieldset, g, idx))
            else:
                keys, idx = entity_keys(group, columns, every)
                reads.append(RequestRead(keys, group.fieldset, g, idx))
        return reads

    def _cache_store(self, got: Gathered, uniq: list, now: float) -> None:
        """Cache the item-level values of the listings read from the store that exist there."""
        cache = self._cache
        if cache is None:
            return
        stored = [i for i in got.misses.rows if got.known[i]]
        if stored:
            groups = self._plan.groups
            cache.put(
                [uniq[i] for i in stored],
                np.concatenate([got.num[g][stored] for g, grp in enumerate(groups) if grp.cacheable], axis=1),
                np.concatenate([got.strs[g][stored] for g, grp in enumerate(groups) if grp.cacheable], axis=1),
                now,
            )

"""The serving feature path (ranker.serving.features) against Feast's own get_online_features.

The core property: for random requests (users with and without history, unknown users, live, sold
and unknown listings, repeats, search with and without a query, recs), OnlineFeatures.fetch gives
the same float32 matrix bit for bit as feast_reference (Feast SDK + feature_matrix), on the
embedded sqlite store and on Redis, and known/sold match the online store's listing rows.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

SERVICES = (
    "search_ranker_v1",
    "recs_ranker_v1",
    "search_ranker_v2",
    "recs_ranker_v2",
    "search_ranker_v3",
    "recs_ranker_v3",
    "search_ranker_v4",
    "recs_ranker_v4",
    "generic_ranker_v2",  # compound user x item / user x category x brand / user x seller keys (co-engagement)
)
REQUESTS_PER_SERVICE = 12  # per store and service: random requests compared with Feast (v2: the real-time views)


# --- helpers -----------------------------------------------------------------------------------------


def _assert_bit_identical(got: np.ndarray, want: np.ndarray, msg: str = "") -> None:
    assert got.dtype == np.float32 and want.dtype == np.float32, msg
    assert got.shape == want.shape, msg
    np.testing.assert_array_equal(got, want, err_msg=msg)  # NaN == NaN
    both = ~np.isnan(want)
    np.testing.assert_array_equal(got[both].view(np.uint32), want[both].view(np.uint32), err_msg=msg)  # 0.0 vs -0.0


class _Universe:
    """What the online store holds, read from the feature tables (latest row per entity)."""

    def __init__(self, settings, end: datetime) -> None:
        def latest(name: str, keys: list[str]) -> pd.DataFrame:
            df = pd.read_parquet(settings.features_dir / f"{name}.parquet")
            df = df[df.event_timestamp <= end]
            return df.sort_values("event_timestamp").groupby(keys, as_index=False).tail(1)

        listings = latest("listings", ["item_id"]).set_index("item_id")
        self.listing_sold = listings.is_sold.astype(int).to_dict()
        self.live = sorted(listings.index[listings.is_sold == 0])
        self.sold = sorted(listings.index[listings.is_sold == 1])
        users = latest("user_stats", ["user_id"])
        self.users_active = sorted(users.user_id[users.user_clicks_30d > 0])
        self.users_idle = sorted(users.user_id[users.user_clicks_30d == 0])
        self.queries = sorted(latest("query_category_stats", ["query", "category"])["query"].unique())
        assert self.live and self.sold and self.users_active and self.users_idle and self.queries

    def request(self, rng: np.random.Generator, service: str) -> dict:
        n = int(rng.choice([1, 3, 17, 60, 150]))
        items = list(rng.choice(self.live, size=n))  # with replacement: repeats happen
        items += list(rng.choice(self.sold, size=int(rng.integers(0, 4))))
        items += [f"i-unknown-{k}" for k in range(int(rng.integers(0, 3)))]
        items = [str(i) for i in rng.permutation(np.array(items, dtype=object))]
        kind = rng.random()
        user = (
            str(rng.choice(self.users_active))
            if kind < 0.6
            else str(rng.choice(self.users_idle))
            if kind < 0.85
            else "u-unknown"
        )
        if service.startswith("search"):
            r = rng.random()
            query = (
                str(rng.choice(self.queries))
                if r < 0.7
                else "velvet unicorn boots"
                if r < 0.85
                else rng.choice(["", None])
            )
        else:
            query = None
        now = int(datetime.now(timezone.utc).timestamp())
        return dict(user_id=user, item_ids=items, query=query, request_ts=now - int(rng.integers(0, 90 * 86400)))


def _compare_random_requests(settings, seed: int) -> int:
    from ranker.features.store import feature_store, service_spec
    from ranker.features.reference import feast_reference
    from ranker.serving.features import OnlineFeatures

    store = feature_store(settings)
    universe = _Universe(settings, datetime.now(timezone.utc))
    rng = np.random.default_rng(seed)
    compared = 0
    seen_sold = seen_unknown = 0
    for service in SERVICES:
        spec = service_spec(store, service)
        online = OnlineFeatures(settings, service=service, timeout_s=5.0)
        try:
            assert online.feature_names == spec.features
            for r in range(REQUESTS_PER_SERVICE):
                req = universe.request(rng, service)
                got = online.fetch(**req)
                want = feast_reference(store, spec, **req)
                msg = f"{service} request {r}: {req['user_id']}, {len(req['item_ids'])} items, query={req['query']!r}"
                _assert_bit_identical(got.matrix, want.matrix, msg)
                assert got.feature_names == want.feature_names == spec.features
                truth_known = np.array([i in universe.listing_sold for i in req["item_ids"]])
                truth_sold = np.array([universe.listing_sold.get(i) == 1 for i in req["item_ids"]])
                np.testing.assert_array_equal(got.known, truth_known, err_msg=msg)
                np.testing.assert_array_equal(got.sold, truth_sold, err_msg=msg)
                np.testing.assert_array_equal(want.known, truth_known, err_msg=msg)
                np.testing.assert_array_equal(want.sold, truth_sold, err_msg=msg)
                seen_sold += int(got.sold.sum())
                seen_unknown += int((~got.known).sum())
                compared += 1
        finally:
            online.close()
    assert seen_sold > 0 and seen_unknown > 0, "the random requests must include sold and unknown listings"
    return compared


@pytest.fixture(scope="module")
def sqlite_world(world):
    from ranker.features.materialize import materialize

    materialize(world, full=True)  # harmless if another test already did
    return world


@pytest.fixture(scope="module")
def redis_world(world, redis_server):
    import redis as redis_py

    from ranker.features.materialize import materialize

    settings = world.with_(online_store="redis", redis_url=f"{redis_server}/5")
    redis_py.Redis.from_url(settings.redis_url).flushdb()  # private server, our database
    materialize(settings, full=True)
    return settings


# --- exactness ---------------------------------------------------------------------------------------


def test_fetch_equals_feast_on_random_requests_sqlite(sqlite_world):
    assert _compare_random_requests(sqlite_world, seed=20261125) == len(SERVICES) * REQUESTS_PER_SERVICE


@pytest.mark.redis
def test_fetch_equals_feast_on_random_requests_redis(redis_world):
    assert _compare_random_requests(redis_world, seed=20261126) == len(SERVICES) * REQUESTS_PER_SERVICE


@pytest.mark.redis
def test_redis_and_sqlite_paths_agree(sqlite_world, redis_world):
    from ranker.serving.features import OnlineFeatures

    universe = _Universe(sqlite_world, datetime.now(timezone.utc))
    rng = np.random.default_rng(3)
    with (
        OnlineFeatures(sqlite_world, service="search_ranker_v1") as a,
        OnlineFeatures(redis_world, service="search_ranker_v1") as b,
    ):
        for _ in range(5):
            req = universe.request(rng, "search_ranker_v1")
            x, y = a.fetch(**req), b.fetch(**req)
            _assert_bit_identical(x.matrix, y.matrix)
            np.testing.assert_array_equal(x.known, y.known)
            np.testing.assert_array_equal(x.sold, y.sold)


def test_rows_follow_the_request_order_and_repeats(sqlite_world):
    from ranker.serving.features import OnlineFeatures

    universe = _Universe(sqlite_world, datetime.now(timezone.utc))
    items = universe.live[:5]
    with OnlineFeatures(sqlite_world, service="recs_ranker_v1") as online:
        req = dict(user_id=universe.users_active[0], query=None, request_ts=1_790_000_000)
        forward = online.fetch(item_ids=items, **req)
        backward = online.fetch(item_ids=items[::-1] + [items[0]], **req)
        _assert_bit_identical(backward.matrix[:5], forward.matrix[::-1])
        _assert_bit_identical(backward.matrix[5:], forward.matrix[:1])
        empty = online.fetch(item_ids=[], **req)
        assert empty.matrix.shape == (0, len(online.feature_names)) and empty.matrix.dtype == np.float32
        assert empty.known.shape == empty.sold.shape == (0,)


@pytest.mark.parametrize("store", ["sqlite_world", pytest.param("redis_world", marks=pytest.mark.redis)])
def test_concurrent_fetches_are_consistent(store, request):
    from ranker.serving.features import OnlineFeatures

    settings = request.getfixturevalue(store)
    universe = _Universe(settings, datetime.now(timezone.utc))
    rng = np.random.default_rng(9)
    requests = [universe.request(rng, "search_ranker_v1") for _ in range(8)]
    with OnlineFeatures(settings, service="search_ranker_v1") as plain:
        expected = [plain.fetch(**r).matrix for r in requests]
    with OnlineFeatures(settings, service="search_ranker_v1", item_cache_ttl_s=60) as online:
        errors = []

        def worker(k: int) -> None:
            try:
                for i in range(len(requests)):
                    j = (i + k) % len(requests)
                    _assert_bit_identical(online.fetch(**requests[j]).matrix, expected[j])
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[0]
        assert online.cache_hits > 0 and online.cache_misses > 0  # mixed hits and misses were exercised


# --- the item cache ------------------------------------------------------------------------------------


def _cache_roundtrip(settings) -> None:
    from ranker.serving.features import OnlineFeatures

    universe = _Universe(settings, datetime.now(timezone.utc))
    rng = np.random.default_rng(5)
    for service in SERVICES:
        req = universe.request(rng, service)
        req["item_ids"] = req["item_ids"] + ["i-unknown-x"]
        unique = list(dict.fromkeys(req["item_ids"]))
        n_known = sum(i in universe.listing_sold for i in unique)
        with (
            OnlineFeatures(settings, service=service) as plain,
            OnlineFeatures(settings, service=service, item_cache_ttl_s=60) as cached,
        ):
            want = plain.fetch(**req)
            first = cached.fetch(**req)
            assert (cached.cache_hits, cached.cache_misses) == (0, len(unique))
            second = cached.fetch(**req)
            assert cached.cache_hits == n_known, "every known listing is served from the cache"
            assert cached.cache_misses == len(unique) + len(unique) - n_known, "unknown listings are never cached"
            for got in (first, second):
                _assert_bit_identical(got.matrix, want.matrix, service)
                np.testing.assert_array_equal(got.known, want.known)
                np.testing.assert_array_equal(got.sold, want.sold)
            # Another user and query over the same (cached) listings: user and pair features are live.
            other = dict(req, user_id=universe.users_active[-1], query="velvet unicorn boots" if req["query"] else None)
            _assert_bit_identical(cached.fetch(**other).matrix, plain.fetch(**other).matrix, service)
            assert plain.cache_hits == plain.cache_misses == 0


def test_item_cache_returns_the_same_rows_sqlite(sqlite_world):
    _cache_roundtrip(sqlite_world)


@pytest.mark.redis
def test_item_cache_returns_the_same_rows_redis(redis_world):
    _cache_roundtrip(redis_world)


def test_item_cache_expires_and_is_bounded(sqlite_world):
    from ranker.serving.features import OnlineFeatures

    universe = _Universe(sqlite_world, datetime.now(timezone.utc))
    items = universe.live[:30]
    req = dict(user_id=universe.users_active[0], item_ids=items, query=None, request_ts=1_790_000_000)
    clock = [1000.0]
    with OnlineFeatures(sqlite_world, service="recs_ranker_v1", item_cache_ttl_s=60, item_cache_size=10) as online:
        online._clock = lambda: clock[0]
        online.fetch(**req)
        assert len(online._cache) == 10, "the cache keeps at most item_cache_size listings"
        online.fetch(**dict(req, item_ids=items[-10:]))
        assert online.cache_hits == 10, "the last ones read are kept"
        clock[0] += 59.9
        online.fetch(**dict(req, item_ids=items[-10:]))
        assert online.cache_hits == 20, "entries younger than the TTL are served"
        clock[0] += 0.2
        online.fetch(**dict(req, item_ids=items[-10:]))
        assert online.cache_hits == 20, "entries older than the TTL are read again"
        online.fetch(**dict(req, item_ids=items[-10:]))
        assert online.cache_hits == 30, "and cached again, for another TTL"
        # Least recently used first: touch 5 of the 10, then 5 new listings replace the other 5.
        online.fetch(**dict(req, item_ids=items[-5:]))
        online.fetch(**dict(req, item_ids=items[:5]))
        assert len(online._cache) == 10
        hits = online.cache_hits
        online.fetch(**dict(req, item_ids=items[-5:] + items[:5]))
        assert online.cache_hits == hits + 10, "the recently used and the new listings are the ones kept"


def _lookup(cache, keys, now):
    hit, num, text = cache.get(keys, now)
    return {keys[i]: (num[j, 0], text[j, 0]) for j, i in enumerate(hit.tolist())}


def test_item_cache_table_is_an_lru_with_ttl():
    """Random single-item reads and stores against a reference LRU (an OrderedDict) with expiry: the
    same hits with the same values. Below 16 rows an eviction takes exactly what the insert needs."""
    from collections import OrderedDict

    from ranker.serving.cache import ItemCache as _ItemCache

    rng = np.random.default_rng(3)
    for size in (1, 5, 12):
        cache, ref = _ItemCache(ttl_s=10, size=size, widths=(2, 1)), OrderedDict()
        now = 0.0
        for step in range(3000):
            now += float(rng.exponential(0.5))
            key = f"i{int(rng.integers(0, 3 * size))}"
            if rng.random() < 0.5:
                got = _lookup(cache, [key], now)
                rec = ref.get(key)
                if rec is not None and rec[0] > now:
                    ref.move_to_end(key)
                    assert got == {key: rec[1:]}, (size, step)
                else:
                    assert got == {}, (size, step)
            else:
                value = float(step)
                cache.put([key], np.array([[value, -value]]), np.array([[f"t{step}"]], dtype=object), now)
                ref[key] = (now + 10, value, f"t{step}")
                ref.move_to_end(key)
                while len(ref) > size:
                    ref.popitem(last=False)
            assert len(cache) == len(ref) <= size


def test_item_cache_table_batches():
    from ranker.serving.cache import ItemCache as _ItemCache

    def put(cache, keys, now=0.0):
        cache.put(keys, np.arange(len(keys), dtype=float)[:, None], np.array([[k] for k in keys], dtype=object), now)

    cache = _ItemCache(ttl_s=10, size=80, widths=(1, 1))
    keys = [f"i{i}" for i in range(80)]
    put(cache, keys)
    # 79 of them stored again with one new: the eviction (an eighth of the rows at that size) never
    # takes a row the same insert writes.
    put(cache, keys[1:] + ["new"])
    got = _lookup(cache, keys[1:] + ["new"], 1.0)
    assert len(got) == 80 and got["new"] == (79.0, "new") and got["i1"] == (0.0, "i1")
    assert _lookup(cache, ["i0"], 1.0) == {}
    # A batch larger than the cache keeps its last items; the tables grow past their first size.
    small = _ItemCache(ttl_s=10, size=3, widths=(1, 1))
    put(small, keys[:7])
    assert set(_lookup(small, keys[:7], 1.0)) == {"i4", "i5", "i6"}
    big = _ItemCache(ttl_s=10, size=10_000, widths=(1, 1))
    many = [f"x{i}" for i in range(9000)]
    put(big, many[:5000])
    put(big, many[5000:])
    assert len(_lookup(big, many, 1.0)) == 9000 and len(big) == 9000
    put(big, [f"y{i}" for i in range(2000)])  # full: the least recently used eighth goes at once
    # 1000 rows were free; 1250 (an eighth) evicted in one pass, 250 of them left free for later.
    assert len(big) == 9000 - 1250 + 2000
    assert len(_lookup(big, [f"y{i}" for i in range(2000)], 1.0)) == 2000
    assert len(_lookup(big, many, 1.0)) == 9000 - 1250
    big.clear()
    assert len(big) == 0 and _lookup(big, ["x1"], 1.0) == {}


def _listing_field(settings, n: int, ref: str):
    """A Redis client, the hash key and field of ``ref`` (view:feature) for the n-th live listing, and
    a recs request for that listing alone."""
    import redis as redis_py

    from ranker.features.feast_compat import redis_field, string_entity_keys
    from ranker.features.store import feature_store

    universe = _Universe(settings, datetime.now(timezone.utc))
    item = universe.live[n]
    key = string_entity_keys(["item_id"], [[item]], b"fashion_ranking")[0]
    req = dict(user_id=universe.users_active[0], item_ids=[item], query=None, request_ts=1_790_000_000)
    view, feature = ref.split(":")
    field = redis_field(feature_store(settings).get_feature_view(view), feature, versioning=False)
    return redis_py.Redis.from_url(settings.redis_url), key, field, req


@pytest.mark.redis
def test_item_cache_staleness_bound_is_its_ttl(redis_world):
    """The documented bound, measured: a value changed in the store is served from the cache until
    exactly ``item_cache_ttl_s`` after the listing was read, and the new value right after."""
    from feast.protos.feast.types.Value_pb2 import Value

    from ranker.serving.features import OnlineFeatures

    client, key, field, req = _listing_field(redis_world, 11, "item_stats_fv:item_clicks_7d")
    before = client.hget(key, field)
    assert before is not None, "the listing's engagement counts are materialized"
    clock = [5000.0]
    with OnlineFeatures(redis_world, service="recs_ranker_v1", item_cache_ttl_s=30) as online:
        online._clock = lambda: clock[0]
        column = online.feature_names.index("item_clicks_7d")
        old = online.fetch(**req).matrix[0, column]
        try:
            client.hset(key, field, Value(int64_val=int(old) + 1000).SerializeToString())
            clock[0] += 29.999
            assert online.fetch(**req).matrix[0, column] == old, "within the TTL the cached value is served"
            clock[0] += 0.002
            assert online.fetch(**req).matrix[0, column] == old + 1000, "past the TTL the store's value is"
        finally:
            client.hset(key, field, before)


@pytest.mark.redis
def test_sold_flag_is_never_served_from_the_cache(redis_world):
    from ranker.serving.features import OnlineFeatures

    client, key, field, req = _listing_field(redis_world, 7, "listing_fv:is_sold")
    before = client.hget(key, field)
    assert before == b"\x20\x00"  # int64_val = 0
    with OnlineFeatures(redis_world, service="recs_ranker_v1", item_cache_ttl_s=600) as online:
        assert not online.fetch(**req).sold[0]
        try:
            client.hset(key, field, b"\x20\x01")  # the listing sells (as a push would write it)
            row = online.fetch(**req)
            assert online.cache_hits == 1 and row.sold[0] and row.known[0]
        finally:
            client.hset(key, field, before)


# --- failures ------------------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens there


def test_redis_down_raises_store_unavailable_quickly(world):
    from ranker.serving.features import OnlineFeatures, OnlineStoreUnavailable

    settings = world.with_(online_store="redis", redis_url=f"redis://127.0.0.1:{_closed_port()}/0")
    online = OnlineFeatures(settings, service="search_ranker_v1", timeout_s=0.05)  # no connection at start-up
    assert online.ping() is False
    t0 = time.perf_counter()
    with pytest.raises(OnlineStoreUnavailable, match="Redis at"):
        online.fetch(user_id="u1", item_ids=["i1", "i2"], query="red dress", request_ts=1_790_000_000)
    assert time.perf_counter() - t0 < 0.5
    online.close()


def test_redis_that_does_not_answer_times_out(world):
    """A server that accepts connections but never replies: the read times out after timeout_s."""
    from ranker.serving.features import FetchDeadlineExceeded, OnlineFeatures, OnlineStoreUnavailable

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        port = listener.getsockname()[1]
        settings = world.with_(online_store="redis", redis_url=f"redis://127.0.0.1:{port}/0")
        online = OnlineFeatures(settings, service="recs_ranker_v1", timeout_s=0.1)
        t0 = time.perf_counter()
        with pytest.raises(OnlineStoreUnavailable):
            online.fetch(user_id="u1", item_ids=["i1"], query=None, request_ts=1_790_000_000)
        elapsed = time.perf_counter() - t0
        assert 0.09 <= elapsed < 1.0, elapsed
        assert online.ping() is False
        online.close()
        # A caller's deadline shorter than timeout_s ends the wait at the deadline, and says so.
        online = OnlineFeatures(settings, service="recs_ranker_v1", timeout_s=5.0)
        t0 = time.perf_counter()
        with pytest.raises(FetchDeadlineExceeded, match="deadline"):
            online.fetch(
                user_id="u1", item_ids=["i1"], query=None, request_ts=1_790_000_000, deadline=time.monotonic() + 0.15
            )
        elapsed = time.perf_counter() - t0
        assert 0.14 <= elapsed < 1.0, elapsed
        online.close()
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        listener.close()


def test_sqlite_fetch_past_its_deadline_is_interrupted(sqlite_world):
    from ranker.serving.features import FetchDeadlineExceeded, OnlineFeatures

    with OnlineFeatures(sqlite_world, service="search_ranker_v1", timeout_s=5.0) as online:
        with pytest.raises(FetchDeadlineExceeded):
            online.fetch(
                user_id="u1", item_ids=["i1"], query=None, request_ts=1_790_000_000, deadline=time.monotonic() - 0.001
            )
        # the connection is fine afterwards
        rows = online.fetch(
            user_id="u1", item_ids=["i1"], query=None, request_ts=1_790_000_000, deadline=time.monotonic() + 5.0
        )
        assert rows.matrix.shape == (1, len(online.feature_names))


def test_redis_connections_are_reused_across_threads(redis_world):
    """A server that runs each request on a new thread (Flask's dev server) must not open a Redis
    connection per request: connections go back to the instance after each read."""
    import redis as redis_py

    from ranker.serving.features import OnlineFeatures

    client = redis_py.Redis.from_url(redis_world.redis_url)
    with OnlineFeatures(redis_world, service="recs_ranker_v1", timeout_s=5.0) as online:
        online.fetch(user_id="u1", item_ids=["i1"], query=None, request_ts=1_790_000_000)
        before = client.info("clients")["connected_clients"]
        for _ in range(20):
            thread = threading.Thread(
                target=online.fetch,
                kwargs=dict(user_id="u1", item_ids=["i1", "i2"], query=None, request_ts=1_790_000_000),
            )
            thread.start()
            thread.join()
        assert client.info("clients")["connected_clients"] <= before
        assert online._backend._pool._created_connections <= 2


def test_no_kernel_compiles_on_a_request(redis_world):
    """Start-up compiles every signature a fetch uses: a new one would be compiled on the first
    request (seconds on a machine without numba's cache), far past any feature budget."""
    from ranker.serving import resp
    from ranker.serving.features import OnlineFeatures

    kernels = [k for name, k in vars(resp).items() if hasattr(k, "signatures") and not name.startswith("_")]
    assert resp.encode_commands in kernels and resp.parse_replies in kernels
    with OnlineFeatures(redis_world, service="search_ranker_v1", timeout_s=5.0) as online:
        before = [list(k.signatures) for k in kernels]
        rng = np.random.default_rng(4)
        universe = _Universe(redis_world, datetime.now(timezone.utc))
        for _ in range(5):
            online.fetch(**universe.request(rng, "search_ranker_v1"))
        assert [list(k.signatures) for k in kernels] == before


def test_redis_error_reply_is_store_unavailable_and_the_pool_stays_clean(redis_world):
    """A key of the wrong type answers HGETALL/HMGET with an error reply: the fetch fails clearly,
    the connection with unread replies is dropped, and the next fetch is exact again."""
    import redis as redis_py

    from ranker.features.feast_compat import string_entity_keys
    from ranker.serving.features import OnlineFeatures, OnlineStoreUnavailable

    client = redis_py.Redis.from_url(redis_world.redis_url)
    with OnlineFeatures(redis_world, service="search_ranker_v1", timeout_s=5.0) as online:
        key = string_entity_keys(["item_id"], [["i-wrong-type"]], online._plan.project.encode())[0]
        client.set(key, b"not a hash")
        try:
            before = online.fetch(user_id="u1", item_ids=["i1", "i2"], query="dress", request_ts=1_790_000_000)
            with pytest.raises(OnlineStoreUnavailable, match="WRONGTYPE"):
                online.fetch(
                    user_id="u1", item_ids=["i1", "i-wrong-type", "i2"], query="dress", request_ts=1_790_000_000
                )
            after = online.fetch(user_id="u1", item_ids=["i1", "i2"], query="dress", request_ts=1_790_000_000)
            _assert_bit_identical(after.matrix, before.matrix, "after an error reply")
        finally:
            client.delete(key)


def test_round_two_is_read_while_round_one_is_placed_and_a_failure_drops_its_connection(redis_world):
    """Round 2 is written before round 1's on-demand views run (they overlap Redis' answer). An
    error in that window must close that connection and hand it back: reused, its unread replies
    would be read as the next fetch's; kept, it would leak."""
    from ranker.serving.features import OnlineFeatures

    request = dict(user_id="u1", item_ids=["i1", "i2", "i3"], query="dress", request_ts=1_790_000_000)
    with OnlineFeatures(redis_world, service="search_ranker_v1", timeout_s=5.0) as online:
        plan = online._plan
        early = [i for i, view in enumerate(plan.odfvs) if view.groups <= set(plan.round1_groups)]
        assert early, "the search service has on-demand views fed by round 1 alone (query x title)"
        before = online.fetch(**request)
        calls = []
        backend = online._backend
        send, receive = backend.send, backend.receive
        backend.send = lambda reads, deadline=None: calls.append("send") or send(reads, deadline)
        backend.receive = lambda pending: calls.append("receive") or receive(pending)
        view = plan.odfvs[early[0]]
        name = view.name

        def failing(inputs):
            calls.append(name)
            raise RuntimeError("a transformation bug")

        plan.odfvs[early[0]] = dataclasses.replace(view, function=failing)
        try:
            with pytest.raises(RuntimeError, match="transformation bug"):
                online.fetch(**request)
        finally:
            plan.odfvs[early[0]] = view
        assert calls == ["send", "receive", "send", name]  # round 2 was in flight when it failed
        after = online.fetch(**request)
        _assert_bit_identical(after.matrix, before.matrix, "after a failure with round 2 in flight")
        # the connection was closed and handed back to the pool (not leaked with replies unread)
        assert backend._pool._created_connections == 1 and not backend._pool._in_use_connections - {
            conn for _pid, conn in backend._idle
        }


def test_missing_sqlite_store_raises_store_unavailable(world, tmp_path):
    import shutil

    from ranker.serving.features import OnlineFeatures, OnlineStoreUnavailable

    home = tmp_path / "home"
    shutil.copytree(world.feature_repo, home / "feature_repo")
    (home / "data" / "feast").mkdir(parents=True)
    shutil.copy(world.feast_dir / "registry.db", home / "data" / "feast" / "registry.db")
    online = OnlineFeatures(world.with_(home=home), service="recs_ranker_v1")
    assert online.ping() is False
    with pytest.raises(OnlineStoreUnavailable, match="materialize"):
        online.fetch(user_id="u1", item_ids=["i1"], query=None, request_ts=1_790_000_000)


def test_unknown_service_is_a_clear_error(world):
    from ranker.features.store import FeatureRepoError
    from ranker.serving.features import OnlineFeatures

    with pytest.raises(FeatureRepoError, match="search_ranker_v9"):
        OnlineFeatures(world, service="search_ranker_v9")

"""The real-time feature state of one stream partition: sliding windows on event time, allowed
lateness, de-duplication, and the rows the stream writes (``feature_repo/features/realtime.py``
declares the views; ``backfill.py`` computes the same rows from the event log).

Semantics (the contract with ``backfill.py``, tested row for row in tests/test_stream_windows.py):

* **Event time, available after.** A row counts the entity's events up to and including an event time
  ``t`` (a count over ``W``: events with ``t - W < ts <= t``) and is stamped ``event_timestamp = t +
  1 µs`` (``AVAILABLE_AFTER_US``): it became readable *after* those events. A point-in-time join at
  an impression's own time ``T`` (Feast takes rows with ``event_timestamp <= T``) therefore reads the
  windows over the events strictly before ``T``, which is what the scorer had when it ranked that
  impression; the impression itself (and the others of the same ranking) count from the next row on.
  The stream writes, per batch and per entity touched, one row at its latest event time, so the online
  value is the window as of the entity's last event (it does not decay between events: that is also
  what a Feast point-in-time join returns from rows written at each event's time).
* **Expiry (the views' 1 day TTL).** Offline, a row older than the TTL is not joined (missing). So
  that the online store agrees, an entity with no row for ``TTL_US`` gets a *tombstone*: a row with
  every feature null at ``last stamp + TTL + 1 µs``, the first instant the point-in-time join stops
  returning the old row. The stream writes it once the watermark passes that instant (no record can
  then land before it), the backfill wherever the log has such a gap; both readers return a null,
  which the scorer and the training set fill with the feature's default, as for an unseen entity.
* **Revisions.** A record older than its entity's latest event (out of order, within the lateness)
  changes the rows already written at or after its time: they are written again, same
  ``event_timestamp``, later ``created`` (the tie-breaker of Feast's point-in-time join and of the
  online writer). So every row the stream wrote, taken at its latest ``created``, equals the backfill's
  row for the same entity and event time (``backfill.py`` writes one per event time; the stream one
  per batch, the denser backfill agreeing wherever both have a row).
* **Lateness.** ``watermark_us`` = the largest event time accepted minus ``lateness_s``. A record
  older than the watermark when it arrives is rejected as ``"late"`` (counted, not applied); anything
  newer is applied exactly, in any arrival order.
* **De-duplication** on ``(record_id, route)``: a record seen again is rejected as ``"duplicate"``.
  An id is kept while it could still be accepted (event time >= watermark, swept every 10 minutes of
  event time), so the id set holds about ``lateness + 10 min`` of traffic; an evicted id is older
  than the watermark, so its replay is rejected as ``"late"``: never applied twice either way. The
  window buffers hold the last ``24 h + lateness`` of events; the first-hours counters one triple
  per listing that had early engagement.
* **Routes.** An engagement event arrives twice (``records.py``): the copy routed by its ``item_id``
  feeds the listing's windows (and marks it sold on a purchase), the copy routed by its ``user_id``
  feeds the user's session. Listing changes come once, routed by ``item_id``.
* **Listing catalogue.** The first-hours counts need the listing's ``created_at`` and the session
  categories/brands need the clicked listing's category/brand: both come from ``seed_listings`` (the
  processor seeds every partition with the listings table) and from ``created`` records. A click on a
  listing the state does not know still counts as a click; it adds no category or brand.
"""

from __future__ import annotations

import pickle
import time
from array import array
from bisect import bisect_left, bisect_right, insort
from heapq import heapify, heappop, heappush
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import chain

import pandas as pd
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from ranker.streaming.records import StreamRecord

US = 1_000_000
HOUR_US = 3600 * US

# Window lengths (event time).
ITEM_WINDOWS_US = {"1h": HOUR_US, "24h": 24 * HOUR_US}
FIRST_HOURS_US = 6 * HOUR_US  # engagement of a new listing in its first 6 hours online
SESSION_US = 30 * 60 * US  # the user's session: the last 30 minutes
LONGEST_US = max(*ITEM_WINDOWS_US.values(), SESSION_US)

# item_ctr_24h_rt = (clicks_24h + CTR_SMOOTHING * CTR_PRIOR) / (impressions_24h + CTR_SMOOTHING): a listing
# with few impressions stays near the marketplace's click-through rate.
CTR_SMOOTHING = 20.0
CTR_PRIOR = 0.08
_CTR_PSEUDO_CLICKS = CTR_SMOOTHING * CTR_PRIOR  # computed once, in this order, by the stream and the backfill

DEFAULT_LATENESS_S = 300.0
AVAILABLE_AFTER_US = 1  # a row is stamped 1 µs after the last event it counts (see the module docstring)
TTL_US = 24 * HOUR_US  # item_realtime_fv's and user_session_fv's ttl (a test checks the declarations)

ITEM_VIEW = "item_realtime_fv"
USER_VIEW = "user_session_fv"
LISTING_VIEW = "listing_fv"
VIEWS = (ITEM_VIEW, USER_VIEW)

_TS = pa.timestamp("us", tz="UTC")
ITEM_FEATURES = (
    ("item_impressions_1h", pa.int64()),
    ("item_clicks_1h", pa.int64()),
    ("item_saves_1h", pa.int64()),
    ("item_impressions_24h", pa.int64()),
    ("item_clicks_24h", pa.int64()),
    ("item_saves_24h", pa.int64()),
    ("item_ctr_24h_rt", pa.float32()),
    ("item_first6h_impressions", pa.int64()),
    ("item_first6h_clicks", pa.int64()),
    ("item_first6h_saves", pa.int64()),
)
USER_FEATURES = (
    ("user_clicks_30m", pa.int64()),
    ("user_saves_30m", pa.int64()),
    ("user_session_categories", pa.string()),
    ("user_session_brands", pa.string()),
)
# The arrow schema of every row a real-time view's offline directory and the stream hold.
SCHEMAS = {
    ITEM_VIEW: pa.schema([("item_id", pa.string()), ("event_timestamp", _TS), ("created", _TS), *ITEM_FEATURES]),
    USER_VIEW: pa.schema([("user_id", pa.string()), ("event_timestamp", _TS), ("created", _TS), *USER_FEATURES]),
}
SOLD_SCHEMA = pa.schema([("item_id", pa.string()), ("event_timestamp", _TS), ("created", _TS), ("is_sold", pa.int64())])
JOIN_KEYS = {ITEM_VIEW: "item_id", USER_VIEW: "user_id"}

_SLOTS = {"impression": 0, "click": 1, "save": 2}  # the event types an item's windows count
SNAPSHOT_VERSION = 3
_SWEEP_EVERY_US = 10 * 60 * US  # evict expired state each time event time advances this much
_MIN_TS = -(2**62)


@dataclass
class Applied:
    """What one batch did: the rows to write, and what was refused."""

    updates: dict[str, pa.Table] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    accepted: int = 0
    sold_items: list[str] = field(default_factory=list)


class _Item:
    __slots__ = ("imp", "clk", "sav", "last", "rows", "first_ts", "first_base", "settled", "queued")

    def __init__(self) -> None:
        self.imp: list[int] = []  # event times (sorted) of impressions, clicks, saves in the window horizon
        self.clk: list[int] = []
        self.sav: list[int] = []
        self.last = _MIN_TS  # latest event time applied
        self.rows: list[int] = []  # event times of the rows written that a record within lateness can revise
        # Impressions, clicks, saves in the first FIRST_HOURS_US after created_at: their event times while a
        # row can still fall inside those hours, then only their counts.
        self.first_ts: tuple[list[int], list[int], list[int]] = ([], [], [])
        self.first_base = [0, 0, 0]
        self.settled = _MIN_TS  # event time of the latest row below the watermark not yet expired, if any
        self.queued = False  # has an entry in the expiry heap

    def __getstate__(self):
        return (self.imp, self.clk, self.sav, self.last, self.rows, self.first_ts, self.first_base, self.settled)

    def __setstate__(self, state) -> None:
        self.imp, self.clk, self.sav, self.last, self.rows, self.first_ts, self.first_base, self.settled = state
        self.queued = False


class _User:
    __slots__ = ("clk", "clk_items", "sav", "last", "rows", "settled", "queued")

    def __init__(self) -> None:
        self.clk: list[int] = []
        self.clk_items: list[str] = []  # aligned with clk
        self.sav: list[int] = []
        self.last = _MIN_TS
        self.rows: list[int] = []
        self.settled = _MIN_TS
        self.queued = False

    def __getstate__(self):
        return (self.clk, self.clk_items, self.sav, self.last, self.rows, self.settled)

    def __setstate__(self, state) -> None:
        self.clk, self.clk_items, self.sav, self.last, self.rows, self.settled = state
        self.queued = False


def _count(ts: list[int], upto: int, width: int) -> int:
    """Entries of the sorted list ``ts`` in ``(upto - width, upto]``."""
    return bisect_right(ts, upto) - bisect_right(ts, upto - width)


def _trim(ts: list[int], horizon: int, aligned: list | None = None) -> None:
    """Drop the entries <= horizon."""
    k = bisect_right(ts, horizon)
    if k:
        del ts[:k]
        if aligned is not None:
            del aligned[:k]


def _revise(rows: list[int], since: int, need: set[int]) -> None:
    """An entity received an event at ``since`` older than its latest: the rows written at or after it
    change (their windows now include the event) and are written again."""
    need.update(rows[bisect_left(rows, since) :])


def _remember(rows: list[int], times: list[int]) -> None:
    """Keep the event times of the rows written (a record accepted later can revise those >= the
    watermark; ``WindowState._settle`` retires the others)."""
    for t in times:
        k = bisect_left(rows, t)
        if k == len(rows) or rows[k] != t:
            rows.insert(k, t)


def smoothed_ctr(clicks: int, impressions: int) -> float:
    return (clicks + _CTR_PSEUDO_CLICKS) / (impressions + CTR_SMOOTHING)


class WindowState:
    """Windows, de-duplication set and watermark of one partition (see the module docstring)."""

    def __init__(self, lateness_s: float = DEFAULT_LATENESS_S):
        if lateness_s < 0:
            raise ValueError(f"lateness_s must be >= 0, got {lateness_s}")
        self.lateness_us = int(round(lateness_s * US))
        self._max_ts = _MIN_TS
        self._swept = _MIN_TS
        self._seen: dict[tuple[str, str], int] = {}
        self._listings: dict[str, tuple[str | None, str | None, int | None]] = {}
        self._sold: set[str] = set()
        self._items: dict[str, _Item] = {}
        self._users: dict[str, _User] = {}
        self._last_created = 0
        self._since_sweep = 0
        self._catalogue: bytes | None = None  # the pickled catalogue of the last snapshot, until it changes
        # (expiry instant, view, key): at most one entry per entity with a settled row (see _settle).
        self._expiry: list[tuple[int, str, str]] = []
        self._tombs: dict[str, list[tuple[str, int]]] = {ITEM_VIEW: [], USER_VIEW: []}

    # -- catalogue -------------------------------------------------------------------------------
    def seed_listings(self, listings: pa.Table | pd.DataFrame) -> None:
        """Know the listings' category, brand and created_at (columns of the listings table). Sold
        status is not read from it: a listing becomes sold by a record (change ``sold`` or a purchase)."""
        df = listings.to_pandas() if isinstance(listings, pa.Table) else listings
        created = pd.to_datetime(df["created_at"], utc=True).astype("datetime64[us, UTC]")
        created_us = [None if pd.isna(c) else int(c.value // 1000) for c in created]
        for item, cat, brand, c in zip(df["item_id"].astype(str), df["category"], df["brand"], created_us, strict=True):
            self._listings[item] = (None if pd.isna(cat) else str(cat), None if pd.isna(brand) else str(brand), c)
        self._catalogue = None

    # -- properties ------------------------------------------------------------------------------
    @property
    def watermark_us(self) -> int:
        return self._max_ts - self.lateness_us

    @property
    def sizes(self) -> dict[str, int]:
        """How much state is held (for the bounded-memory test and the processor's metrics)."""
        return {
            "dedup_ids": len(self._seen),
            "items": len(self._items),
            "users": len(self._users),
            "item_events": sum(len(i.imp) + len(i.clk) + len(i.sav) for i in self._items.values()),
            "user_events": sum(len(u.clk) + len(u.sav) for u in self._users.values()),
        }

    # -- apply -----------------------------------------------------------------------------------
    def apply(self, records: Iterable[StreamRecord]) -> Applied:
        """Apply records in arrival order; return the rows to write for every entity touched.

        Per entity touched: the row at its latest event time and, when a record older than that
        arrived (within the lateness), the rows written earlier at or after that record's time, revised
        (same event_timestamp, later ``created``). Rows of a view are sorted by event_timestamp."""
        rejected: dict[str, int] = {}
        accepted = 0
        items_touched: dict[str, set[int]] = {}
        users_touched: dict[str, set[int]] = {}
        sold: dict[str, int] = {}
        seen = self._seen
        items, users, listings, sold_set = self._items, self._users, self._listings, self._sold
        lateness = self.lateness_us
        max_ts = self._max_ts
        watermark = max_ts - lateness
        # the hot loop (20k records/s per process): locals, no per-record method calls
        for r in records:
            key = (r.record_id, r.route)
            if key in seen:
                rejected["duplicate"] = rejected.get("duplicate", 0) + 1
                continue
            ts = r.ts_us
            if ts < watermark:
                rejected["late"] = rejected.get("late", 0) + 1
                continue
            if r.kind == "event":
                item_id = r.item_id
                if r.route == item_id:
                    need = items_touched.get(item_id)
                    if need is None:
                        need = items_touched[item_id] = set()
                    it = items.get(item_id)
                    if it is None:
                        it = items[item_id] = _Item()
                    kind = r.event_type
                    slot = _SLOTS.get(kind, -1)  # type: ignore[arg-type]
                    if slot >= 0:
                        insort((it.imp, it.clk, it.sav)[slot], ts)
                        listing = listings.get(item_id)
                        if (
                            listing is not None
                            and listing[2] is not None
                            and listing[2] <= ts < listing[2] + FIRST_HOURS_US
                        ):
                            insort(it.first_ts[slot], ts)
                    if ts < it.last:
                        _revise(it.rows, ts, need)
                    else:
                        it.last = ts
                    if kind == "purchase" and item_id not in sold_set:
                        sold_set.add(item_id)
                        sold[item_id] = ts
                elif r.route == r.user_id and r.user_id is not None:
                    user = r.user_id
                    need = users_touched.get(user)
                    if need is None:
                        need = users_touched[user] = set()
                    u = users.get(user)
                    if u is None:
                        u = users[user] = _User()
                    kind = r.event_type
                    if kind == "click":
                        k = bisect_right(u.clk, ts)
                        u.clk.insert(k, ts)
                        u.clk_items.insert(k, item_id)
                    elif kind == "save":
                        insort(u.sav, ts)
                    if ts < u.last:
                        _revise(u.rows, ts, need)
                    else:
                        u.last = ts
                else:
                    rejected["route"] = rejected.get("route", 0) + 1
                    continue
            elif r.kind == "listing":
                if r.change == "created":
                    a = r.attrs
                    listings[r.item_id] = (a.get("category"), a.get("brand"), ts)
                    self._catalogue = None
                elif r.change == "sold" and r.item_id not in sold_set:
                    sold_set.add(r.item_id)
                    sold[r.item_id] = ts
            seen[key] = ts
            accepted += 1
            if ts > max_ts:
                max_ts = ts
                watermark = ts - lateness
        self._max_ts = max_ts
        created = max(time.time_ns() // 1000, self._last_created + 1)
        self._last_created = created
        updates: dict[str, pa.Table] = {}
        if items_touched:
            updates[ITEM_VIEW] = self._item_rows(items_touched, created)
        if users_touched:
            updates[USER_VIEW] = self._user_rows(users_touched, created)
        if sold:
            updates[LISTING_VIEW] = pa.table(
                {
                    "item_id": list(sold),
                    "event_timestamp": pa.array(list(sold.values()), _TS),
                    "created": pa.array([created] * len(sold), _TS),
                    "is_sold": pa.array([1] * len(sold), pa.int64()),
                },
                schema=SOLD_SCHEMA,
            )
        self._since_sweep += accepted
        # Sweep every 10 minutes of event time, and at most once per two state's worth of records (a
        # sweep visits every entity: a fast replay of history would otherwise spend its time there).
        due = self._since_sweep >= 2 * (len(self._items) + len(self._users))
        if due and self._max_ts - self._swept >= _SWEEP_EVERY_US:
            self._sweep()  # after the rows: it may drop an entity this batch touched last
        if self._expiry and self._expiry[0][0] <= self.watermark_us:
            self._expire(self.watermark_us)
        for view, tombs in self._tombs.items():
            if tombs:
                table = _tombstones(view, tombs, created)
                updates[view] = _by_time(pa.concat_tables([updates[view], table])) if view in updates else table
                tombs.clear()
        return Applied(updates=updates, rejected=rejected, accepted=accepted, sold_items=list(sold))

    def tick(self, ts_us: int) -> Applied:
        """Event time has reached ``ts_us`` on this partition (a heartbeat: no record older than
        ``ts_us - lateness`` will be accepted any more): the watermark moves up to it and the entities
        whose rows expired by then get their tombstones. Returns those rows."""
        if ts_us > self._max_ts:
            self._max_ts = ts_us
        created = max(time.time_ns() // 1000, self._last_created + 1)
        self._last_created = created
        if self._expiry and self._expiry[0][0] <= self.watermark_us:
            self._expire(self.watermark_us)
        updates = {}
        for view, tombs in self._tombs.items():
            if tombs:
                updates[view] = _tombstones(view, tombs, created)
                tombs.clear()
        return Applied(updates=updates)

    def _item_rows(self, touched: dict[str, set[int]], created: int) -> pa.Table:
        wm = self.watermark_us
        w1, w24 = ITEM_WINDOWS_US["1h"], ITEM_WINDOWS_US["24h"]
        cols: list[list] = [[] for _ in range(12)]
        (keys, times_col, imp1, clk1, sav1, imp24_col, clk24_col, sav24, ctr, first_imp, first_clk, first_sav) = cols
        br = bisect_right
        for item, need in touched.items():
            it = self._items[item]
            need.add(it.last)
            times = sorted(need)
            _remember(it.rows, times)
            self._settle(it, ITEM_VIEW, item, wm)
            known = self._listings.get(item)
            has_created = known is not None and known[2] is not None
            imp, clk, sav = it.imp, it.clk, it.sav
            for t in times:
                # one upper bound per list, then the 24 h and 1 h lower bounds searched below it
                hi_i, hi_c, hi_s = br(imp, t), br(clk, t), br(sav, t)
                t24, t1 = t - w24, t - w1
                lo_i, lo_c, lo_s = br(imp, t24, 0, hi_i), br(clk, t24, 0, hi_c), br(sav, t24, 0, hi_s)
                imp24, clk24 = hi_i - lo_i, hi_c - lo_c
                keys.append(item)
                times_col.append(t)
                imp1.append(hi_i - br(imp, t1, lo_i, hi_i))
                clk1.append(hi_c - br(clk, t1, lo_c, hi_c))
                sav1.append(hi_s - br(sav, t1, lo_s, hi_s))
                imp24_col.append(imp24)
                clk24_col.append(clk24)
                sav24.append(hi_s - lo_s)
                ctr.append((clk24 + _CTR_PSEUDO_CLICKS) / (imp24 + CTR_SMOOTHING))  # smoothed_ctr, inlined
                if has_created:
                    base, first = it.first_base, it.first_ts
                    first_imp.append(base[0] + br(first[0], t))
                    first_clk.append(base[1] + br(first[1], t))
                    first_sav.append(base[2] + br(first[2], t))
                else:
                    first_imp.append(None)
                    first_clk.append(None)
                    first_sav.append(None)
        schema = SCHEMAS[ITEM_VIEW]
        n = len(keys)
        stamps = [t + AVAILABLE_AFTER_US for t in times_col]
        arrays = [pa.array(keys, pa.string()), pa.array(stamps, _TS), pa.array([created] * n, _TS)]
        arrays += [pa.array(c, f.type) for c, f in zip(cols[2:], list(schema)[3:], strict=True)]
        return _by_time(pa.Table.from_arrays(arrays, schema=schema))

    def _user_rows(self, touched: dict[str, set[int]], created: int) -> pa.Table:
        wm = self.watermark_us
        w = SESSION_US
        users, last, clicks, saves, cats, brands = [], [], [], [], [], []
        for user, need in touched.items():
            u = self._users[user]
            need.add(u.last)
            times = sorted(need)
            _remember(u.rows, times)
            self._settle(u, USER_VIEW, user, wm)
            for t in times:
                lo, hi = bisect_right(u.clk, t - w), bisect_right(u.clk, t)
                c_set, b_set = set(), set()
                for item in u.clk_items[lo:hi]:
                    known = self._listings.get(item)
                    if known is not None:
                        if known[0] is not None:
                            c_set.add(known[0])
                        if known[1] is not None:
                            b_set.add(known[1])
                users.append(user)
                last.append(t + AVAILABLE_AFTER_US)
                clicks.append(hi - lo)
                saves.append(_count(u.sav, t, w))
                cats.append(",".join(sorted(c_set)))
                brands.append(",".join(sorted(b_set)))
        n = len(users)
        table = pa.Table.from_arrays(
            [
                pa.array(users, pa.string()),
                pa.array(last, _TS),
                pa.array([created] * n, _TS),
                pa.array(clicks, pa.int64()),
                pa.array(saves, pa.int64()),
                pa.array(cats, pa.string()),
                pa.array(brands, pa.string()),
            ],
            schema=SCHEMAS[USER_VIEW],
        )
        return _by_time(table)

    def _settle(self, ent: _Item | _User, view: str, key: str, wm: int) -> None:
        """Retire the entity's rows below the watermark (final: no record accepted from now on can
        revise them). A gap of more than the TTL between two of them gets its tombstone; the latest
        becomes ``settled`` and waits in the expiry heap for the watermark to pass its expiry."""
        rows = ent.rows
        if not rows or rows[0] >= wm:
            return
        k = bisect_left(rows, wm)
        prev = ent.settled
        for t in rows[:k]:
            if prev != _MIN_TS and t - prev > TTL_US + 1:
                self._tombs[view].append((key, prev + AVAILABLE_AFTER_US + TTL_US + 1))
            prev = t
        del rows[:k]
        ent.settled = prev
        if not ent.queued:
            heappush(self._expiry, (prev + AVAILABLE_AFTER_US + TTL_US + 1, view, key))
            ent.queued = True

    def _expire(self, wm: int) -> None:
        """Tombstones for the entities whose latest row expired (offline) at or before the watermark."""
        heap = self._expiry
        while heap and heap[0][0] <= wm:
            _, view, key = heappop(heap)
            ent = (self._items if view == ITEM_VIEW else self._users).get(key)
            if ent is None:
                continue
            ent.queued = False
            self._settle(ent, view, key, wm)
            if ent.settled == _MIN_TS:
                continue
            due = ent.settled + AVAILABLE_AFTER_US + TTL_US + 1
            if due <= wm:  # the rows left are >= wm: none in (settled, due]
                self._tombs[view].append((key, due))
                ent.settled = _MIN_TS
            elif not ent.queued:
                heappush(heap, (due, view, key))
                ent.queued = True

    def _sweep(self) -> None:
        """Drop what can no longer be accepted, counted or revised: bounded memory. Every record
        accepted from now on has an event time >= the watermark, so does every row written."""
        self._swept = self._max_ts
        self._since_sweep = 0
        wm = self._max_ts - self.lateness_us
        # An id older than the watermark cannot be applied again (it is late), so it is not kept.
        self._seen = {k: ts for k, ts in self._seen.items() if ts >= wm}
        item_horizon = wm - LONGEST_US
        listings = self._listings
        drop = []
        for key, it in self._items.items():
            if it.imp and it.imp[0] <= item_horizon:
                _trim(it.imp, item_horizon)
            if it.clk and it.clk[0] <= item_horizon:
                _trim(it.clk, item_horizon)
            if it.sav and it.sav[0] <= item_horizon:
                _trim(it.sav, item_horizon)
            if it.rows and it.rows[0] < wm:
                self._settle(it, ITEM_VIEW, key, wm)
            first = it.first_ts
            if first[0] or first[1] or first[2]:
                known = listings.get(key)
                if known is not None and known[2] is not None and known[2] + FIRST_HOURS_US <= wm:
                    for slot in range(3):  # every later row counts all of them
                        it.first_base[slot] += len(first[slot])
                        first[slot].clear()
            elif not (it.imp or it.clk or it.sav or it.rows or it.first_base != [0, 0, 0] or it.settled != _MIN_TS):
                drop.append(key)
        for key in drop:
            del self._items[key]
        user_horizon = wm - SESSION_US
        drop = []
        for key, u in self._users.items():
            if u.clk and u.clk[0] <= user_horizon:
                _trim(u.clk, user_horizon, u.clk_items)
            if u.sav and u.sav[0] <= user_horizon:
                _trim(u.sav, user_horizon)
            if u.rows and u.rows[0] < wm:
                self._settle(u, USER_VIEW, key, wm)
            if not (u.clk or u.sav or u.rows or u.settled != _MIN_TS):
                drop.append(key)
        for key in drop:
            del self._users[key]

    # -- checkpoint ------------------------------------------------------------------------------
    def snapshot(self) -> bytes:
        """The full state (windows, catalogue, sold set, de-duplication ids, watermark). Columnar:
        the integers of all entities in one ``array('q')`` per field with their lengths, as pickling
        one object (or one small list) per entity costs several times as much; the processor takes a
        snapshot every checkpoint (about a second)."""
        items, users = self._items, self._users
        data = {
            "lateness_us": self.lateness_us,
            "max_ts": self._max_ts,
            "swept": self._swept,
            "last_created": self._last_created,
            "since_sweep": self._since_sweep,
            "seen_ids": [k[0] for k in self._seen],
            "seen_routes": [k[1] for k in self._seen],
            "seen_ts": array("q", self._seen.values()),
            "listings": self._catalogue_blob(),
            "sold": sorted(self._sold),
            "items": list(items),
            "item_last": array("q", (it.last for it in items.values())),
            "item_settled": array("q", (it.settled for it in items.values())),
            "item_base": array("q", chain.from_iterable(it.first_base for it in items.values())),
            "users": list(users),
            "user_last": array("q", (u.last for u in users.values())),
            "user_settled": array("q", (u.settled for u in users.values())),
            "user_clk_items": list(chain.from_iterable(u.clk_items for u in users.values())),
        }
        lengths: list[int] = []
        flat: list[int] = []
        extend = flat.extend
        for it in items.values():  # one pass: 7 lists per item, lengths then values, in _ITEM_LISTS order
            f0, f1, f2 = it.first_ts
            lengths += (len(it.imp), len(it.clk), len(it.sav), len(it.rows), len(f0), len(f1), len(f2))
            extend(it.imp)
            extend(it.clk)
            extend(it.sav)
            extend(it.rows)
            extend(f0)
            extend(f1)
            extend(f2)
        data["item_lists"] = (array("q", lengths), array("q", flat))
        lengths, flat = [], []
        extend = flat.extend
        for u in users.values():
            lengths += (len(u.clk), len(u.sav), len(u.rows))
            extend(u.clk)
            extend(u.sav)
            extend(u.rows)
        data["user_lists"] = (array("q", lengths), array("q", flat))
        return pickle.dumps((SNAPSHOT_VERSION, data), protocol=pickle.HIGHEST_PROTOCOL)

    def _catalogue_blob(self) -> bytes:
        """The listing catalogue, pickled once per change (it changes only with created listings)."""
        if self._catalogue is None:
            values = self._listings.values()
            self._catalogue = pickle.dumps(
                (
                    list(self._listings),
                    [v[0] for v in values],
                    [v[1] for v in values],
                    array("q", (_NONE if v[2] is None else v[2] for v in values)),
                ),
                protocol=pickle.HIGHEST_PROTOCOL,
            )
        return self._catalogue

    @classmethod
    def restore(cls, data: bytes) -> WindowState:
        loaded = pickle.loads(data)
        version = loaded[0] if isinstance(loaded, tuple) and len(loaded) == 2 else None
        if version != SNAPSHOT_VERSION:
            raise ValueError(
                f"window state snapshot version {version}, this code reads {SNAPSHOT_VERSION}: "
                "remove the checkpoint and replay the stream from its start"
            )
        d = loaded[1]
        state = cls.__new__(cls)
        state.lateness_us = d["lateness_us"]
        state._max_ts, state._swept = d["max_ts"], d["swept"]
        state._last_created, state._since_sweep = d["last_created"], d["since_sweep"]
        state._seen = dict(zip(zip(d["seen_ids"], d["seen_routes"], strict=True), d["seen_ts"], strict=True))
        ids, cats, brands, created = pickle.loads(d["listings"])
        state._listings = {
            k: (c, b, None if t == _NONE else t) for k, c, b, t in zip(ids, cats, brands, created, strict=True)
        }
        state._catalogue = d["listings"]
        state._sold = set(d["sold"])
        lists = _unpack(d["item_lists"])
        base = d["item_base"].tolist()
        state._items = {}
        for n, (key, last) in enumerate(zip(d["items"], d["item_last"], strict=True)):
            it = _Item()
            it.imp, it.clk, it.sav, it.rows, f0, f1, f2 = lists[7 * n : 7 * n + 7]
            it.first_ts = (f0, f1, f2)
            it.first_base = base[3 * n : 3 * n + 3]
            it.last = last
            state._items[key] = it
        for key, settled in zip(d["items"], d["item_settled"], strict=True):
            state._items[key].settled = settled
        ulists = _unpack(d["user_lists"])
        clk_items = d["user_clk_items"]
        state._users = {}
        at = 0
        for n, (key, last) in enumerate(zip(d["users"], d["user_last"], strict=True)):
            u = _User()
            u.clk, u.sav, u.rows = ulists[3 * n : 3 * n + 3]
            u.last = last
            u.clk_items = clk_items[at : at + len(u.clk)]
            at += len(u.clk)
            state._users[key] = u
        for key, settled in zip(d["users"], d["user_settled"], strict=True):
            state._users[key].settled = settled
        # The expiry heap is derived: one entry per entity with a settled row.
        state._expiry = []
        state._tombs = {ITEM_VIEW: [], USER_VIEW: []}
        for view, entities in ((ITEM_VIEW, state._items), (USER_VIEW, state._users)):
            for key, ent in entities.items():
                if ent.settled != _MIN_TS:
                    state._expiry.append((ent.settled + AVAILABLE_AFTER_US + TTL_US + 1, view, key))
                    ent.queued = True
        heapify(state._expiry)
        return state


_NONE = -(2**63)  # a missing created_at in the snapshot's integer column


def _unpack(packed: tuple[array, array]) -> list[list[int]]:
    lengths, values = packed
    flat = values.tolist()
    out, at = [], 0
    for n in lengths:
        out.append(flat[at : at + n])
        at += n
    return out


def _tombstones(view: str, tombs: list[tuple[str, int]], created: int) -> pa.Table:
    """Rows with every feature null: the entity expired (see the module docstring)."""
    schema = SCHEMAS[view]
    n = len(tombs)
    arrays = [
        pa.array([k for k, _ in tombs], pa.string()),
        pa.array([t for _, t in tombs], _TS),
        pa.array([created] * n, _TS),
    ]
    arrays += [pa.nulls(n, f.type) for f in list(schema)[3:]]
    return _by_time(pa.Table.from_arrays(arrays, schema=schema))


def _by_time(table: pa.Table) -> pa.Table:
    if table.num_rows < 2:
        return table
    return table.take(pa.compute.sort_indices(table, [("event_timestamp", "ascending")]))

"""The offline history of the real-time views, from the canonical event log: the rows the stream
would have written, one per entity per event time, with the same values (windows.py's semantics:
counts over ``(T - W, T]`` on event time, tested row for row in tests/test_stream_windows.py).

One DuckDB query per view (RANGE window frames over integer microseconds, a range join for the
session's categories), so a demo-sized log (~1M events) takes seconds. Written to
``<out_dir>/<view>/backfill-<start>-<end>.parquet``: a rerun replaces its own file, and the stream's
own appended files in the same directory are left alone (their rows agree where both have one).
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ranker.streaming.windows import (
    _CTR_PSEUDO_CLICKS,
    AVAILABLE_AFTER_US,
    TTL_US,
    CTR_SMOOTHING,
    FIRST_HOURS_US,
    ITEM_FEATURES,
    ITEM_VIEW,
    ITEM_WINDOWS_US,
    SCHEMAS,
    SESSION_US,
    USER_VIEW,
    VIEWS,
)

# The session's categories and brands, for the user rows with clicks in their window (a range join).
_SESSION_SQL = """
SELECT r.user_id, r.ts,
    array_to_string(list_sort(list_distinct(list(l.category))), ',') AS user_session_categories,
    array_to_string(list_sort(list_distinct(list(l.brand))), ',') AS user_session_brands
FROM rows_in r
JOIN clicks_in c ON c.user_id = r.user_id AND c.ts > r.ts - $session AND c.ts <= r.ts
LEFT JOIN lst_in l ON l.item_id = c.item_id
GROUP BY ALL
"""


def _stamp(ts: datetime | None, default: str) -> str:
    if ts is None:
        return default
    return pd.Timestamp(ts).tz_convert("UTC").strftime("%Y%m%dT%H%M%SZ")


def _us(ts: datetime | None, default: int) -> int:
    if ts is None:
        return default
    t = pd.Timestamp(ts)
    if t.tzinfo is None:
        raise ValueError(f"{ts!r} has no timezone; add +00:00 for UTC")
    return int(t.value // 1000)


def backfill_tables(
    events: pd.DataFrame, listings: pd.DataFrame, *, start=None, end=None, threads: int = 2
) -> dict[str, pa.Table]:
    """The rows of every real-time view whose event_timestamp is in ``[start, end)`` (all when None),
    windows computed over the whole log before ``end``. Columns and types: ``windows.SCHEMAS``."""

    start_us, end_us = _us(start, -(2**62)), _us(end, 2**62)
    ev = pa.table(
        {
            "event_id": _strings(events["event_id"]),
            "event_type": _strings(events["event_type"]),
            "ts": pa.Array.from_pandas(pd.to_datetime(events["timestamp"], utc=True).astype("datetime64[us, UTC]"))
            .cast(pa.timestamp("us"))
            .cast(pa.int64()),
            "user_id": _strings(events["user_id"]),
            "item_id": _strings(events["item_id"]),
        }
    )
    created = pd.to_datetime(listings["created_at"], utc=True).astype("datetime64[us, UTC]")
    lst = pa.table(
        {
            "item_id": _strings(listings["item_id"]),
            "category": _strings(listings["category"]),
            "brand": _strings(listings["brand"]),
            "created_us": pa.Array.from_pandas(created).cast(pa.timestamp("us")).cast(pa.int64()),
        }
    )
    # The canonical log has one row per event_id; a redelivered copy is counted once, as the stream does.
    keep = pc.less(ev.column("ts"), end_us)
    ev = ev.filter(keep)
    if len(pc.dictionary_encode(ev.column("event_id")).combine_chunks().dictionary) != ev.num_rows:
        first = ~pd.Series(ev.column("event_id").to_numpy(zero_copy_only=False)).duplicated().to_numpy()
        ev = ev.filter(pa.array(first))
    lst = lst.filter(pa.array(~pd.Series(lst.column("item_id").to_numpy(zero_copy_only=False)).duplicated().to_numpy()))
    kind = ev.column("event_type")
    is_ = {k: pc.equal(kind, k).to_numpy(zero_copy_only=False) for k in ("impression", "click", "save")}
    ts = ev.column("ts").to_numpy()

    # Listings: created_at per event's item, for the first-hours counts.
    item_codes, items = _codes(ev.column("item_id"))
    pos = pc.index_in(items, value_set=lst.column("item_id")).fill_null(-1).to_numpy(zero_copy_only=False)
    known_created = np.zeros(len(items), dtype=bool)
    created_of_item = np.zeros(len(items), dtype=np.int64)
    if lst.num_rows:
        col = lst.column("created_us")
        has = col.is_valid().to_numpy(zero_copy_only=False)
        values = col.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        at = pos.clip(0)
        known_created = (pos >= 0) & has[at]
        created_of_item = np.where(known_created, values[at], 0)
    created_ev = created_of_item[item_codes]
    in_first = known_created[item_codes] & (ts >= created_ev) & (ts < created_ev + FIRST_HOURS_US)

    w1, w24 = ITEM_WINDOWS_US["1h"], ITEM_WINDOWS_US["24h"]
    counts = {
        "item_impressions_1h": (is_["impression"], w1),
        "item_clicks_1h": (is_["click"], w1),
        "item_saves_1h": (is_["save"], w1),
        "item_impressions_24h": (is_["impression"], w24),
        "item_clicks_24h": (is_["click"], w24),
        "item_saves_24h": (is_["save"], w24),
        "item_first6h_impressions": (is_["impression"] & in_first, None),
        "item_first6h_clicks": (is_["click"] & in_first, None),
        "item_first6h_saves": (is_["save"] & in_first, None),
    }
    code_r, ts_r, out = _entity_windows(item_codes, ts, counts)
    clk, imp = out["item_clicks_24h"], out["item_impressions_24h"]
    out["item_ctr_24h_rt"] = ((clk + _CTR_PSEUDO_CLICKS) / (imp + CTR_SMOOTHING)).astype(np.float32)
    first_mask = ~known_created[code_r]
    last_ts = int(ts.max()) if len(ts) else _MIN
    stamp_r = ts_r + AVAILABLE_AFTER_US
    sel = (stamp_r >= start_us) & (stamp_r < end_us)
    item_cols = {"item_id": items.take(pa.array(code_r[sel])), "ts": stamp_r[sel]}
    for name, _ in ITEM_FEATURES:
        values = out[name][sel]
        if name.startswith("item_first6h_"):
            item_cols[name] = pa.array(values, pa.int64(), mask=first_mask[sel])
        else:
            item_cols[name] = values
    item_table = _with_tombstones(pa.table(item_cols), items, code_r, stamp_r, last_ts, start_us, end_us)

    user_codes, users = _codes(ev.column("user_id"))
    code_u, ts_u, uout = _entity_windows(
        user_codes, ts, {"user_clicks_30m": (is_["click"], SESSION_US), "user_saves_30m": (is_["save"], SESSION_US)}
    )
    stamp_u = ts_u + AVAILABLE_AFTER_US
    sel = (stamp_u >= start_us) & (stamp_u < end_us)
    user_table = pa.table(
        {
            "user_id": users.take(pa.array(code_u[sel])),
            "ts": stamp_u[sel],
            "user_clicks_30m": uout["user_clicks_30m"][sel],
            "user_saves_30m": uout["user_saves_30m"][sel],
        }
    )
    user_table = _with_session_strings(user_table, ev, is_["click"], lst, threads)
    user_table = _with_tombstones(user_table, users, code_u, stamp_u, last_ts, start_us, end_us)
    return {ITEM_VIEW: _as_view(item_table, ITEM_VIEW), USER_VIEW: _as_view(user_table, USER_VIEW)}


_MIN = -(2**62)


def _with_tombstones(table: pa.Table, keys: pa.Array, codes, stamps, last_ts: int, start_us: int, end_us: int):
    """Append the tombstones (every feature null) the stream writes: at ``stamp + TTL + 1 µs`` after
    each row not followed by another of its entity within that time, when that instant is in the log
    (<= its last event: the stream writes one once its watermark passes it) and in ``[start, end)``.
    ``codes``/``stamps`` are all the rows, sorted by entity then stamp."""
    due = stamps + TTL_US + 1
    nxt_same = np.zeros(len(codes), dtype=bool)
    nxt_same[:-1] = codes[1:] == codes[:-1]
    nxt = np.empty(len(codes), dtype=np.int64)
    nxt[:-1] = stamps[1:]
    gap = np.where(nxt_same, nxt > due, True) & (due <= last_ts) & (due >= start_us) & (due < end_us)
    if not gap.any():
        return table
    n = int(gap.sum())
    tomb = {table.column_names[0]: keys.take(pa.array(codes[gap])), "ts": due[gap]}
    for name in table.column_names[2:]:
        tomb[name] = pa.nulls(n, table.schema.field(name).type)
    return pa.concat_tables([table, pa.table(tomb, schema=table.schema)])


def _codes(column) -> tuple[np.ndarray, pa.Array]:
    """Integer codes of a string column and the distinct values they index."""
    enc = pc.dictionary_encode(column).combine_chunks() if isinstance(column, pa.ChunkedArray) else None
    enc = enc if enc is not None else pc.dictionary_encode(column)
    return enc.indices.to_numpy(zero_copy_only=False).astype(np.int64), enc.dictionary


def _entity_windows(
    codes: np.ndarray, ts: np.ndarray, counts: dict[str, tuple[np.ndarray, int | None]]
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Per (entity, distinct event time T) of the log: for each named mask, the masked events of the
    entity with ``T - W < ts <= T`` (``W`` None: all events up to T). Sorted by entity then T.

    The log is sorted by (entity, ts); an event's key is ``entity * (U + 1) + rank(ts)``, rank being
    the number of distinct event times <= ts (U of them), so "the entity's events with ts <= x" is
    one searchsorted over the keys, for any x, and a window is a difference of running counts."""
    order = np.lexsort((ts, codes))
    codes, ts = codes[order], ts[order]
    uniq = np.unique(ts)
    base = codes * (len(uniq) + 1)
    key = base + np.searchsorted(uniq, ts, side="right")
    last = np.ones(len(key), dtype=bool)
    last[:-1] = key[1:] != key[:-1]  # the last event of each (entity, T): the row
    rows = np.flatnonzero(last)
    hi = rows + 1  # events [0, hi) are those of earlier entities or of this one with ts <= T
    start = np.searchsorted(key, base[rows], side="left")  # this entity's first event
    out = {}
    lo_cache: dict[int, np.ndarray] = {}
    for name, (mask, width) in counts.items():
        running = np.concatenate(([0], np.cumsum(mask[order], dtype=np.int64)))
        if width is None:
            lo = start
        elif width in lo_cache:
            lo = lo_cache[width]
        else:
            rank = np.searchsorted(uniq, ts[rows] - width, side="right")  # distinct times <= T - W
            lo = lo_cache[width] = np.searchsorted(key, base[rows] + rank, side="right")
        out[name] = running[hi] - running[lo]
    return codes[rows], ts[rows], out


def _with_session_strings(user_table: pa.Table, ev: pa.Table, is_click: np.ndarray, lst: pa.Table, threads: int):
    import duckdb

    has = pc.greater(user_table.column("user_clicks_30m"), 0)
    clicks = ev.filter(pa.array(is_click)).select(["user_id", "item_id", "ts"])
    con = duckdb.connect()
    try:
        con.execute(f"SET threads = {int(threads)}")
        con.register("rows_in", user_table.filter(has).select(["user_id", "ts"]))
        con.register("clicks_in", clicks)
        con.register("lst_in", lst.select(["item_id", "category", "brand"]))
        strings = con.sql(_SESSION_SQL, params={"session": SESSION_US}).to_arrow_table()
    finally:
        con.close()
    index = pd.MultiIndex.from_arrays(
        [strings.column("user_id").to_numpy(zero_copy_only=False), strings.column("ts").to_numpy()]
    )
    where = index.get_indexer(
        pd.MultiIndex.from_arrays(
            [user_table.column("user_id").to_numpy(zero_copy_only=False), user_table.column("ts").to_numpy()]
        )
    )
    found = where >= 0
    cats = np.full(user_table.num_rows, "", dtype=object)
    brands = np.full(user_table.num_rows, "", dtype=object)
    cats[found] = strings.column("user_session_categories").to_numpy(zero_copy_only=False)[where[found]]
    brands[found] = strings.column("user_session_brands").to_numpy(zero_copy_only=False)[where[found]]
    return user_table.append_column("user_session_categories", pa.array(cats, pa.string())).append_column(
        "user_session_brands", pa.array(brands, pa.string())
    )


def _strings(series: pd.Series) -> pa.Array:
    """A string column as Arrow without a Python object per value when it is Arrow-backed already."""
    arr = pa.Array.from_pandas(series)
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = pa.Array.from_pandas(series.astype(object).where(series.notna(), None).map(_text))
    return arr.cast(pa.string())


def _text(value):
    return None if value is None else str(value)


def _as_view(table, view: str) -> pa.Table:
    if isinstance(table, pa.RecordBatchReader):
        table = table.read_all()
    schema = SCHEMAS[view]
    created = time.time_ns() // 1000
    n = table.num_rows
    arrays = [
        table.column(0).cast(pa.string()),
        table.column("ts").cast(pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        pa.array([created] * n, pa.timestamp("us", tz="UTC")),
    ]
    arrays += [table.column(f.name).cast(f.type) for f in list(schema)[3:]]
    return pa.Table.from_arrays(arrays, schema=schema)


def backfill(
    events: pd.DataFrame, listings: pd.DataFrame, out_dir: Path, *, start=None, end=None, threads: int = 2
) -> dict:
    """Write ``out_dir/<view>/backfill-<start>-<end>.parquet`` for every real-time view (atomic
    replace); returns per view its rows and path, and the seconds taken."""
    t0 = time.perf_counter()
    tables = backfill_tables(events, listings, start=start, end=end, threads=threads)
    name = f"backfill-{_stamp(start, 'first')}-{_stamp(end, 'last')}.parquet"
    summary: dict = {"views": {}}
    for view in VIEWS:
        folder = Path(out_dir) / view
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        tmp = folder / f".{name}.tmp"
        pq.write_table(tables[view], tmp)
        os.replace(tmp, path)
        summary["views"][view] = {"rows": tables[view].num_rows, "path": str(path)}
    summary["events"] = len(events)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary

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

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ranker.streaming.windows import (
    _CTR_PSEUDO_CLICKS,
    CTR_SMOOTHING,
    FIRST_HOURS_US,
    ITEM_VIEW,
    ITEM_WINDOWS_US,
    SCHEMAS,
    SESSION_US,
    USER_VIEW,
    VIEWS,
)

_ITEM_SQL = """
WITH ev AS (
    SELECT e.item_id, e.event_type, e.ts, l.created_us
    FROM ev_all e LEFT JOIN lst l USING (item_id)
),
w AS (
    SELECT item_id, ts,
        count(*) FILTER (WHERE event_type = 'impression') OVER h1 AS item_impressions_1h,
        count(*) FILTER (WHERE event_type = 'click') OVER h1 AS item_clicks_1h,
        count(*) FILTER (WHERE event_type = 'save') OVER h1 AS item_saves_1h,
        count(*) FILTER (WHERE event_type = 'impression') OVER h24 AS item_impressions_24h,
        count(*) FILTER (WHERE event_type = 'click') OVER h24 AS item_clicks_24h,
        count(*) FILTER (WHERE event_type = 'save') OVER h24 AS item_saves_24h,
        count(*) FILTER (WHERE event_type = 'impression' AND ts >= created_us AND ts < created_us + $first)
            OVER upto AS f_imp,
        count(*) FILTER (WHERE event_type = 'click' AND ts >= created_us AND ts < created_us + $first)
            OVER upto AS f_clk,
        count(*) FILTER (WHERE event_type = 'save' AND ts >= created_us AND ts < created_us + $first)
            OVER upto AS f_sav,
        created_us
    FROM ev
    WINDOW h1 AS (PARTITION BY item_id ORDER BY ts RANGE BETWEEN $w1 PRECEDING AND CURRENT ROW),
           h24 AS (PARTITION BY item_id ORDER BY ts RANGE BETWEEN $w24 PRECEDING AND CURRENT ROW),
           upto AS (PARTITION BY item_id ORDER BY ts RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
)
SELECT item_id, ts,
    item_impressions_1h, item_clicks_1h, item_saves_1h,
    item_impressions_24h, item_clicks_24h, item_saves_24h,
    ((item_clicks_24h + $pseudo) / (item_impressions_24h + $a))::FLOAT AS item_ctr_24h_rt,
    CASE WHEN created_us IS NULL THEN NULL ELSE f_imp END AS item_first6h_impressions,
    CASE WHEN created_us IS NULL THEN NULL ELSE f_clk END AS item_first6h_clicks,
    CASE WHEN created_us IS NULL THEN NULL ELSE f_sav END AS item_first6h_saves
FROM w
WHERE ts >= $start AND ts < $end
QUALIFY row_number() OVER (PARTITION BY item_id, ts) = 1
ORDER BY ts, item_id
"""

_USER_SQL = """
WITH w AS (
    SELECT user_id, ts,
        count(*) FILTER (WHERE event_type = 'click') OVER s AS user_clicks_30m,
        count(*) FILTER (WHERE event_type = 'save') OVER s AS user_saves_30m
    FROM ev_all
    WINDOW s AS (PARTITION BY user_id ORDER BY ts RANGE BETWEEN $ws PRECEDING AND CURRENT ROW)
    QUALIFY ts >= $start AND ts < $end AND row_number() OVER (PARTITION BY user_id, ts) = 1
),
clicks AS (
    SELECT e.user_id, e.ts, l.category, l.brand
    FROM ev_all e LEFT JOIN lst l USING (item_id)
    WHERE e.event_type = 'click' AND e.ts >= $start - $ws AND e.ts < $end
),
sess AS (
    SELECT w.user_id, w.ts,
        array_to_string(list_sort(list_distinct(list(c.category))), ',') AS cats,
        array_to_string(list_sort(list_distinct(list(c.brand))), ',') AS brands
    FROM w JOIN clicks c ON c.user_id = w.user_id AND c.ts > w.ts - $session AND c.ts <= w.ts
    GROUP BY ALL
)
SELECT w.user_id, w.ts, w.user_clicks_30m, w.user_saves_30m,
    coalesce(sess.cats, '') AS user_session_categories, coalesce(sess.brands, '') AS user_session_brands
FROM w LEFT JOIN sess USING (user_id, ts)
ORDER BY w.ts, w.user_id
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
    import duckdb

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
    con = duckdb.connect()
    try:
        con.execute(f"SET threads = {int(threads)}")
        con.register("ev_in", ev)
        con.register("lst_in", lst)
        # The canonical log has one row per event_id; a redelivered copy is counted once, as the stream does.
        con.execute(
            "CREATE TEMP TABLE ev_all AS SELECT * FROM ev_in WHERE ts < $end "
            "QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY ts) = 1",
            {"end": end_us},
        )
        con.execute(
            "CREATE TEMP TABLE lst AS SELECT * FROM lst_in QUALIFY row_number() OVER (PARTITION BY item_id) = 1"
        )
        params = {"start": start_us, "end": end_us}
        items = con.sql(
            _ITEM_SQL,
            params={
                **params,
                "w1": ITEM_WINDOWS_US["1h"] - 1,  # RANGE n PRECEDING includes ts - n: (T - W, T] on integers
                "w24": ITEM_WINDOWS_US["24h"] - 1,
                "first": FIRST_HOURS_US,
                "pseudo": _CTR_PSEUDO_CLICKS,
                "a": CTR_SMOOTHING,
            },
        ).to_arrow_table()
        users = con.sql(_USER_SQL, params={**params, "ws": SESSION_US - 1, "session": SESSION_US}).to_arrow_table()
    finally:
        con.close()
    return {ITEM_VIEW: _as_view(items, ITEM_VIEW), USER_VIEW: _as_view(users, USER_VIEW)}


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

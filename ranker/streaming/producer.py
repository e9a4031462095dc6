"""Producers of the event stream: rows of the canonical tables turned into v1 messages
(:mod:`ranker.streaming.messages`), routed to their partitions and published at a fixed rate.

* :func:`rows_from_file`: a parquet or CSV file of events (the EVENTS columns) or of listings (the
  LISTINGS columns: a ``created`` change at ``created_at``, a ``sold`` change at ``sold_at``), or of
  message rows (a ``type`` column), in event-time order;
* :func:`live_rows`: the simulator's marketplace replayed live: the home's simulated events and
  listing changes re-timed so that the first happens now and each keeps its distance to it divided
  by ``speedup`` (event time = wall time at the send, when ``speedup`` matches the rate);
* :class:`Producer`: publishes rows paced on a schedule (row ``i`` is due at ``t0 + i / rate``: no
  drift, a late send is caught up), ``records_per_message`` rows per message and partition.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from ranker.data.schema import EVENTS, LISTINGS, SchemaError, normalise
from ranker.streaming.broker import Broker
from ranker.streaming.errors import StreamError
from ranker.streaming.messages import encode, partitions_of_row

RECORDS_PER_MESSAGE = 200
TICK_S = 0.005


def _us(series: pd.Series) -> np.ndarray:
    return pd.to_datetime(series, utc=True).astype("datetime64[us, UTC]").astype("int64").to_numpy()


def event_rows(df: pd.DataFrame) -> list[dict]:
    """Message rows of an EVENTS table (timestamps in microseconds)."""
    df = normalise(EVENTS, df)
    ts = _us(df["timestamp"])
    query = df["query"].astype(object).where(df["query"].notna(), None).tolist()
    cols = {
        c: df[c].astype(str).tolist() for c in ("event_id", "event_type", "user_id", "item_id", "surface", "request_id")
    }
    pos = df["position"].astype(int).tolist()
    return [
        {
            "type": "event",
            "event_id": cols["event_id"][i],
            "event_type": cols["event_type"][i],
            "timestamp": int(ts[i]),
            "user_id": cols["user_id"][i],
            "item_id": cols["item_id"][i],
            "surface": cols["surface"][i],
            "request_id": cols["request_id"][i],
            "position": pos[i],
            "query": query[i],
        }
        for i in range(len(df))
    ]


def listing_rows(df: pd.DataFrame) -> list[dict]:
    """Message rows of a LISTINGS table: a ``created`` change per listing, a ``sold`` one when sold."""
    df = normalise(LISTINGS, df)
    created = _us(df["created_at"])
    sold_at = df["sold_at"]
    out = []
    attrs = ["seller_id", "title", "category", "brand", "size", "condition", "colour"]
    values = {c: df[c].astype(str).tolist() for c in attrs}
    price, original = df["price"].astype(float).tolist(), df["original_price"].astype(float).tolist()
    items = df["item_id"].astype(str).tolist()
    sold_rows = np.flatnonzero(sold_at.notna().to_numpy()).tolist()
    sold_us = {int(i): int(v) for i, v in zip(sold_rows, _us(sold_at.dropna()).tolist(), strict=True)}
    for i, item in enumerate(items):
        row = {"type": "listing", "change": "created", "item_id": item, "timestamp": int(created[i])}
        row.update({c: values[c][i] for c in attrs})
        row.update(price=price[i], original_price=original[i])
        out.append(row)
        if i in sold_us:
            out.append({"type": "listing", "change": "sold", "item_id": item, "timestamp": sold_us[i]})
    return out


def rows_from_file(path: Path) -> list[dict]:
    """Message rows of a parquet/CSV file of events, listings or message rows, by event time."""
    path = Path(path)
    if not path.exists():
        raise StreamError(f"{path} not found")
    try:
        df = pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    except Exception as exc:  # parquet and CSV readers raise several types
        raise StreamError(f"{path} is not a readable parquet or CSV file ({exc.__class__.__name__})") from None
    try:
        if "type" in df.columns:
            rows = [{k: v for k, v in r.items() if not _missing(v)} for r in df.to_dict("records")]
        elif "event_type" in df.columns:
            rows = event_rows(df)
        elif "created_at" in df.columns:
            rows = listing_rows(df)
        else:
            raise StreamError(
                f"{path}: neither events ({', '.join(EVENTS.names)}) nor listings ({', '.join(LISTINGS.names)})"
            )
    except SchemaError as exc:
        raise StreamError(f"{path}: {exc}") from None
    return sorted(rows, key=lambda r: _sort_ts(r.get("timestamp")))


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def _sort_ts(v) -> int:
    if isinstance(v, (int, np.integer)):
        return int(v)
    try:
        return int(pd.Timestamp(v).value // 1000)
    except (ValueError, TypeError):
        return 0


def live_rows(raw_dir: Path, *, now_us: int | None = None, speedup: float = 1.0) -> list[dict]:
    """The simulated marketplace's events and sales (``raw_dir``) re-timed to start now."""
    events_path, listings_path = Path(raw_dir) / EVENTS.file, Path(raw_dir) / LISTINGS.file
    if not events_path.exists():
        raise StreamError(f"{events_path} not found: run `ranker data simulate` first")
    rows = event_rows(pd.read_parquet(events_path))
    if listings_path.exists():
        rows += [r for r in listing_rows(pd.read_parquet(listings_path)) if r["change"] == "sold"]
    rows.sort(key=lambda r: r["timestamp"])
    if not rows:
        return rows
    now_us = now_us if now_us is not None else time.time_ns() // 1000
    first = rows[0]["timestamp"]
    for r in rows:
        r["timestamp"] = now_us + int((r["timestamp"] - first) / max(speedup, 1e-9))
    return rows


@dataclass
class PublishStats:
    rows: int = 0
    messages: int = 0
    seconds: float = 0.0
    behind_s: float = 0.0  # how late the last row was sent against its schedule
    per_partition: dict = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


class Producer:
    """Publishes message rows to a partitioned stream (see the module docstring)."""

    def __init__(
        self, broker: Broker, name: str, partitions: int, *, records_per_message: int = RECORDS_PER_MESSAGE
    ) -> None:
        self.broker, self.name, self.partitions = broker, name, partitions
        self.records_per_message = records_per_message

    def send(self, rows: Iterable[dict], stats: PublishStats | None = None) -> PublishStats:
        """Publish these rows now (grouped per partition, confirmed)."""
        stats = stats or PublishStats()
        groups: dict[int, list[dict]] = {}
        n = 0
        if self.partitions == 1:
            part = list(rows)
            n = len(part)
            if part:
                groups[0] = part
        else:
            for row in rows:
                n += 1
                for p in partitions_of_row(row, self.partitions):
                    groups.setdefault(p, []).append(row)
        for p, part in groups.items():
            bodies = [
                encode(part[lo : lo + self.records_per_message]) for lo in range(0, len(part), self.records_per_message)
            ]
            self.broker.publish(self.name, p, bodies)
            stats.messages += len(bodies)
            stats.per_partition[p] = stats.per_partition.get(p, 0) + len(part)
        stats.rows += n
        return stats

    def publish(
        self,
        rows: list[dict],
        *,
        rate: float | None = None,
        retime: bool = False,
        stop: Callable[[], bool] | None = None,
        progress: Callable[[PublishStats], None] | None = None,
    ) -> PublishStats:
        """Publish ``rows`` at ``rate`` rows/s (None: as fast as possible). ``retime`` sets each row's
        ``timestamp`` to its send time (live event time), in place."""
        stats = PublishStats()
        t0 = time.monotonic()
        i = 0
        last_progress = t0
        while i < len(rows):
            if stop is not None and stop():
                break
            now = time.monotonic()
            if rate:
                due = min(len(rows), int((now - t0) * rate) + 1)
                if due <= i:
                    time.sleep(min(TICK_S, (i - due + 1) / rate))  # pacing the schedule, not synchronising
                    continue
                due = min(due, i + max(1, int(rate * 0.05)))  # at most 50 ms of rows per send
            else:
                due = min(len(rows), i + self.records_per_message * max(1, self.partitions))
            chunk = rows[i:due]
            if retime:  # the rows are stamped in place: they are this call's to send
                stamp = time.time_ns() // 1000
                for r in chunk:
                    r["timestamp"] = stamp
            self.send(chunk, stats)
            if rate:
                stats.behind_s = max(0.0, time.monotonic() - (t0 + (due - 1) / rate))
            i = due
            if progress is not None and time.monotonic() - last_progress >= 1.0:
                last_progress = time.monotonic()
                stats.seconds = last_progress - t0
                progress(stats)
        stats.seconds = time.monotonic() - t0
        return stats

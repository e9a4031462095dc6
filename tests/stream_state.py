"""A test-only window state with WindowState's interface (ranker/streaming/windows.py): it counts
clicks per listing (all time, event ids de-duplicated per route) into ``item_stats_fv``'s
``item_clicks_1d`` and marks sold listings (a ``sold`` change or a purchase) in ``listing_fv``'s
``is_sold``; the transport tests need no real windows."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field

import pyarrow as pa


@dataclass
class Applied:
    updates: dict = field(default_factory=dict)
    rejected: dict = field(default_factory=dict)
    accepted: int = 0
    sold_items: list = field(default_factory=list)
    watermark_us: int = 0


class CountingState:
    def __init__(self, lateness_s: float = 0.0) -> None:
        self.lateness_s = lateness_s
        self.clicks: dict[str, int] = {}
        self.click_ts: dict[str, int] = {}
        self.seen: set[tuple[str, str]] = set()
        self.watermark_us = 0

    def seed_listings(self, table) -> None:
        self.seeded = table.num_rows

    def apply(self, records) -> Applied:
        out = Applied()
        touched: dict[str, None] = {}
        sold: dict[str, int] = {}
        duplicates = 0
        for r in records:
            key = (r.record_id, r.route)
            if key in self.seen:
                duplicates += 1
                continue
            self.seen.add(key)
            out.accepted += 1
            self.watermark_us = max(self.watermark_us, r.ts_us)
            if r.route != r.item_id:
                continue  # the user's copy: no user windows here
            if r.kind == "event" and r.event_type == "click":
                self.clicks[r.item_id] = self.clicks.get(r.item_id, 0) + 1
                self.click_ts[r.item_id] = max(self.click_ts.get(r.item_id, 0), r.ts_us)
                touched[r.item_id] = None
            if (r.kind == "listing" and r.change == "sold") or (r.kind == "event" and r.event_type == "purchase"):
                sold[r.item_id] = max(sold.get(r.item_id, 0), r.ts_us)
        if duplicates:
            out.rejected["duplicate"] = duplicates
        if touched:
            items = list(touched)
            out.updates["item_stats_fv"] = pa.table(
                {
                    "item_id": pa.array(items, pa.string()),
                    "event_timestamp": pa.array([self.click_ts[i] for i in items], pa.timestamp("us", tz="UTC")),
                    "item_clicks_1d": pa.array([self.clicks[i] for i in items], pa.int64()),
                }
            )
        if sold:
            out.updates["listing_fv"] = pa.table(
                {
                    "item_id": pa.array(list(sold), pa.string()),
                    "event_timestamp": pa.array(list(sold.values()), pa.timestamp("us", tz="UTC")),
                    "is_sold": pa.array([1] * len(sold), pa.int64()),
                }
            )
            out.sold_items = list(sold)
        out.watermark_us = self.watermark_us
        return out

    def snapshot(self) -> bytes:
        return pickle.dumps((self.lateness_s, self.clicks, self.click_ts, self.seen, self.watermark_us))

    @classmethod
    def restore(cls, raw: bytes) -> "CountingState":
        state = cls()
        state.lateness_s, state.clicks, state.click_ts, state.seen, state.watermark_us = pickle.loads(raw)
        return state

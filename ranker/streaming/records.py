"""The record a stream carries, once parsed and validated: the contract between the transport
(messages.py, processor.py) and the real-time feature state (windows.py, backfill.py).

A record is one row of a canonical table (``ranker/data/schema.py``): an engagement event, or a change
of a listing (created, sold, price). Timestamps are event time in integer microseconds since the epoch
(UTC); nothing downstream reads the arrival time except freshness metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

RecordKind = Literal["event", "listing"]
LISTING_CHANGES = ("created", "sold", "price")


@dataclass(frozen=True)
class StreamRecord:
    """One validated stream record.

    ``record_id`` is unique per row (the event's ``event_id``; for a listing change
    ``"<item_id>:<change>:<ts_us>"``). ``route`` is the entity whose windows this copy of the row feeds
    and whose hash chose the partition: listing changes are published once, routed by ``item_id``; an
    engagement event is published twice, once routed by its ``item_id`` (the listing's windows) and once
    by its ``user_id`` (the user's session windows), so every entity's state lives in exactly one
    partition. De-duplication keys on ``(record_id, route)``. ``attrs`` holds the remaining columns of
    the row (surface, position, query, request_id for events; the listing's attributes for
    ``created``; ``price`` for ``price``).
    """

    record_id: str
    kind: RecordKind
    ts_us: int
    item_id: str
    user_id: str | None = None
    event_type: str | None = None  # impression | click | save | add_to_bag | purchase (kind == "event")
    change: str | None = None  # created | sold | price (kind == "listing")
    route: str = ""
    attrs: dict = field(default_factory=dict)

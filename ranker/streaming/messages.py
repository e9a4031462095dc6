"""The stream's message format, version 1 (documented field by field in docs/guides/streaming.md).

A message is one JSON object ``{"v": 1, "records": [...]}`` holding rows of the canonical tables
(``ranker/data/schema.py``):

* an engagement event: ``{"type": "event", "event_id", "event_type", "timestamp", "user_id",
  "item_id", "surface", "request_id", "position", "query"}`` (the EVENTS columns; ``surface``,
  ``request_id``, ``position`` and ``query`` may be omitted);
* a listing change: ``{"type": "listing", "change": "created" | "sold" | "price", "item_id",
  "timestamp", ...}`` with the LISTINGS attributes for ``created`` (``seller_id``, ``title``,
  ``category``, ``brand``, ``size``, ``condition``, ``colour``, ``price``, ``original_price``) and
  ``price`` for ``price``.

``timestamp`` is event time: integer microseconds since the epoch (UTC), or an ISO-8601 string with
an offset. Routing (:func:`partition_of`): a listing change goes to the partition of its ``item_id``;
an event to the partitions of its ``item_id`` and of its ``user_id`` (one copy when they coincide).
The consumer of partition ``k`` turns each row into one :class:`StreamRecord` per route that hashes
to ``k``, so every entity's windows live in exactly one partition.

:func:`parse` never raises on input: a message that is not JSON is ``bad_json``, another version
``bad_version``, an envelope without a ``records`` list ``bad_json`` (each counts the whole message
once); a row of an unknown ``type``, ``event_type`` or
``change`` is ``unknown_type``, a row with a missing or mistyped field ``bad_record``, a row routed
to no route of this partition ``misrouted`` (each counts the row).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from datetime import datetime
from functools import lru_cache
from typing import Any, Iterable

import orjson

from ranker.data.schema import EVENT_TYPES
from ranker.streaming.records import LISTING_CHANGES, StreamRecord

VERSION = 1
REJECT_REASONS = ("bad_json", "bad_version", "bad_record", "unknown_type", "misrouted")
EVENT_ATTRS = {"surface": str, "request_id": str, "position": int, "query": str}
LISTING_ATTRS = {
    "seller_id": str,
    "title": str,
    "category": str,
    "brand": str,
    "size": str,
    "condition": str,
    "colour": str,
    "price": float,
    "original_price": float,
}
CREATED_REQUIRED = ("seller_id", "category", "price")
_EVENT_TYPES = frozenset(EVENT_TYPES)


class BadRecord(ValueError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@lru_cache(maxsize=1 << 16)
def _hash64(entity_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(entity_id.encode("utf-8"), digest_size=8).digest(), "little")


def partition_of(entity_id: str, partitions: int) -> int:
    """The partition of an entity: blake2b-64 of its id modulo the partition count (stable across
    processes, hosts and Python versions, unlike ``hash``)."""
    if partitions <= 1:
        return 0
    return _hash64(entity_id) % partitions


def timestamp_us(value: Any) -> int:
    """Event time in integer microseconds (UTC) from an int (microseconds) or an ISO-8601 string
    carrying an offset; BadRecord otherwise."""
    if isinstance(value, bool):
        raise BadRecord("bad_record")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise BadRecord("bad_record") from None
        if dt.tzinfo is None:
            raise BadRecord("bad_record")
        return int(dt.timestamp()) * 1_000_000 + dt.microsecond
    raise BadRecord("bad_record")


def _text(row: dict, name: str) -> str:
    value = row.get(name)
    if value.__class__ is not str or not value:
        raise BadRecord("bad_record")
    return value


def _attrs(row: dict, spec: dict) -> dict:
    out = {}
    for name, kind in spec.items():
        value = row.get(name)
        if value is None:
            continue
        cls = value.__class__
        if cls is not kind:
            if kind is float and cls is int:
                value = float(value)
            else:
                raise BadRecord("bad_record")  # bool is not an int here, an int is a float
        out[name] = value
    return out


_new = object.__new__


def _record(
    record_id: str,
    kind: str,
    ts_us: int,
    item_id: str,
    user_id: str | None,
    event_type: str | None,
    change: str | None,
    route: str,
    attrs: dict,
) -> StreamRecord:
    """A StreamRecord equal to ``StreamRecord(...)``, built without the frozen dataclass's
    ``__init__`` (which sets each field through ``object.__setattr__``: a third of the parse time)."""
    r = _new(StreamRecord)
    r.__dict__.update(
        record_id=record_id,
        kind=kind,
        ts_us=ts_us,
        item_id=item_id,
        user_id=user_id,
        event_type=event_type,
        change=change,
        route=route,
        attrs=attrs,
    )
    return r


def records_of(row: Any, partition: int | None = None, partitions: int = 1) -> list[StreamRecord]:
    """The StreamRecords of one row for ``partition`` (None: every route); BadRecord on bad input."""
    if row.__class__ is not dict:
        raise BadRecord("bad_record")
    kind = row.get("type")
    if kind == "event":
        event_type = row.get("event_type")
        if event_type.__class__ is not str:
            raise BadRecord("bad_record")
        if event_type not in _EVENT_TYPES:
            raise BadRecord("unknown_type")
        event_id, user_id, item_id = _text(row, "event_id"), _text(row, "user_id"), _text(row, "item_id")
        ts = row.get("timestamp")
        if ts.__class__ is not int:
            ts = timestamp_us(ts)
        attrs = _attrs(row, EVENT_ATTRS)
        if partition is None or partitions <= 1:
            routes = [item_id] if user_id == item_id else [item_id, user_id]
        else:
            routes = [r for r in dict.fromkeys((item_id, user_id)) if partition_of(r, partitions) == partition]
            if not routes:
                raise BadRecord("misrouted")
        return [_record(event_id, "event", ts, item_id, user_id, event_type, None, route, attrs) for route in routes]
    if kind == "listing":
        change = row.get("change")
        if change not in LISTING_CHANGES:
            raise BadRecord("unknown_type" if isinstance(change, str) else "bad_record")
        item_id = _text(row, "item_id")
        ts = timestamp_us(row.get("timestamp"))
        attrs = _attrs(row, LISTING_ATTRS)
        if change == "price" and "price" not in attrs:
            raise BadRecord("bad_record")
        if change == "created" and any(k not in attrs for k in CREATED_REQUIRED):
            raise BadRecord("bad_record")
        if partition is not None and partition_of(item_id, partitions) != partition:
            raise BadRecord("misrouted")
        return [_record(f"{item_id}:{change}:{ts}", "listing", ts, item_id, None, None, change, item_id, attrs)]
    raise BadRecord("unknown_type" if isinstance(kind, str) else "bad_record")


def parse(body: bytes | str, partition: int | None = None, partitions: int = 1) -> tuple[list[StreamRecord], Counter]:
    """(records, rejects by reason) of one message; never raises on bad input."""
    rejects: Counter = Counter()
    try:
        message = orjson.loads(body)
    except (orjson.JSONDecodeError, TypeError):
        rejects["bad_json"] += 1
        return [], rejects
    if not isinstance(message, dict):
        rejects["bad_json"] += 1
        return [], rejects
    if message.get("v") != VERSION or isinstance(message.get("v"), bool):
        rejects["bad_version"] += 1
        return [], rejects
    if not isinstance(message.get("records"), list):
        rejects["bad_json"] += 1
        return [], rejects
    records: list[StreamRecord] = []
    for row in message["records"]:
        try:
            records.extend(records_of(row, partition, partitions))
        except BadRecord as exc:
            rejects[exc.reason] += 1
    return records, rejects


def encode(rows: Iterable[dict]) -> bytes:
    """One v1 message of these rows."""
    return orjson.dumps({"v": VERSION, "records": list(rows)})


def partitions_of_row(row: dict, partitions: int) -> set[int]:
    """The partitions a row is published to (its routes' partitions)."""
    if row.get("type") == "event":
        return {partition_of(str(row["item_id"]), partitions), partition_of(str(row["user_id"]), partitions)}
    return {partition_of(str(row["item_id"]), partitions)}


def route_rows(rows: Iterable[dict], partitions: int) -> dict[int, list[dict]]:
    """Rows grouped by the partitions they are published to (an event may be in two groups)."""
    out: dict[int, list[dict]] = {}
    for row in rows:
        for p in partitions_of_row(row, partitions):
            out.setdefault(p, []).append(row)
    return out

"""The served-feature log: for a sample of requests, the exact float32 vector, score and returned
rank of every (request, item), with the request time, surface, user, query, model name and version,
A/B variant and degraded flag.

The scorer's hot path only decides the sample (:meth:`ServedLogWriter.sample`), builds one
:class:`ServedRecord` (references to arrays it already owns) and hands it to a bounded queue with
``put_nowait``; a full queue drops the record and counts it. Never blocking, never raising into a
request. A daemon thread does everything else: it turns records into Arrow tables and writes a
parquet file per (surface, feature service) whenever ``rotate_rows`` rows are buffered or
``rotate_seconds`` have passed since the first buffered record (and on close).

Files go to an object store with the registry's URI scheme (:func:`ranker.registry.store.store_from_uri`):
empty = ``{home}/data/served_log``, ``file:///abs/path`` or ``s3://bucket/prefix``. Layout::

    {surface}/date=YYYY-MM-DD/{HHMMSS}-{pid}-{seq}-{random}.parquet

one row per (request, item). The ordered feature names and the feature service are in the file's
schema metadata; the vector is a fixed-size list ``features`` (NaN when the answer was degraded).

``propensity`` is the logging policy's probability of showing that item at its returned rank (1 for a
deterministic ranking; ``1 / pool size`` for a slot the exploration policy drew,
:mod:`ranker.serving.exploration`; null when the item was not returned) and ``explored`` marks the
drawn slots: inverse-propensity evaluation of the log divides by it. Files written before the column
existed read as propensity 1 where a rank was returned (those scorers served deterministically).
"""

from __future__ import annotations

import io
import json
import logging
import os
import queue
import random
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ranker.config import Settings
from ranker.errors import RankerError
from ranker.registry.store import ObjectStore, store_from_uri

log = logging.getLogger("ranker.monitoring.servedlog")

SCHEMA_VERSION = "1"
META_COLUMNS = (
    "request_id",
    "request_ts",
    "logged_at",
    "surface",
    "user_id",
    "query",
    "model_name",
    "model_version",
    "variant",
    "feature_service",
    "degraded",
    "item_id",
    "position",
    "rank",
    "score",
    "propensity",
    "explored",
)


class ServedLogError(RankerError):
    """The served log cannot be read (no files in the window, unreadable file...)."""


@dataclass(frozen=True)
class ServedLogConfig:
    """Where and how much to log.

    Args:
        uri: empty = ``{home}/data/served_log``; ``file:///abs/path``; ``s3://bucket/prefix``.
        sample_rate: share of requests logged (0 = off, 1 = every request).
        queue_size: requests waiting for the writer; beyond it records are dropped (counted).
        rotate_rows: a file is written once this many (request, item) rows are buffered.
        rotate_seconds: ... or once the oldest buffered record is this old.
    """

    uri: str = ""
    sample_rate: float = 0.1
    queue_size: int = 2000
    rotate_rows: int = 50_000
    rotate_seconds: float = 60.0

    def __post_init__(self) -> None:
        checks = [
            (0.0 <= self.sample_rate <= 1.0, f"RANKER_SERVED_LOG_SAMPLE={self.sample_rate} must be within [0, 1]"),
            (self.queue_size >= 1, "RANKER_SERVED_LOG_QUEUE must be >= 1"),
            (self.rotate_rows >= 1, "RANKER_SERVED_LOG_ROTATE_ROWS must be >= 1"),
            (self.rotate_seconds > 0, "RANKER_SERVED_LOG_ROTATE_S must be > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise RankerError(message)


def log_store(settings: Settings, uri: str = "") -> ObjectStore:
    """The object store of the served log (the registry's URI scheme; default ``{home}/data/served_log``)."""
    uri = uri or os.environ.get("RANKER_SERVED_LOG_URI", "")
    try:
        return store_from_uri(uri=uri, default_root=settings.data_dir / "served_log")
    except RankerError as exc:
        raise RankerError(str(exc).replace("RANKER_REGISTRY_URI", "RANKER_SERVED_LOG_URI")) from None


@dataclass(frozen=True, eq=False)
class ServedRecord:
    """One served request. Arrays are owned by the record (the scorer does not touch them again)."""

    request_id: str
    request_ts: float  # unix seconds the features were computed for (context.timestamp or arrival)
    logged_at: float  # wall clock when served
    surface: str
    user_id: str
    query: str | None
    model_name: str
    model_version: str
    variant: str
    feature_service: str
    feature_names: tuple[str, ...]
    degraded: bool
    item_ids: list[str]  # the ranked candidates (sold listings removed), in candidate order
    scores: np.ndarray  # float64, one per item
    ranks: np.ndarray  # int32, 1-based returned rank; 0 = not returned (cut by the limit)
    matrix: np.ndarray | None  # float32 (items, features); None when degraded
    propensity: np.ndarray | None = None  # float64 per item: P(item at its rank); NaN = not returned; None = all 1
    explored: np.ndarray | None = None  # bool per item: its rank is a reserved slot the draw filled


_STOP = object()


class ServedLogWriter:
    """Bounded queue + background thread that writes rotated parquet files.

    ``on_event(kind, n)`` is called with ``("written", rows)``, ``("dropped_queue_full", 1)``,
    ``("dropped_write_error", rows)`` and ``("file", 1)`` so the scorer can count them in /metrics.
    """

    def __init__(
        self,
        store: ObjectStore,
        config: ServedLogConfig,
        *,
        on_event: Callable[[str, int], None] | None = None,
        seed: int | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.on_event = on_event or (lambda kind, n: None)
        self._queue: queue.Queue = queue.Queue(maxsize=config.queue_size)
        self._random = random.Random(seed).random
        self._buffer: dict[tuple[str, str, tuple[str, ...]], list[ServedRecord]] = {}
        self._buffered_rows = 0
        self._oldest = 0.0
        self._seq = 0
        self.dropped = 0
        self.written_rows = 0
        self.files: list[str] = []
        self._thread = threading.Thread(target=self._run, name="ranker-served-log", daemon=True)
        self._closed = False
        self._thread.start()

    # ------------------------------------------------------------------------------ hot path
    def sample(self) -> bool:
        """Log this request? (one random draw; no lock: ``random.Random.random`` is atomic in CPython)."""
        rate = self.config.sample_rate
        return rate >= 1.0 or (rate > 0.0 and self._random() < rate)

    def submit(self, record: ServedRecord) -> bool:
        """Queue ``record`` without waiting; False (and counted) when the queue is full or closed."""
        if self._closed:
            return False
        try:
            self._queue.put_nowait(record)
            return True
        except queue.Full:
            self.dropped += 1
            self.on_event("dropped_queue_full", 1)
            return False

    def queue_depth(self) -> int:
        return self._queue.qsize()

    # ------------------------------------------------------------------------------ control
    def flush(self, timeout: float = 30.0) -> bool:
        """Write everything queued so far now; True when done within ``timeout``."""
        done = threading.Event()
        try:
            self._queue.put(done, timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Write what is buffered and stop the thread (records submitted after this are refused)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            log.warning("served log queue still full at close; %d records not written", self._queue.qsize())
        self._thread.join(timeout)

    # ------------------------------------------------------------------------------ the thread
    def _run(self) -> None:
        while True:
            wait = None
            if self._buffered_rows:
                wait = max(0.0, self._oldest + self.config.rotate_seconds - time.monotonic())
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                self._write_all()
                continue
            if item is _STOP:
                self._write_all()
                return
            if isinstance(item, threading.Event):
                self._write_all()
                item.set()
                continue
            self._add(item)
            if self._buffered_rows >= self.config.rotate_rows:
                self._write_all()

    def _add(self, record: ServedRecord) -> None:
        key = (record.surface, record.feature_service, record.feature_names)
        if not self._buffered_rows:
            self._oldest = time.monotonic()
        self._buffer.setdefault(key, []).append(record)
        self._buffered_rows += len(record.item_ids)

    def _write_all(self) -> None:
        buffer, self._buffer = self._buffer, {}
        self._buffered_rows = 0
        for (surface, service, names), records in buffer.items():
            rows = sum(len(r.item_ids) for r in records)
            try:
                table = records_to_table(records, names, service)
                key = self._key(surface, records[0].logged_at)
                sink = io.BytesIO()
                pq.write_table(table, sink, compression="zstd")
                self.store.put(key, sink.getvalue())
            except Exception:  # noqa: BLE001 - a failed write loses these rows, never the scorer
                log.exception("served log: could not write %d rows of %s", rows, surface)
                self.on_event("dropped_write_error", rows)
                continue
            self.files.append(key)
            self.written_rows += rows
            self.on_event("written", rows)
            self.on_event("file", 1)

    def _key(self, surface: str, logged_at: float) -> str:
        self._seq += 1
        when = datetime.fromtimestamp(logged_at, tz=timezone.utc)
        return (
            f"{surface}/date={when:%Y-%m-%d}/{when:%H%M%S}-{os.getpid()}-{self._seq:06d}-{uuid.uuid4().hex[:8]}.parquet"
        )


def records_to_table(records: list[ServedRecord], feature_names: tuple[str, ...], service: str) -> pa.Table:
    """One Arrow table (a row per request and item) of records sharing a feature service."""
    k = len(feature_names)
    counts = np.array([len(r.item_ids) for r in records], dtype=np.int64)
    n = int(counts.sum())

    def repeat(values: list, typ: pa.DataType) -> pa.Array:
        return pa.array(values, typ).take(pa.array(np.repeat(np.arange(len(records)), counts)))

    matrices = [
        r.matrix.astype(np.float32, copy=False)
        if r.matrix is not None
        else np.full((len(r.item_ids), k), np.nan, np.float32)
        for r in records
    ]
    flat = np.concatenate([m.reshape(-1) for m in matrices]) if records else np.zeros(0, np.float32)
    ranks = np.concatenate([r.ranks for r in records]).astype(np.int32)
    propensity = (
        np.concatenate(
            [
                np.asarray(r.propensity, np.float64)
                if r.propensity is not None
                else np.where(np.asarray(r.ranks) > 0, 1.0, np.nan)
                for r in records
            ]
        )
        if records
        else np.zeros(0)
    )
    explored = (
        np.concatenate(
            [
                np.asarray(r.explored, bool) if r.explored is not None else np.zeros(len(r.item_ids), bool)
                for r in records
            ]
        )
        if records
        else np.zeros(0, bool)
    )
    ts_type = pa.timestamp("us", tz="UTC")
    columns = {
        "request_id": repeat([r.request_id for r in records], pa.string()),
        "request_ts": repeat([int(round(r.request_ts * 1e6)) for r in records], pa.int64()).cast(ts_type),
        "logged_at": repeat([int(round(r.logged_at * 1e6)) for r in records], pa.int64()).cast(ts_type),
        "surface": repeat([r.surface for r in records], pa.string()),
        "user_id": repeat([r.user_id for r in records], pa.string()),
        "query": repeat([r.query for r in records], pa.string()),
        "model_name": repeat([r.model_name for r in records], pa.string()),
        "model_version": repeat([r.model_version for r in records], pa.string()),
        "variant": repeat([r.variant for r in records], pa.string()),
        "feature_service": repeat([service] * len(records), pa.string()),
        "degraded": repeat([r.degraded for r in records], pa.bool_()),
        "item_id": pa.array([i for r in records for i in r.item_ids], pa.string()),
        "position": pa.array(np.concatenate([np.arange(1, c + 1) for c in counts]) if n else np.zeros(0), pa.int32()),
        "rank": pa.array(ranks, pa.int32(), mask=ranks == 0),
        "score": pa.array(np.concatenate([np.asarray(r.scores, np.float64) for r in records]) if n else np.zeros(0)),
        "propensity": pa.array(propensity, pa.float64(), mask=np.isnan(propensity)),
        "explored": pa.array(explored, pa.bool_()),
        "features": pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), k),
    }
    table = pa.table(columns)
    meta = {
        b"ranker.served_log.version": SCHEMA_VERSION.encode(),
        b"ranker.feature_service": service.encode(),
        b"ranker.feature_names": json.dumps(list(feature_names)).encode(),
    }
    return table.replace_schema_metadata(meta)


# ----------------------------------------------------------------------------------- reading


@dataclass(frozen=True, eq=False)
class ServedFrame:
    """The log rows of one feature service: meta columns and the float32 matrix, row-aligned."""

    feature_service: str
    feature_names: tuple[str, ...]
    rows: pd.DataFrame  # META_COLUMNS
    matrix: np.ndarray  # float32 (len(rows), len(feature_names))

    def features_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.matrix, columns=list(self.feature_names), index=self.rows.index)


def parse_time(value: str | None, *, option: str) -> pd.Timestamp | None:
    """``2026-11-25``, ``2026-11-25T10:00``, ISO with offset, or a relative ``24h`` / ``7d`` / ``30m`` ago."""
    if value is None or not str(value).strip():
        return None
    text = str(value).strip()
    units = {"m": "min", "h": "h", "d": "D"}
    if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
        return pd.Timestamp.now(tz="UTC") - pd.Timedelta(float(text[:-1]), unit=units[text[-1]])
    try:
        ts = pd.Timestamp(text)
    except ValueError:
        raise RankerError(
            f"{option}={value!r} is not a time; use e.g. 2026-11-25, 2026-11-25T10:00 or 24h (ago)"
        ) from None
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def read_served_log(
    store: ObjectStore,
    *,
    surface: str | None = None,
    since: pd.Timestamp | None = None,
    until: pd.Timestamp | None = None,
    include_degraded: bool = False,
) -> list[ServedFrame]:
    """The served rows logged in ``[since, until)`` (by ``logged_at``), one :class:`ServedFrame` per
    feature service. Raises :class:`ServedLogError` when nothing is there."""
    prefixes = [f"{surface}/"] if surface else [f"{s}/" for s in store.list_children("")]
    keys = []
    for prefix in prefixes:
        for key in store.list_keys(prefix):
            if not key.endswith(".parquet"):
                continue
            day = next((p[5:] for p in key.split("/") if p.startswith("date=")), None)
            if day is not None:
                d = pd.Timestamp(day, tz="UTC")
                if (since is not None and d + pd.Timedelta(days=1) <= since) or (until is not None and d >= until):
                    continue
            keys.append(key)
    groups: dict[tuple[str, tuple[str, ...]], list[pa.Table]] = {}
    for key in keys:
        obj = store.get(key)
        if obj is None:
            continue
        try:
            table = pq.read_table(io.BytesIO(obj.data))
        except Exception as exc:  # noqa: BLE001 - name the bad file
            raise ServedLogError(f"served log file {key} is unreadable: {exc}") from None
        meta = table.schema.metadata or {}
        names = tuple(json.loads(meta[b"ranker.feature_names"]))
        service = meta[b"ranker.feature_service"].decode()
        groups.setdefault((service, names), []).append(_with_propensity(table.replace_schema_metadata(None)))
    out = []
    for (service, names), tables in groups.items():
        table = pa.concat_tables(tables)
        rows = table.drop(["features"]).to_pandas()
        flat = table.column("features").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        matrix = flat.astype(np.float32, copy=False).reshape(len(rows), len(names))
        keep = np.ones(len(rows), dtype=bool)
        if since is not None:
            keep &= (rows.logged_at >= since).to_numpy()
        if until is not None:
            keep &= (rows.logged_at < until).to_numpy()
        if not include_degraded:
            keep &= ~rows.degraded.to_numpy(dtype=bool)
        if keep.any():
            out.append(ServedFrame(service, names, rows[keep].reset_index(drop=True), matrix[keep]))
    if not out:
        where = getattr(store, "describe", lambda: "?")()
        window = f" between {since or 'the start'} and {until or 'now'}" + (f" for {surface}" if surface else "")
        raise ServedLogError(
            f"no served-log rows in {where}{window}; is the scorer logging (RANKER_SERVED_LOG_SAMPLE > 0) "
            "and pointed at the same RANKER_SERVED_LOG_URI?"
        )
    return out


def _with_propensity(table: pa.Table) -> pa.Table:
    """A file written before the propensity columns: propensity 1 where a rank was returned (its
    scorer ranked deterministically), explored false; columns in the current order."""
    if "propensity" not in table.column_names:
        returned = pc.is_valid(table.column("rank")).to_numpy(zero_copy_only=False)
        table = table.append_column("propensity", pa.array(np.ones(len(table)), pa.float64(), mask=~returned))
    if "explored" not in table.column_names:
        table = table.append_column("explored", pa.array(np.zeros(len(table), bool), pa.bool_()))
    return table.select([*META_COLUMNS, "features"])


def served_log_location(settings: Settings, uri: str = "") -> str:
    uri = uri or os.environ.get("RANKER_SERVED_LOG_URI", "")
    return uri or str(Path(settings.data_dir / "served_log"))

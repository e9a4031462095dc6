"""Point-in-time training sets: one row per impression, grouped by request, labelled by what the
user did next, with features fetched from Feast by feature-service name.

Label of an impression = the best later event on the same (request, item) within the attribution
window: purchase 4 > add_to_bag 3 > save 2 > click 1 > shown only 0.

Features never come from the feature parquet directly: the entity rows (user, item, seller,
category, query, impression time) go through ``FeatureStore.get_historical_features`` with the
surface's feature service, so training sees exactly what serving will fetch. To bound memory the
entity rows are streamed through Feast in time-ordered chunks and the output is written
incrementally; DuckDB's memory is capped.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ranker.config import Settings
from ranker.data import schema
from ranker.errors import RankerError
from ranker.features.store import feature_store, in_feature_repo, service_spec

SERVICES = {"search": "search_ranker_v1", "recs": "recs_ranker_v1"}
META_COLUMNS = ("request_id", "event_timestamp", "user_id", "item_id", "position", "query", "label")


class DatasetError(RankerError):
    """A training set cannot be built as asked; the message says why and what to do."""


@dataclass(frozen=True)
class DatasetOptions:
    surface: str
    start: datetime | None = None  # impressions at or after (UTC); default: first event
    end: datetime | None = None  # impressions before (UTC); default: after the last event
    attribution_hours: float = 24.0
    feature_service: str | None = None  # default: SERVICES[surface]
    chunk_rows: int = 500_000
    duckdb_memory_limit: str = "3GB"

    def __post_init__(self) -> None:
        if self.surface not in SERVICES:
            raise DatasetError(f"unknown surface {self.surface!r}; use one of {', '.join(SERVICES)}")
        if self.attribution_hours <= 0:
            raise DatasetError("--attribution-hours must be > 0")
        if self.start and self.end and self.start >= self.end:
            raise DatasetError(f"empty window: --start {self.start} is not before --end {self.end}")

    @property
    def service(self) -> str:
        return self.feature_service or SERVICES[self.surface]


def dataset_dir(settings: Settings, surface: str) -> Path:
    return settings.artifacts_dir / "datasets" / surface


def labelled_impressions(settings: Settings, options: DatasetOptions) -> pd.DataFrame:
    """Impressions of the surface in the window with their graded label and entity keys."""
    import duckdb

    events = settings.raw_dir / schema.EVENTS.file
    listings = settings.raw_dir / schema.LISTINGS.file
    for path in (events, listings):
        if not path.exists():
            raise DatasetError(f"{path} not found: run `ranker data simulate` (or import) first")
    grade = " ".join(f"WHEN '{k}' THEN {v}" for k, v in schema.EVENT_GRADE.items())
    where = ["i.event_type = 'impression'", "i.surface = $surface"]
    params: dict = {"surface": options.surface, "window": timedelta(hours=options.attribution_hours)}
    if options.start:
        where.append("i.timestamp >= $start")
        params["start"] = options.start
    if options.end:
        where.append("i.timestamp < $end")
        params["end"] = options.end
    sql = f"""
        WITH i AS (SELECT * FROM read_parquet('{events}')),
        eng AS (
            SELECT request_id, item_id, timestamp, CASE event_type {grade} END AS grade
            FROM read_parquet('{events}') WHERE event_type <> 'impression')
        SELECT i.request_id, i.timestamp AS event_timestamp, i.user_id, i.item_id, i.position::INTEGER AS position,
               coalesce(i.query, '') AS query, l.seller_id, l.category,
               coalesce(max(eng.grade), 0)::INTEGER AS label
        FROM i
        LEFT JOIN read_parquet('{listings}') l ON l.item_id = i.item_id
        LEFT JOIN eng ON eng.request_id = i.request_id AND eng.item_id = i.item_id
                     AND eng.timestamp > i.timestamp AND eng.timestamp <= i.timestamp + $window
        WHERE {' AND '.join(where)}
        GROUP BY ALL
        ORDER BY i.timestamp, i.request_id, position
    """
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone='UTC'")
        df = con.execute(sql, params).df()
    finally:
        con.close()
    return df


def _entity_frame(chunk: pd.DataFrame, spec) -> pd.DataFrame:
    ent = pd.DataFrame(
        {
            "user_id": chunk.user_id.astype(object),
            "item_id": chunk.item_id.astype(object),
            "seller_id": chunk.seller_id.astype(object).where(chunk.seller_id.notna(), ""),
            "category": chunk.category.astype(object).where(chunk.category.notna(), ""),
            "event_timestamp": pd.to_datetime(chunk.event_timestamp, utc=True),
            "request_ts": (pd.to_datetime(chunk.event_timestamp, utc=True).astype("int64") // 10**9).astype("int64"),
            "_row": np.arange(len(chunk)),
        }
    )
    if "query" in spec.entity_keys:
        ent["query"] = chunk["query"].astype(object).values
    if "query_text" in spec.request_fields:
        ent["query_text"] = chunk["query"].astype(object).values
    return ent


def feature_matrix(frame: pd.DataFrame, spec) -> np.ndarray:
    """The model's float32 input matrix in the service's feature order, defaults applied."""
    cols = []
    for name in spec.features:
        values = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        default = spec.defaults[name]
        if not np.isnan(default):
            values = np.where(np.isnan(values), default, values)
        cols.append(values.astype(np.float32))
    return np.column_stack(cols) if cols else np.empty((len(frame), 0), dtype=np.float32)


def build_dataset(settings: Settings, options: DatasetOptions, *, progress=None) -> dict:
    """Build the training set for a surface; returns the manifest (also written beside it)."""
    import ibis

    started = time.perf_counter()
    store = feature_store(settings)
    spec = service_spec(store, options.service)
    rows = labelled_impressions(settings, options)
    if rows.empty:
        raise DatasetError(
            f"no {options.surface} impressions between {options.start or 'the first event'} and "
            f"{options.end or 'the last event'}: widen --start/--end or check the surface"
        )
    if int((rows.label > 0).sum()) == 0:
        raise DatasetError(
            f"no positive labels among {len(rows):,} {options.surface} impressions: nothing to learn; "
            "widen the window or --attribution-hours"
        )
    out_dir = dataset_dir(settings, options.surface)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "dataset.parquet"
    tmp = out_dir / ".dataset.parquet.tmp"
    # Chunk on request boundaries so a request is never split between two Feast calls.
    request_start = rows.groupby("request_id", sort=False).event_timestamp.transform("min")
    rows = rows.assign(_req_ts=request_start).sort_values(["_req_ts", "request_id", "position"], kind="stable")
    rows = rows.drop(columns="_req_ts").reset_index(drop=True)
    boundaries = _chunk_bounds(rows.request_id.to_numpy(), options.chunk_rows)
    digest = hashlib.sha256()
    writer = None
    ibis.get_backend().raw_sql(f"SET memory_limit='{options.duckdb_memory_limit}'")
    service = store.get_feature_service(options.service)
    try:
        for lo, hi in boundaries:
            chunk = rows.iloc[lo:hi].reset_index(drop=True)
            entity_df = _entity_frame(chunk, spec)
            with in_feature_repo(settings.feature_repo):
                feats = store.get_historical_features(entity_df=entity_df, features=service).to_df()
            feats = feats.sort_values("_row").reset_index(drop=True)
            if len(feats) != len(chunk):
                raise DatasetError(f"Feast returned {len(feats)} rows for {len(chunk)} entity rows")
            matrix = feature_matrix(feats, spec)
            out = pd.DataFrame(
                {
                    "request_id": chunk.request_id.astype(str).values,
                    "event_timestamp": pd.to_datetime(chunk.event_timestamp, utc=True).values,
                    "user_id": chunk.user_id.astype(str).values,
                    "item_id": chunk.item_id.astype(str).values,
                    "position": chunk.position.astype("int32").values,
                    "query": chunk["query"].astype(str).values,
                    "label": chunk.label.astype("int32").values,
                }
            )
            out["event_timestamp"] = pd.to_datetime(out.event_timestamp, utc=True)
            for j, name in enumerate(spec.features):
                out[name] = matrix[:, j]
            table = pa.Table.from_pandas(out, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
            writer.write_table(table)
            digest.update(pd.util.hash_pandas_object(out, index=False).to_numpy().tobytes())
            if progress is not None:
                progress.update(len(chunk))
    finally:
        if writer is not None:
            writer.close()
    tmp.replace(path)
    manifest = {
        "surface": options.surface,
        "feature_service": options.service,
        "features": list(spec.features),
        "feature_defaults": {k: (None if np.isnan(v) else v) for k, v in spec.defaults.items()},
        "label": "max grade of later events on the same (request, item) within the attribution window: "
        + ", ".join(f"{k}={v}" for k, v in sorted(schema.EVENT_GRADE.items(), key=lambda kv: kv[1])),
        "attribution_hours": options.attribution_hours,
        "window": {
            "start": rows.event_timestamp.min().isoformat(),
            "end": rows.event_timestamp.max().isoformat(),
            "requested": {k: (v.isoformat() if v else None) for k, v in (("start", options.start), ("end", options.end))},
        },
        "rows": int(len(rows)),
        "groups": int(rows.request_id.nunique()),
        "positives": int((rows.label > 0).sum()),
        "label_counts": {str(k): int(v) for k, v in rows.label.value_counts().sort_index().items()},
        "fingerprint": digest.hexdigest(),
        "path": str(path),
        "seconds": round(time.perf_counter() - started, 2),
        "options": {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(options).items()},
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def _chunk_bounds(request_ids: np.ndarray, chunk_rows: int) -> list[tuple[int, int]]:
    """Row ranges of about ``chunk_rows`` that end on a request boundary (ids are contiguous)."""
    n = len(request_ids)
    change = np.flatnonzero(request_ids[1:] != request_ids[:-1]) + 1
    starts = np.concatenate([[0], change])
    bounds, lo = [], 0
    while lo < n:
        target = lo + chunk_rows
        if target >= n:
            bounds.append((lo, n))
            break
        idx = np.searchsorted(starts, target)
        hi = int(starts[idx]) if idx < len(starts) else n
        hi = max(hi, lo + 1)
        bounds.append((lo, hi))
        lo = hi
    return bounds


def load_dataset(settings: Settings, surface: str) -> tuple[pd.DataFrame, dict]:
    """Read a built training set and its manifest; a clear error when it is missing."""
    d = dataset_dir(settings, surface)
    manifest_path = d / "manifest.json"
    if not manifest_path.exists():
        raise DatasetError(f"no training set for {surface!r} in {d}: run `ranker dataset build --surface {surface}` first")
    manifest = json.loads(manifest_path.read_text())
    return pd.read_parquet(d / "dataset.parquet"), manifest


def parse_utc(value: str | None, *, option: str) -> datetime | None:
    """Parse a date or date-time given on the command line as UTC."""
    if value in (None, ""):
        return None
    try:
        ts = pd.Timestamp(value)
    except ValueError:
        raise DatasetError(f"{option} {value!r} is not a date such as 2026-10-15 or 2026-10-15T12:00") from None
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.to_pydatetime().astimezone(timezone.utc)

"""Point-in-time training sets: one row per impression, grouped by request, labelled by what the
user did next, with features fetched from Feast by feature-service name.

Label of an impression = the best later event on the same (request, item) within the attribution
window: purchase 4 > add_to_bag 3 > save 2 > click 1 > shown only 0.

Features never come from the feature parquet directly: the entity rows (user, item, seller,
category, query, impression time) go through ``FeatureStore.get_historical_features`` with the
surface's feature service, so training sees exactly what serving will fetch. To bound memory the
entity rows are streamed through Feast in time-ordered chunks and the output is written
incrementally; DuckDB's memory is capped.

Speed (the time goes into Feast's DuckDB point-in-time join; everything else is kept out of its
way): the labelled impressions stay one Arrow table (no Python object per id); each chunk hands
Feast only the columns it needs, with Arrow-backed strings; Feast's on-demand views run with
pandas' Arrow-backed string dtype (each view converts the whole result to pandas); only the
feature columns of Feast's result are converted, straight from Arrow; and a background thread
writes the parquet and updates the fingerprint while the next chunk runs in DuckDB. The rows,
their order, the file schema and the fingerprint are those of the plain pandas algorithm
(``tests/test_dataset_speed_invariants.py`` checks it against that algorithm).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ranker.config import Settings
from ranker.data import schema
from ranker.errors import RankerError
from ranker.features.reference import LISTING_KEYS
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
    chunk_rows: int = 750_000
    duckdb_memory_limit: str = "2GB"
    # > 0: implicit feedback, each engagement event is a group with this many sampled negatives
    # (ranker.training.negatives) instead of the logged impressions; 0 = the logged impressions.
    negatives: int = 0
    negatives_seed: int = 0
    # share of the sampled negatives drawn in proportion to recent popularity (hard negatives), 0..1
    negatives_popular: float = 0.0

    def __post_init__(self) -> None:
        if self.surface not in SERVICES:
            raise DatasetError(f"unknown surface {self.surface!r}; use one of {', '.join(SERVICES)}")
        if self.attribution_hours <= 0:
            raise DatasetError("--attribution-hours must be > 0")
        if not 0.0 <= self.negatives_popular <= 1.0:
            raise DatasetError(f"--negatives-popular must be in [0, 1] (got {self.negatives_popular})")
        if self.start and self.end and self.start >= self.end:
            raise DatasetError(f"empty window: --start {self.start} is not before --end {self.end}")

    @property
    def service(self) -> str:
        return self.feature_service or SERVICES[self.surface]


def dataset_dir(settings: Settings, surface: str) -> Path:
    return settings.artifacts_dir / "datasets" / surface


def _label_query_parts(settings: Settings, options: DatasetOptions, *, alias: str = "") -> tuple:
    """What both label queries share: the raw files (checked), the grade CASE, the impression
    filter (columns prefixed with ``alias``) and its parameters."""
    events = settings.raw_dir / schema.EVENTS.file
    listings = settings.raw_dir / schema.LISTINGS.file
    for path in (events, listings):
        if not path.exists():
            raise DatasetError(f"{path} not found: run `ranker data simulate` (or import) first")
    grade = " ".join(f"WHEN '{k}' THEN {v}" for k, v in schema.EVENT_GRADE.items())
    where = [f"{alias}event_type = 'impression'", f"{alias}surface = $surface"]
    params: dict = {"surface": options.surface, "window": timedelta(hours=options.attribution_hours)}
    if options.start:
        where.append(f"{alias}timestamp >= $start")
        params["start"] = options.start
    if options.end:
        where.append(f"{alias}timestamp < $end")
        params["end"] = options.end
    return events, listings, grade, where, params


def labelled_impressions(settings: Settings, options: DatasetOptions) -> pd.DataFrame:
    """Impressions of the surface in the window with their graded label and entity keys.

    The readable reference definition of the labels; the build uses :func:`_labelled_table`, which
    tests prove gives the same rows."""
    import duckdb

    events, listings, grade, where, params = _label_query_parts(settings, options, alias="i.")
    sql = f"""
        WITH i AS (SELECT * FROM read_parquet('{events}')),
        eng AS (
            SELECT request_id, item_id, timestamp, CASE event_type {grade} END AS grade
            FROM read_parquet('{events}') WHERE event_type <> 'impression')
        SELECT i.request_id, i.timestamp AS event_timestamp, i.user_id, i.item_id, i.position::INTEGER AS position,
               coalesce(i.query, '') AS query, l.seller_id, l.category, l.brand,
               coalesce(max(eng.grade), 0)::INTEGER AS label
        FROM i
        LEFT JOIN read_parquet('{listings}') l ON l.item_id = i.item_id
        LEFT JOIN eng ON eng.request_id = i.request_id AND eng.item_id = i.item_id
                     AND eng.timestamp > i.timestamp AND eng.timestamp <= i.timestamp + $window
        WHERE {" AND ".join(where)}
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


def _labelled_table(settings: Settings, options: DatasetOptions) -> pa.Table:
    """The rows of :func:`labelled_impressions` as one Arrow table in training order: requests by
    their first impression time (then id), rows of a request by position. Arrow keeps millions of
    ids compact (no Python objects) until a chunk needs them.

    Cheaper than grouping every impression: only engaged impressions are aggregated (max grade),
    the others join that small result. :func:`labelled_impressions` groups by all its columns, so
    exact duplicate impressions collapse into one row; here they are sorted next to each other
    (every column is a sort key) and dropped, which gives the same rows."""
    if options.negatives:
        from ranker.training.negatives import sampled_groups

        return sampled_groups(settings, options)
    import duckdb

    events, listings, grade, where, params = _label_query_parts(settings, options)
    sql = f"""
        WITH i AS (
            SELECT request_id, timestamp, user_id, item_id, position, query
            FROM read_parquet('{events}') WHERE {" AND ".join(where)}),
        eng AS (
            SELECT request_id, item_id, timestamp, CASE event_type {grade} END AS grade
            FROM read_parquet('{events}') WHERE event_type <> 'impression'),
        best AS (
            SELECT i.request_id, i.item_id, i.timestamp, max(eng.grade) AS grade
            FROM i JOIN eng ON eng.request_id = i.request_id AND eng.item_id = i.item_id
                           AND eng.timestamp > i.timestamp AND eng.timestamp <= i.timestamp + $window
            GROUP BY i.request_id, i.item_id, i.timestamp),
        req AS (SELECT request_id, min(timestamp) AS _req_ts FROM i GROUP BY request_id)
        SELECT i.request_id, i.timestamp AS event_timestamp, i.user_id, i.item_id, i.position::INTEGER AS position,
               coalesce(i.query, '') AS query, l.seller_id, l.category, l.brand,
               coalesce(best.grade, 0)::INTEGER AS label
        FROM i
        LEFT JOIN read_parquet('{listings}') l ON l.item_id = i.item_id
        LEFT JOIN best ON best.request_id = i.request_id AND best.item_id = i.item_id AND best.timestamp = i.timestamp
        LEFT JOIN req ON req.request_id IS NOT DISTINCT FROM i.request_id
        ORDER BY req._req_ts, i.request_id, position, event_timestamp, i.item_id, i.user_id, query, l.seller_id,
                 l.category, l.brand, label
    """
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone='UTC'")
        table = con.sql(sql, params=params).to_arrow_table()
    finally:
        con.close()
    return _drop_adjacent_duplicates(table)


def _drop_adjacent_duplicates(table: pa.Table) -> pa.Table:
    """Drop rows equal (in every column, nulls equal) to the row before them."""
    n = table.num_rows
    if n < 2:
        return table
    same = np.ones(n - 1, dtype=bool)
    for column in table.columns:
        column = column.combine_chunks()
        a, b = column.slice(1), column.slice(0, n - 1)
        equal = pc.fill_null(pc.equal(a, b), False).to_numpy(zero_copy_only=False)
        both_null = pc.and_(pc.is_null(a), pc.is_null(b)).to_numpy(zero_copy_only=False)
        same &= equal | both_null
    if not same.any():
        return table
    return table.filter(pa.array(np.concatenate([[True], ~same])))


def _entity_frame(chunk: pa.Table, spec) -> pd.DataFrame:
    """Only what Feast needs: join keys, the impression time, request-time inputs and a row id.
    Strings stay Arrow-backed (no Python object per value); Feast hands them to DuckDB as is."""
    with pd.option_context("future.infer_string", True):
        return _entity_table(chunk, spec).to_pandas()


def _entity_table(chunk: pa.Table, spec) -> pa.Table:
    """The columns of :func:`_entity_frame` as Arrow (the spark engine writes them to parquet)."""
    ts = chunk.column("event_timestamp")
    if ts.type.tz is None:  # naive times are UTC
        ts = ts.cast(pa.timestamp(ts.type.unit, tz="UTC"))
    per_second = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[ts.type.unit]
    cols = {
        "user_id": chunk.column("user_id"),
        "item_id": chunk.column("item_id"),
        **{key: pc.fill_null(chunk.column(key), "") for key in LISTING_KEYS},
        "event_timestamp": ts,
        # unix seconds of the impression (floored), what the scorer receives as request_ts
        "request_ts": pa.array(ts.cast(pa.int64()).to_numpy() // per_second),
        "_row": pa.array(np.arange(chunk.num_rows, dtype=np.int64)),
    }
    if "query" in spec.entity_keys:
        cols["query"] = chunk.column("query")
    if "query_text" in spec.request_fields:
        cols["query_text"] = chunk.column("query")
    return pa.table(cols)


def _feature_values(column: pa.ChunkedArray) -> np.ndarray:
    """One feature as float64 with NaN for missing, exactly as ``pd.to_numeric`` of the column's
    pandas form gives it (Arrow converts ints and floats directly; anything else goes through
    pandas)."""
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        return column.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    return pd.to_numeric(column.to_pandas(), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _features_in_entity_order(table: pa.Table, spec, n: int) -> np.ndarray:
    """Feast's result (any row order) as the float32 matrix in entity-row order, defaults applied
    as in :func:`ranker.features.matrix.feature_matrix`; column-major, so each feature column is contiguous."""
    if table.num_rows != n:
        raise DatasetError(f"Feast returned {table.num_rows} rows for {n} entity rows")
    row = table.column("_row").to_numpy().astype(np.int64, copy=False)
    seen = np.zeros(n, dtype=bool)
    seen[row] = True
    if not seen.all():
        raise DatasetError(f"Feast returned {n} rows but not one per entity row")
    out = np.empty((n, len(spec.features)), dtype=np.float32, order="F")
    for j, name in enumerate(spec.features):
        values = _feature_values(table.column(name))
        default = spec.defaults[name]
        if not np.isnan(default):
            values = np.where(np.isnan(values), default, values)
        out[row, j] = values.astype(np.float32)
    return out


class _ChunkSink:
    """Writes finished chunks (parquet + fingerprint) on one background thread, in order, while
    the caller's thread runs the next Feast query: DuckDB, Arrow's parquet writer and the hashing
    all release the GIL. At most ``depth`` chunks wait, which bounds memory."""

    def __init__(self, write, depth: int = 1):
        import queue
        import threading

        self._write = write
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="dataset-sink", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is None:
                try:
                    self._write(*item)
                except BaseException as exc:  # re-raised in the caller's thread
                    self._error = exc

    def put(self, *item) -> None:
        self._raise()
        self._queue.put(item)

    def close(self, raise_error: bool = True) -> None:
        """Finish the queued chunks and stop (idempotent); re-raise the thread's error."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if raise_error:
            self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error


def _duckdb_settings(con, values: dict) -> dict:
    """Apply DuckDB settings on the connection; returns the previous values."""
    previous = {}
    for key, value in values.items():
        previous[key] = con.execute(f"SELECT current_setting('{key}')").fetchall()[0][0]
        con.execute(f"SET {key} = '{value}'")
    return previous


def build_dataset(
    settings: Settings,
    options: DatasetOptions,
    *,
    progress=None,
    timings: dict | None = None,
    engine: str | None = None,
) -> dict:
    """Build the training set for a surface; returns the manifest (also written beside it).

    ``engine`` runs the point-in-time join: ``duckdb`` (Feast's ``get_historical_features``) or
    ``spark`` (:mod:`ranker.features.spark_offline`, same rows); default ``settings.feature_engine``.
    ``timings``, when given, receives the seconds spent per stage (for benchmarks)."""
    engine = engine or settings.feature_engine
    if engine not in ("duckdb", "spark"):
        raise DatasetError(f"unknown engine {engine!r}; use duckdb or spark")
    import ibis

    started = time.perf_counter()
    clock = timings if timings is not None else {}

    def tick(stage: str, since: float) -> float:
        now = time.perf_counter()
        clock[stage] = clock.get(stage, 0.0) + now - since
        return now

    t = started
    # Label the impressions (DuckDB, which releases the GIL) while Feast is imported and the
    # service is read (Python): the first costs seconds, the second ~4 s on a cold process.
    from concurrent.futures import ThreadPoolExecutor

    labelling = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dataset-labels")
    pending = labelling.submit(_labelled_table, settings, options)
    labelling.shutdown(wait=False)
    store = feature_store(settings)
    spec = service_spec(store, options.service)
    t = tick("feast_setup", t)
    rows = pending.result()
    t = tick("labels", t)
    n = rows.num_rows
    if n == 0:
        raise DatasetError(
            f"no {options.surface} impressions between {options.start or 'the first event'} and "
            f"{options.end or 'the last event'}: widen --start/--end or check the surface"
        )
    labels = rows.column("label").to_numpy()
    if int((labels > 0).sum()) == 0:
        raise DatasetError(
            f"no positive labels among {n:,} {options.surface} impressions: nothing to learn; "
            "widen the window or --attribution-hours"
        )
    out_dir = dataset_dir(settings, options.surface).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "dataset.parquet"
    tmp = out_dir / ".dataset.parquet.tmp"
    # Rows are in training order (requests contiguous); chunk on request boundaries so a request
    # is never split between two Feast calls.
    request_ids = rows.column("request_id")
    starts = _request_starts(request_ids)
    boundaries = _bounds_from_starts(starts, n, options.chunk_rows)
    digest = hashlib.sha256()
    # The output schema (with its pandas metadata) is that of the plain pandas frame of a row.
    # Worked out here, on the caller's thread: pandas options are process-wide, and the loop
    # below switches pandas to Arrow-backed strings while Feast runs.
    with pd.option_context("future.infer_string", False):
        head = _output_frame(rows.slice(0, 1), spec, np.zeros((1, len(spec.features)), dtype=np.float32))
        state: dict = {"writer": None, "schema": pa.Table.from_pandas(head, preserve_index=False).schema}

    def finish_chunk(chunk: pa.Table, result: pa.Table) -> None:
        """Background thread: features in entity order, parquet, fingerprint (in chunk order).
        Arrow and numpy only (no pandas string inference), so pandas options do not matter."""
        t0 = time.perf_counter()
        matrix = _features_in_entity_order(result, spec, chunk.num_rows)
        del result
        table = _output_table(chunk, spec, matrix, state["schema"])
        t1 = tick("sink_features", t0)
        if state["writer"] is None:
            state["writer"] = pq.ParquetWriter(tmp, state["schema"], compression="zstd")
        state["writer"].write_table(table)
        t2 = tick("sink_write", t1)
        digest.update(_row_hashes(table).tobytes())
        tick("sink_fingerprint", t2)
        if progress is not None:
            progress.update(chunk.num_rows)

    con = ibis.get_backend().con
    previous = _duckdb_settings(con, {"memory_limit": options.duckdb_memory_limit})
    service = store.get_feature_service(options.service)
    sink = _ChunkSink(finish_chunk)
    t = tick("prepare", t)
    try:
        if engine == "spark":
            _spark_chunks(settings, store, options, spec, rows, boundaries, out_dir, sink, tick)
            t = time.perf_counter()
        else:
            with in_feature_repo(settings.feature_repo):
                for lo, hi in boundaries:
                    chunk = rows.slice(lo, hi - lo)
                    entity_df = _entity_frame(chunk, spec)
                    t = tick("entity_frame", t)
                    job = store.get_historical_features(entity_df=entity_df, features=service)
                    t = tick("feast_plan", t)
                    # Feast's on-demand views hand the whole result to pandas once per view: with
                    # Arrow-backed strings that costs no Python object per value.
                    with pd.option_context("future.infer_string", True):
                        result = job.to_arrow()
                    t = tick("feast_execute", t)
                    del entity_df, job
                    sink.put(chunk, result)
                    del result
                    t = tick("sink_wait", t)
        sink.close()
        t = tick("sink_wait", t)
    finally:
        sink.close(raise_error=False)
        if state["writer"] is not None:
            state["writer"].close()
        _duckdb_settings(con, previous)
    tmp.replace(path)
    ts = rows.column("event_timestamp").to_pandas()
    label_values, label_counts = np.unique(labels, return_counts=True)
    manifest: dict[str, Any] = {
        "surface": options.surface,
        "feature_service": options.service,
        "features": list(spec.features),
        "feature_defaults": {k: (None if np.isnan(v) else v) for k, v in spec.defaults.items()},
        "feature_monotone": dict(spec.monotone),
        "label": "max grade of later events on the same (request, item) within the attribution window: "
        + ", ".join(f"{k}={v}" for k, v in sorted(schema.EVENT_GRADE.items(), key=lambda kv: kv[1])),
        "attribution_hours": options.attribution_hours,
        "window": {
            "start": ts.min().isoformat(),
            "end": ts.max().isoformat(),
            "requested": {
                k: (v.isoformat() if v else None) for k, v in (("start", options.start), ("end", options.end))
            },
        },
        "rows": int(n),
        "groups": int(len(starts)),
        "positives": int((labels > 0).sum()),
        "label_counts": {str(k): int(v) for k, v in zip(label_values, label_counts, strict=False)},
        "fingerprint": digest.hexdigest(),
        "engine": engine,
        "path": str(path),
        "seconds": round(time.perf_counter() - started, 2),
        "options": {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(options).items()},
    }
    if options.negatives:
        from ranker.training.negatives import describe

        manifest["sampled_groups"] = describe(options)
        manifest["label"] = manifest["sampled_groups"]["label"]
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    tick("finish", t)
    return manifest


def _spark_chunks(
    settings: Settings,
    store,
    options: DatasetOptions,
    spec,
    rows: pa.Table,
    boundaries: list[tuple[int, int]],
    out_dir: Path,
    sink: _ChunkSink,
    tick,
) -> None:
    """The point-in-time join on Spark: the entity rows go to parquet, Spark joins and writes the
    features (ordered by row), the sink gets them back chunk by chunk with the on-demand features."""
    import shutil

    from ranker.features.spark_build import spark_session
    from ranker.features.spark_offline import historical_feature_chunks, pit_join_to_parquet

    t = time.perf_counter()
    # Spark skips files whose names start with a dot: a working folder of plain names.
    work = settings.data_dir / "tmp" / f"dataset-spark-{options.surface}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    entity_path, features_path = work / "entities.parquet", work / "features.parquet"
    pq.write_table(_entity_table(rows, spec), entity_path, coerce_timestamps="us", allow_truncated_timestamps=True)
    t = tick("entity_frame", t)
    try:
        with spark_session(settings, app_name="ranker-dataset") as spark:
            t = tick("spark_setup", t)
            odfvs = pit_join_to_parquet(spark, settings, store, options.service, entity_path, features_path)
        t = tick("spark_join", t)
        with in_feature_repo(settings.feature_repo):
            for (lo, hi), result in zip(
                boundaries, historical_feature_chunks(features_path, boundaries, odfvs), strict=True
            ):
                t = tick("feast_execute", t)
                sink.put(rows.slice(lo, hi - lo), result)
                del result
                t = tick("sink_wait", t)
        sink.close()
        tick("sink_wait", t)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _output_frame(chunk: pa.Table, spec, matrix: np.ndarray) -> pd.DataFrame:
    """The output rows of a chunk as pandas: metadata columns, then the features in service order.
    (Defines the output schema; the build writes the same rows through Arrow.)"""

    def text(name: str) -> np.ndarray:
        return chunk.column(name).to_numpy(zero_copy_only=False).astype(str).astype(object)

    out = pd.DataFrame(
        {
            "request_id": text("request_id"),
            "event_timestamp": pd.to_datetime(chunk.column("event_timestamp").to_pandas(), utc=True).values,
            "user_id": text("user_id"),
            "item_id": text("item_id"),
            "position": chunk.column("position").to_numpy().astype("int32"),
            "query": text("query"),
            "label": chunk.column("label").to_numpy().astype("int32"),
        }
    )
    out["event_timestamp"] = pd.to_datetime(out.event_timestamp, utc=True)
    for j, name in enumerate(spec.features):
        out[name] = matrix[:, j]
    return out


def _output_table(chunk: pa.Table, spec, matrix: np.ndarray, schema: pa.Schema) -> pa.Table:
    """The same rows as :func:`_output_frame`, straight from Arrow (no Python strings)."""
    arrays = [chunk.column(name) for name in META_COLUMNS]
    # the pandas frame turns a missing id into the string "None" (astype(str)); so does this
    arrays = [pc.fill_null(a, "None") if pa.types.is_string(a.type) and a.null_count else a for a in arrays]
    # from_pandas: NaN becomes null, as pa.Table.from_pandas writes it
    arrays += [pa.array(matrix[:, j], from_pandas=True) for j in range(len(spec.features))]
    arrays = [a.cast(field.type) if a.type != field.type else a for a, field in zip(arrays, schema, strict=False)]
    return pa.Table.from_arrays(arrays, schema=schema)


def _row_hashes(table: pa.Table) -> np.ndarray:
    """``pd.util.hash_pandas_object(frame, index=False)`` of the table's pandas form, computed
    without a Python string per row: text columns become Categoricals built by Arrow's
    dictionary encoding, whose hashes are by definition those of the strings (pandas itself
    categorises object columns before hashing them)."""
    columns = {}
    for name, column in zip(table.column_names, table.columns, strict=False):
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            encoded = pc.dictionary_encode(column.combine_chunks())
            categories = pd.Index(encoded.dictionary.to_numpy(zero_copy_only=False), dtype=object)
            codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False)
            columns[name] = pd.Categorical.from_codes(codes, categories=categories)
        else:
            columns[name] = column.to_pandas()
    frame = pd.DataFrame(columns, copy=False)  # Categorical and numeric columns: nothing to infer
    return pd.util.hash_pandas_object(frame, index=False).to_numpy()


def _request_starts(request_ids: pa.ChunkedArray) -> np.ndarray:
    """Row numbers where a new request begins (ids are contiguous)."""
    ids = request_ids.combine_chunks() if isinstance(request_ids, pa.ChunkedArray) else request_ids
    n = len(ids)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    a, b = ids.slice(1), ids.slice(0, n - 1)
    change = pc.fill_null(pc.not_equal(a, b), True).to_numpy(zero_copy_only=False)
    change &= ~pc.and_(pc.is_null(a), pc.is_null(b)).to_numpy(zero_copy_only=False)  # null ids: one group
    return np.concatenate([[0], np.flatnonzero(change) + 1]).astype(np.int64)


def _bounds_from_starts(starts: np.ndarray, n: int, chunk_rows: int) -> list[tuple[int, int]]:
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


def _chunk_bounds(request_ids: np.ndarray, chunk_rows: int) -> list[tuple[int, int]]:
    """Row ranges of about ``chunk_rows`` that end on a request boundary (ids are contiguous)."""
    n = len(request_ids)
    change = np.flatnonzero(request_ids[1:] != request_ids[:-1]) + 1
    starts = np.concatenate([[0], change])
    return _bounds_from_starts(starts, n, chunk_rows)


def load_dataset(settings: Settings, surface: str) -> tuple[pd.DataFrame, dict]:
    """Read a built training set and its manifest; a clear error when it is missing."""
    d = dataset_dir(settings, surface)
    manifest_path = d / "manifest.json"
    if not manifest_path.exists():
        raise DatasetError(
            f"no training set for {surface!r} in {d}: run `ranker dataset build --surface {surface}` first"
        )
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

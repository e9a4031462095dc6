"""Point-in-time training sets on Spark (``ranker dataset build --engine spark``, or
``RANKER_FEATURE_ENGINE=spark``): the rows of Feast's ``get_historical_features`` by feature-service
name, computed by an as-of join on Spark instead of Feast's DuckDB offline store.

Driven by the Feast registry: the service's feature views (their batch sources, field mappings,
join keys and join-key maps, TTLs, created-timestamp tie-break) and its on-demand views.

The as-of join, per feature view, is a join, not a window over the entity rows: each of the
view's snapshots (cut to ``[min(entity ts) - ttl, max(entity ts)]``) holds from its time until the
next snapshot of the same keys (``lead`` over the snapshots only, a small table), so an entity row
matches at most one snapshot: keys equal, ``snapshot ts <= row ts < next snapshot ts``, and Feast's
TTL predicate ``snapshot ts >= row ts - ttl`` — the latest snapshot with ``event_timestamp <= row
ts``, Feast's pick; otherwise the view's features are null (NaN in the training set). Of snapshots
with the same keys and time, the newest created holds (Feast's tie-break). A view whose columns
read are small (:func:`broadcast_limit`, from the parquet footers) is broadcast: the entity rows
are not shuffled for it at all. Larger views are sort-merge joined on their keys; they run first,
while the entity rows are narrow, and views on the same keys follow each other (the second reuses
the first's partitioning). Feast's Spark store instead joins every snapshot in the TTL and ranks
them with ``ROW_NUMBER``.

Spark writes the joined rows to parquet, each part sorted by entity row (no global sort: nothing
is collected on the driver, and no sampling job). :func:`historical_feature_chunks` then merges
the parts back in the build's chunks and runs the on-demand views with Feast's own
``transform_arrow``, as Feast's ``RetrievalJob`` does for the DuckDB store, so the downstream
steps (defaults, parquet, fingerprint) are shared.
``tests/test_scale_out_spark.py`` checks both engines give the same training set and fingerprint.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ranker.config import Settings

_TS, _NEXT, _CREATED = "__ranker_ts", "__ranker_next", "__ranker_created"
BROADCAST_CONF = "spark.ranker.pit.broadcastBytes"
ENTITY_TS = "event_timestamp"
ROW = "_row"


def _service_views(
    store: Any, service_name: str
) -> tuple[dict[str, tuple[Any, list[str]]], list[tuple[Any, list[str]]]]:
    """The feature views the service needs with the features read from each (its own features
    and the inputs of its on-demand views, as Feast's retrieval adds them), and its on-demand
    views with the features asked of each."""
    service = store.get_feature_service(service_name)
    views: dict[str, tuple[Any, list[str]]] = {}
    odfvs: list[tuple[Any, list[str]]] = []
    fv_names = {v.name for v in store.list_feature_views()}

    def need(view_name: str, features: list[str]) -> None:
        if view_name not in views:
            views[view_name] = (store.get_feature_view(view_name), [])
        wanted = views[view_name][1]
        wanted.extend(f for f in features if f not in wanted)

    for projection in service.feature_view_projections:
        if projection.name in fv_names:
            need(projection.name, [f.name for f in projection.features])
        else:
            odfv = store.get_on_demand_feature_view(projection.name)
            odfvs.append((odfv, [f.name for f in projection.features]))
            for source in odfv.source_feature_view_projections.values():
                need(source.name, [f.name for f in source.features])
    return views, odfvs


def _source_path(settings: Settings, source: Any) -> str:
    path = Path(source.path)
    return str(path if path.is_absolute() else (settings.feature_repo / path).resolve())


def _estimated_bytes(path: str, columns: list[str]) -> int:
    """Uncompressed bytes of ``columns`` in the parquet file or folder at ``path``, from the
    footers (no data read): roughly what a broadcast of those columns holds."""
    root = Path(path)
    parts = sorted(root.rglob("*.parquet")) if root.is_dir() else [root]
    wanted = set(columns)
    total = 0
    for part in parts:
        meta = pq.ParquetFile(part).metadata
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            total += sum(
                group.column(c).total_uncompressed_size
                for c in range(group.num_columns)
                if group.column(c).path_in_schema in wanted
            )
    return total


def broadcast_limit(spark: Any) -> int:
    """The largest feature table (uncompressed bytes of the columns read) joined by broadcast:
    ``spark.ranker.pit.broadcastBytes`` in the session's conf if set (0: never), else 256 MiB on
    ``local[N]`` (one JVM holds everything) and 64 MiB on a cluster (a copy per executor)."""
    conf = spark.conf.get(BROADCAST_CONF, None)
    if conf is not None:
        return int(conf)
    return (256 if spark.sparkContext.master.startswith("local") else 64) * 2**20


def pit_join_to_parquet(
    spark: Any, settings: Settings, store: Any, service_name: str, entity_path: Path, out_path: Path
) -> list[tuple[Any, list[str]]]:
    """Join the service's features onto the entity rows at ``entity_path`` (parquet with ``_row``,
    the join keys, ``event_timestamp`` in UTC and the request fields) and write them to the parquet
    folder ``out_path``, each part sorted by ``_row`` (:func:`historical_feature_chunks` merges the
    parts). Returns the on-demand views still to run."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    views, odfvs = _service_views(store, service_name)
    entities = spark.read.parquet(str(entity_path))
    entities = entities.withColumn(ENTITY_TS, F.col(ENTITY_TS).cast("timestamp"))
    parallelism = spark.sparkContext.defaultParallelism
    if entities.rdd.getNumPartitions() < parallelism:  # one big row group: one task would do it all
        entities = entities.repartition(parallelism)
    # Bounds as microseconds: no Python datetime (and its local time zone) in between.
    bounds = entities.agg(
        F.min(F.unix_micros(ENTITY_TS)).alias("lo"), F.max(F.unix_micros(ENTITY_TS)).alias("hi")
    ).first()
    lo, hi = int(bounds["lo"]), int(bounds["hi"])
    entity_types = dict(entities.dtypes)
    limit = broadcast_limit(spark)
    plans = []
    for view, wanted in views.values():
        source = view.batch_source
        if source is None or not hasattr(source, "path"):
            raise ValueError(f"feature view {view.name!r} has no file batch source the spark engine can read")
        path = _source_path(settings, source)
        renamed = {new: old for old, new in source.field_mapping.items()}
        join_key_map = view.projection.join_key_map or {e.name: e.name for e in view.entity_columns}
        read = [renamed.get(c, c) for c in [*join_key_map, source.timestamp_field, *wanted]]
        small = limit > 0 and _estimated_bytes(path, read) <= limit
        plans.append((not small, tuple(sorted(set(join_key_map.values()))), view, wanted, path, join_key_map))
    # Shuffled joins first, while the entity rows are narrow, those on the same keys one after the
    # other (the second reuses the first's partitioning); broadcast joins (no shuffle) last.
    plans.sort(key=lambda plan: (not plan[0], plan[1]))
    acc = entities
    features: list[str] = []
    for n, (shuffled, _, view, wanted, path, join_key_map) in enumerate(plans):
        source = view.batch_source
        table = spark.read.parquet(path)
        for old, new in source.field_mapping.items():
            if old in table.columns:
                table = table.withColumnRenamed(old, new)
        ts_field, created = source.timestamp_field, source.created_timestamp_column
        # A naive parquet timestamp (read as TIMESTAMP_NTZ) is UTC, as Feast reads it.
        table = table.withColumns({c: F.col(c).cast("timestamp") for c in (ts_field, created) if c})
        ttl = view.ttl if view.ttl and view.ttl > timedelta(0) else None
        ttl_micros = int(ttl / timedelta(microseconds=1)) if ttl is not None else 0
        keep = F.unix_micros(ts_field) <= F.lit(hi)
        if ttl is not None:
            keep &= F.unix_micros(ts_field) >= F.lit(lo - ttl_micros)
        for key in join_key_map:
            keep &= F.col(key).isNotNull()
        # Private names on the snapshot side: a feature may share its name with an entity column.
        key_cols = {e: f"__ranker_k{n}_{i}" for i, e in enumerate(dict.fromkeys(join_key_map.values()))}
        new = [f for f in wanted if f not in features]
        feature_cols = {f: f"__ranker_f{n}_{i}" for i, f in enumerate(new)}
        snapshots = table.filter(keep).select(
            *[F.col(k).cast(entity_types[e]).alias(key_cols[e]) for k, e in join_key_map.items()],
            F.col(ts_field).alias(_TS),
            *([F.col(created).alias(_CREATED)] if created else []),
            *[F.col(f).alias(c) for f, c in feature_cols.items()],
        )
        # Each snapshot holds from its time until the key's next snapshot (Feast picks the latest
        # with event_timestamp <= row ts). Of snapshots with the same keys and time, the newest
        # created holds (Feast's tie-break): it is the last of its time in this order.
        order = [F.col(_TS), *([F.col(_CREATED)] if created else [])]
        following = Window.partitionBy(*key_cols.values()).orderBy(*order)
        snapshots = snapshots.withColumn(_NEXT, F.lead(_TS).over(following))
        snapshots = snapshots.filter(F.col(_NEXT).isNull() | (F.col(_NEXT) > F.col(_TS))).drop(
            *([_CREATED] if created else [])
        )
        on = [F.col(e) == F.col(c) for e, c in key_cols.items()]
        on += [F.col(ENTITY_TS) >= F.col(_TS), F.col(_NEXT).isNull() | (F.col(ENTITY_TS) < F.col(_NEXT))]
        if ttl is not None:  # Feast's TTL predicate: snapshot ts >= row ts - ttl
            on.append(F.unix_micros(F.col(_TS)) >= F.unix_micros(F.col(ENTITY_TS)) - F.lit(ttl_micros))
        right = snapshots if shuffled else F.broadcast(snapshots)
        cond = on[0]
        for term in on[1:]:
            cond &= term
        acc = acc.join(right, cond, "left").select(*acc.columns, *[F.col(c).alias(f) for f, c in feature_cols.items()])
        features.extend(new)
    shutil.rmtree(out_path, ignore_errors=True)
    acc.sortWithinPartitions(ROW).write.option("compression", "zstd").parquet(str(out_path))
    return odfvs


class _SortedPart:
    """One part file of the join, read in batches; its rows are sorted by ``_row``."""

    def __init__(self, path: Path, batch_size: int) -> None:
        self._batches = pq.ParquetFile(path).iter_batches(batch_size=batch_size)
        self._pending: list[pa.RecordBatch] = []
        self._last = -1  # the largest _row read so far
        self._done = False

    def take_below(self, end: int) -> pa.Table | None:
        """The part's rows with ``_row < end`` not taken yet."""
        while not self._done and self._last < end - 1:
            batch = next(self._batches, None)
            if batch is None:
                self._done = True
            elif batch.num_rows:
                self._pending.append(batch)
                self._last = batch.column(ROW)[-1].as_py()
        if not self._pending:
            return None
        table = pa.Table.from_batches(self._pending)
        rows = table.column(ROW).to_numpy()
        cut = int(np.searchsorted(rows, end))
        rest = table.slice(cut)
        self._pending = rest.to_batches() if rest.num_rows else []
        return table.slice(0, cut) if cut else None


def historical_feature_chunks(
    out_path: Path, bounds: list[tuple[int, int]], odfvs: list[tuple[Any, list[str]]]
) -> Iterator[pa.Table]:
    """Read Spark's joined rows back in the build's chunks (``_row`` made chunk-relative) with the
    on-demand features appended, one chunk in memory at a time: each part is sorted by ``_row``,
    so a chunk is the parts' next rows below its end, merged."""
    paths = sorted(out_path.glob("part-*.parquet"))
    # Every part holds a share of each chunk (hash-partitioned by a join key): smaller batches
    # when there are many parts, so the rows read ahead stay about one chunk.
    parts = [_SortedPart(path, max(1_024, 262_144 // max(len(paths), 1))) for path in paths]
    for lo, hi in bounds:
        pieces = [piece for piece in (part.take_below(hi) for part in parts) if piece is not None]
        if not pieces:
            raise ValueError(f"the spark join wrote no rows for the chunk {lo}..{hi - 1}")
        chunk = pa.concat_tables(pieces)
        if len(pieces) > 1:
            chunk = chunk.take(pc.sort_indices(chunk.column(ROW)))
        chunk = chunk.combine_chunks()
        rows = chunk.column(ROW).to_numpy()
        if len(rows) != hi - lo or rows[0] != lo or rows[-1] != hi - 1 or (np.diff(rows) != 1).any():
            raise ValueError(
                f"the spark join's rows {rows[0]}..{rows[-1]} ({len(rows)}) do not match the chunk {lo}..{hi - 1}"
            )
        chunk = chunk.set_column(chunk.schema.get_field_index(ROW), ROW, pa.array(rows - lo))
        with pd.option_context("future.infer_string", True):
            for odfv, wanted in odfvs:
                transformed = odfv.transform_arrow(chunk, False)
                for name in wanted:
                    if name not in chunk.column_names:
                        chunk = chunk.append_column(name, transformed[name])
        yield chunk

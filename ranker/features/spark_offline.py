"""Point-in-time training sets on Spark (``ranker dataset build --engine spark``, or
``RANKER_FEATURE_ENGINE=spark``): the rows of Feast's ``get_historical_features`` by feature-service
name, computed by an as-of join on Spark instead of Feast's DuckDB offline store.

Driven by the Feast registry: the service's feature views (their batch sources, field mappings,
join keys and join-key maps, TTLs, created-timestamp tie-break) and its on-demand views.

The as-of join, per feature view, is one shuffle by the join keys and no join: the entity rows
and the view's snapshots (cut to ``[min(entity ts) - ttl, max(entity ts)]``) are unioned, sorted
per key by time (a snapshot before an entity row of the same time), and each entity row takes
``last(snapshot, ignorenulls)`` over the rows before it: the latest snapshot with
``event_timestamp <= row ts``, Feast's pick. It is kept only if ``snapshot ts >= row ts - ttl``
(Feast's TTL predicate); otherwise, or without a snapshot, the view's features are null (NaN in
the training set). Feast's Spark store instead joins every snapshot in the TTL and ranks them
with ``ROW_NUMBER``. The entity rows carry the features of the previous views through the next
union, so the views are chained without joining on a row id.

Spark writes the joined rows, ordered by entity row, to parquet (nothing is collected on the
driver). :func:`historical_feature_chunks` then reads that folder back in the build's chunks and
runs the on-demand views with Feast's own ``transform_arrow``, as Feast's ``RetrievalJob`` does
for the DuckDB store, so the downstream steps (defaults, parquet, fingerprint) are shared.
``tests/test_scale_out_spark.py`` checks both engines give the same training set and fingerprint.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ranker.config import Settings

_KIND, _TS, _SNAP, _FOUND = "__ranker_kind", "__ranker_ts", "__ranker_snap", "__ranker_found"
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


def pit_join_to_parquet(
    spark: Any, settings: Settings, store: Any, service_name: str, entity_path: Path, out_path: Path
) -> list[tuple[Any, list[str]]]:
    """Join the service's features onto the entity rows at ``entity_path`` (parquet with ``_row``,
    the join keys, ``event_timestamp`` in UTC and the request fields) and write them, ordered by
    ``_row``, to the parquet folder ``out_path``. Returns the on-demand views still to run."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    views, odfvs = _service_views(store, service_name)
    entities = spark.read.parquet(str(entity_path))
    entities = entities.withColumn(ENTITY_TS, F.col(ENTITY_TS).cast("timestamp"))
    # Bounds as microseconds: no Python datetime (and its local time zone) in between.
    bounds = entities.agg(
        F.min(F.unix_micros(ENTITY_TS)).alias("lo"), F.max(F.unix_micros(ENTITY_TS)).alias("hi")
    ).first()
    lo, hi = int(bounds["lo"]), int(bounds["hi"])
    acc = entities.withColumn(_KIND, F.lit(1)).withColumn(_TS, F.col(ENTITY_TS))
    features: list[str] = []
    for view, wanted in views.values():
        source = view.batch_source
        if source is None or not hasattr(source, "path"):
            raise ValueError(f"feature view {view.name!r} has no file batch source the spark engine can read")
        table = spark.read.parquet(_source_path(settings, source))
        for old, new in source.field_mapping.items():
            if old in table.columns:
                table = table.withColumnRenamed(old, new)
        ts_field, created = source.timestamp_field, source.created_timestamp_column
        # A naive parquet timestamp (read as TIMESTAMP_NTZ) is UTC, as Feast reads it.
        table = table.withColumns({c: F.col(c).cast("timestamp") for c in (ts_field, created) if c})
        join_key_map = view.projection.join_key_map or {e.name: e.name for e in view.entity_columns}
        ttl = view.ttl if view.ttl and view.ttl > timedelta(0) else None
        ttl_micros = int(ttl / timedelta(microseconds=1)) if ttl is not None else 0
        keep = F.unix_micros(ts_field) <= F.lit(hi)
        if ttl is not None:
            keep &= F.unix_micros(ts_field) >= F.lit(lo - ttl_micros)
        for key in join_key_map:
            keep &= F.col(key).isNotNull()
        table = table.filter(keep)
        if created:  # Feast's tie-break between rows of the same keys and timestamp: newest created
            newest = Window.partitionBy(*join_key_map, ts_field).orderBy(F.col(created).desc())
            table = table.withColumn("__rn", F.row_number().over(newest)).filter("__rn = 1").drop("__rn")
        entity_types = dict(entities.dtypes)
        snapshots = table.select(
            *[F.col(k).cast(entity_types[e]).alias(e) for k, e in join_key_map.items()],
            F.col(ts_field).alias(_TS),
            F.struct(*[F.col(f) for f in wanted]).alias(_SNAP),
            F.lit(0).alias(_KIND),
        )
        keys = list(dict.fromkeys(join_key_map.values()))
        before = Window.partitionBy(*keys).orderBy(_TS, _KIND).rowsBetween(Window.unboundedPreceding, Window.currentRow)
        found = F.last(
            F.when(F.col(_KIND) == 0, F.struct(F.col(_TS).alias("ts"), F.col(_SNAP).alias("snap"))), ignorenulls=True
        ).over(before)
        joined = (
            acc.unionByName(snapshots, allowMissingColumns=True).withColumn(_FOUND, found).filter(F.col(_KIND) == 1)
        )
        fresh = F.col(f"{_FOUND}.ts").isNotNull()
        if ttl is not None:
            fresh &= F.unix_micros(F.col(f"{_FOUND}.ts")) >= F.unix_micros(F.col(ENTITY_TS)) - F.lit(ttl_micros)
        acc = joined.select(
            *[c for c in acc.columns],
            *[F.when(fresh, F.col(f"{_FOUND}.snap.{f}")).alias(f) for f in wanted if f not in features],
        ).drop(_SNAP, _FOUND)
        features.extend(f for f in wanted if f not in features)
    out = acc.drop(_KIND, _TS).orderBy(ROW)
    shutil.rmtree(out_path, ignore_errors=True)
    out.write.option("compression", "zstd").parquet(str(out_path))
    return odfvs


def historical_feature_chunks(
    out_path: Path, bounds: list[tuple[int, int]], odfvs: list[tuple[Any, list[str]]]
) -> Iterator[pa.Table]:
    """Read Spark's joined rows back in the build's chunks (``_row`` made chunk-relative) with the
    on-demand features appended, one chunk in memory at a time."""
    parts = sorted(out_path.glob("part-*.parquet"))
    batches = (b for part in parts for b in pq.ParquetFile(part).iter_batches(batch_size=65_536))
    pending: list[pa.RecordBatch] = []
    have = 0
    for lo, hi in bounds:
        while have < hi - lo:
            batch = next(batches, None)
            if batch is None:
                raise ValueError(f"the spark join wrote fewer rows than the {hi} entity rows up to this chunk")
            pending.append(batch)
            have += batch.num_rows
        table = pa.Table.from_batches(pending).combine_chunks()
        chunk, rest = table.slice(0, hi - lo), table.slice(hi - lo)
        pending = rest.to_batches() if rest.num_rows else []
        have = rest.num_rows
        rows = chunk.column(ROW).to_numpy()
        if rows[0] != lo or rows[-1] != hi - 1 or len(rows) != hi - lo:
            raise ValueError(f"the spark join's rows {rows[0]}..{rows[-1]} do not match the chunk {lo}..{hi - 1}")
        chunk = chunk.set_column(chunk.schema.get_field_index(ROW), ROW, pa.array(rows - lo))
        with pd.option_context("future.infer_string", True):
            for odfv, wanted in odfvs:
                transformed = odfv.transform_arrow(chunk, False)
                for name in wanted:
                    if name not in chunk.column_names:
                        chunk = chunk.append_column(name, transformed[name])
        yield chunk

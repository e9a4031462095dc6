"""Feast's DuckDB offline store with a faster point-in-time join that returns the same rows.

Feast's DuckDB store (ibis) gives every entity row a string id (its join keys and timestamp
concatenated), inner-joins each view's whole source on the keys, keeps the latest snapshot not
after the row and inside the TTL with a window function, and left-joins the survivors back on the
string id, once per view. For a training set of millions of impressions that is most of the build.

:class:`AsofDuckDBOfflineStore` answers the same question the way DuckDB is built for:

* each source is first cut to ``[min(entity ts) - ttl, max(entity ts)]`` (no lower bound without a
  TTL): a row outside it fails the join's own predicates for every entity row of the call;
* one ``ASOF LEFT JOIN`` per view on the join keys and ``entity ts >= feature ts`` picks the latest
  snapshot not after the row, which is Feast's pick; it is kept only if ``feature ts + ttl >= entity
  ts`` (Feast's TTL predicate: if the latest snapshot is too old, every older one is too);
* sources with a created-timestamp column are first reduced to the newest created row per (keys,
  timestamp), Feast's tie-break.

Reading the sources (Feast's own reader), the UTC casts, the output columns and their order, the
on-demand views (Feast's ``RetrievalJob`` runs them) are Feast's. When the entity rows are a SQL
query or ``filter_by_created_timestamp`` is asked for, the call goes to Feast's own join unchanged.
``tests/test_training.py`` checks that both stores return identical frames.

``ranker`` selects it through :func:`ranker.features.store.repo_config` when
``feature_store.yaml`` says ``offline_store: type: duckdb``; the plain Feast CLI keeps Feast's store
and gets the same rows, only slower.
"""

from __future__ import annotations

import contextlib
import warnings
from datetime import timedelta
from typing import List, Union

import numpy as np
import pandas as pd
from feast.infra.offline_stores import offline_utils
from feast.infra.offline_stores.duckdb import DuckDBOfflineStore, DuckDBOfflineStoreConfig
from feast.infra.offline_stores.ibis import IbisRetrievalJob
from feast.infra.offline_stores.offline_store import RetrievalMetadata
from feast.on_demand_feature_view import OnDemandFeatureView

from ranker.features import feast_compat

TYPE = "ranker.features.offline.AsofDuckDBOfflineStore"
_TS = "__ranker_feature_ts"
_RID = "__ranker_row"
_RID_RIGHT = "__ranker_row_found"


@contextlib.contextmanager
def _quiet():
    """ibis 12 calls a DuckDB method that DuckDB 2 deprecates: a notice users cannot act on (and that
    Feast's own ``simplefilter("once")`` lets through), silenced where it arises."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"fetch_arrow_table\(\) is deprecated", category=DeprecationWarning)
        yield


class _RetrievalJob(IbisRetrievalJob):
    """Feast's job, run with :func:`_quiet`."""

    def _to_arrow_internal(self, timeout=None):
        with _quiet():
            return super()._to_arrow_internal(timeout=timeout)


class AsofDuckDBOfflineStoreConfig(DuckDBOfflineStoreConfig):
    type: str = TYPE


class AsofDuckDBOfflineStore(DuckDBOfflineStore):
    @staticmethod
    def get_historical_features(
        config,
        feature_views: List,
        feature_refs: List[str],
        entity_df: Union[pd.DataFrame, str],
        registry,
        project: str,
        full_feature_names: bool = False,
        filter_by_created_timestamp: bool = False,
    ):
        if not isinstance(entity_df, pd.DataFrame) or filter_by_created_timestamp:
            return DuckDBOfflineStore.get_historical_features(
                config,
                feature_views,
                feature_refs,
                entity_df,
                registry,
                project,
                full_feature_names=full_feature_names,
                filter_by_created_timestamp=filter_by_created_timestamp,
            )
        feast_compat.validate_lance_feature_views(feature_views)
        with _quiet():
            return _asof_historical_features(
                config, feature_views, feature_refs, entity_df, registry, project, full_feature_names
            )


def _utc(value) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _asof_historical_features(config, feature_views, feature_refs, entity_df, registry, project, full_feature_names):
    import ibis
    import ibis.expr.datatypes as dt

    utc = dt.Timestamp(timezone="UTC")
    # The same preparation of the entity rows as Feast's get_historical_features_ibis.
    entity_schema = feast_compat.entity_schema(entity_df)
    ts_col = offline_utils.infer_event_timestamp_from_entity_df(entity_schema=entity_schema)
    timestamp_range = feast_compat.entity_timestamp_range(entity_df, ts_col)
    entity_df = feast_compat.entity_rows_utc(entity_df, ts_col)
    lo, hi = _utc(timestamp_range[0]), _utc(timestamp_range[1])
    entity_columns = list(entity_df.columns)
    # Each view is joined on a narrow copy of the entity rows (row id, keys, timestamp) and its
    # features are attached by the integer row id: the ASOF joins never sort the wide rows.
    entities = ibis.memtable(entity_df.assign(**{_RID: np.arange(len(entity_df), dtype=np.int64)}))
    acc = entities
    all_feature_cols: list[str] = []

    for view in feature_views:
        if view.batch_source is None:
            raise ValueError(f"Feature view '{view.name}' has no batch_source and cannot be queried.")
        source = view.batch_source
        table = feast_compat.read_data_source(source, str(config.repo_path))
        for old_name, new_name in source.field_mapping.items():
            if old_name in table.columns:
                table = table.rename({new_name: old_name})
        ts_field, created = source.timestamp_field, source.created_timestamp_column
        table = table.mutate(**{c: table[c].cast(utc) for c in (ts_field, created) if c})
        prefix = view.projection.name_to_use()
        refs = [ref.split(":")[1] for ref in feature_refs if ref.startswith(f"{prefix}:")]
        base = view.projection.name_alias or view.name
        if full_feature_names:
            table = table.rename({f"{base}__{f}": f for f in refs})
            refs = [f"{base}__{f}" for f in refs]
        join_key_map = view.projection.join_key_map or {e.name: e.name for e in view.entity_columns}
        ttl = view.ttl if view.ttl and view.ttl > timedelta(0) else None

        keep = table[ts_field] <= ibis.literal(hi.to_pydatetime(), type=utc)
        if ttl is not None:
            keep &= table[ts_field] >= ibis.literal((lo - ttl).to_pydatetime(), type=utc)
        table = table.filter(keep)
        if created:  # Feast's tie-break between rows of the same keys and timestamp
            window = ibis.window(group_by=[*join_key_map, ts_field], order_by=[ibis.desc(table[created])])
            table = table.mutate(__rn=ibis.row_number().over(window))
            table = table.filter(table["__rn"] == 0)
        # Rename the keys so they never collide with the entity columns.
        right = table.select(
            **{f"__key_{i}": table[k] for i, k in enumerate(join_key_map)},
            **{_TS: table[ts_field]},
            **{f: table[f] for f in refs},
        )
        left = entities.select(_RID, ts_col, *dict.fromkeys(join_key_map.values()))
        predicates = [left[entity_key] == right[f"__key_{i}"] for i, entity_key in enumerate(join_key_map.values())]
        joined = left.asof_join(right, on=left[ts_col] >= right[_TS], predicates=predicates)
        if ttl is not None:
            fresh = joined[_TS] + ibis.literal(ttl) >= joined[ts_col]
            values = {f: fresh.ifelse(joined[f], ibis.null(joined[f].type())) for f in refs}
        else:
            values = {f: joined[f] for f in refs}
        found = joined.select(**{_RID_RIGHT: joined[_RID]}, **values)
        acc = acc.left_join(found, acc[_RID] == found[_RID_RIGHT]).drop(_RID_RIGHT)
        all_feature_cols.extend(refs)

    acc = acc.select(*entity_columns, *all_feature_cols)

    odfvs = OnDemandFeatureView.get_requested_odfvs(feature_refs, project, registry)
    for odfv in (v for v in odfvs if v.mode == "substrait"):
        acc = odfv.transform_ibis(acc, full_feature_names)
    return _RetrievalJob(
        acc,
        [v for v in odfvs if v.mode != "substrait"],
        full_feature_names,
        metadata=RetrievalMetadata(
            features=feature_refs,
            keys=list(set(entity_df.columns) - {ts_col}),
            min_event_timestamp=timestamp_range[0],
            max_event_timestamp=timestamp_range[1],
        ),
        data_source_writer=feast_compat.write_data_source,
        staging_location=config.offline_store.staging_location,
        staging_location_endpoint_override=config.offline_store.staging_location_endpoint_override,
        repo_path=str(config.repo_path),
    )

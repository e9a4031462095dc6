"""Feast's DuckDB offline store with the point-in-time join bounded in time.

Feast's DuckDB store (ibis) joins every entity row with every row of each feature view's source
that has the same keys, then keeps the latest one not after the row's timestamp and within the
view's TTL. The source is read whole for every call, so a training set streamed through Feast in
time-ordered chunks pays for all snapshots of all days in every chunk.

:class:`TimeBoundedDuckDBOfflineStore` is the same store with one difference: before the join, each
source is filtered to the rows that can match an entity row of the call at all, i.e. timestamps in
``[min(entity ts) - ttl, max(entity ts)]`` (no lower bound for a view without TTL). A row outside that
window fails the join's own predicates (``feature ts <= entity ts`` and ``feature ts + ttl >= entity
ts``) for every entity row, so the result is exactly Feast's; ``tests/test_training.py`` compares the
two on a built training set. Everything else (reading, ODFVs, created-timestamp tie breaks) is
Feast's code.

``ranker`` selects it through :func:`ranker.features.store.repo_config` when
``feature_store.yaml`` says ``offline_store: type: duckdb``; the plain Feast CLI keeps Feast's store
and gets the same rows, only slower for long time ranges.
"""

from __future__ import annotations

from datetime import timedelta
from typing import List, Union

import pandas as pd
from feast.infra.offline_stores.duckdb import (
    DuckDBOfflineStore,
    DuckDBOfflineStoreConfig,
    _read_data_source,
    _validate_lance_feature_views,
    _write_data_source,
)
from feast.infra.offline_stores.ibis import _get_entity_df_event_timestamp_range, get_historical_features_ibis
from feast.infra.offline_stores import offline_utils

TYPE = "ranker.features.offline.TimeBoundedDuckDBOfflineStore"


class TimeBoundedDuckDBOfflineStoreConfig(DuckDBOfflineStoreConfig):
    type: str = TYPE


class TimeBoundedDuckDBOfflineStore(DuckDBOfflineStore):
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
        if not isinstance(entity_df, pd.DataFrame):  # a SQL entity query: no range to bound by
            return DuckDBOfflineStore.get_historical_features(
                config, feature_views, feature_refs, entity_df, registry, project,
                full_feature_names=full_feature_names, filter_by_created_timestamp=filter_by_created_timestamp,
            )
        _validate_lance_feature_views(feature_views)
        ts_col = offline_utils.infer_event_timestamp_from_entity_df(dict(zip(entity_df.columns, entity_df.dtypes)))
        lo, hi = _get_entity_df_event_timestamp_range(entity_df, ts_col)
        lo, hi = pd.Timestamp(lo), pd.Timestamp(hi)
        lo = lo.tz_localize("UTC") if lo.tzinfo is None else lo.tz_convert("UTC")
        hi = hi.tz_localize("UTC") if hi.tzinfo is None else hi.tz_convert("UTC")
        # Per source: the widest TTL among the views reading it (None: some view has no TTL).
        ttls: dict = {}
        for view in feature_views:
            source = view.batch_source
            ttl = view.ttl if view.ttl and view.ttl > timedelta(0) else None
            key = id(source)
            ttls[key] = None if (key in ttls and ttls[key] is None) or ttl is None else max(ttl, ttls.get(key) or ttl)

        def bounded_reader(data_source, repo_path: str):
            import ibis
            import ibis.expr.datatypes as dt

            table = _read_data_source(data_source, repo_path)
            field = data_source.timestamp_field
            if id(data_source) not in ttls or not field or field not in table.columns:
                return table
            ts = table[field].cast(dt.Timestamp(timezone="UTC"))
            keep = ts <= ibis.literal(hi.to_pydatetime(), type=dt.Timestamp(timezone="UTC"))
            ttl = ttls[id(data_source)]
            if ttl is not None:
                keep &= ts >= ibis.literal((lo - ttl).to_pydatetime(), type=dt.Timestamp(timezone="UTC"))
            return table.filter(keep)

        return get_historical_features_ibis(
            config=config,
            feature_views=feature_views,
            feature_refs=feature_refs,
            entity_df=entity_df,
            registry=registry,
            project=project,
            full_feature_names=full_feature_names,
            data_source_reader=bounded_reader,
            data_source_writer=_write_data_source,
            staging_location=config.offline_store.staging_location,
            staging_location_endpoint_override=config.offline_store.staging_location_endpoint_override,
            filter_by_created_timestamp=filter_by_created_timestamp,
        )

"""Measure what a Feast registry refresh costs a request, and that the scorer's path never pays it.

Applies RANKER_HOME's feature repository into a throw-away PostgreSQL database (Feast's SQL registry,
the shared-registry setting), sets the registry cache TTL to 1 s in the default ``sync`` mode, then for
``--seconds`` alternates the same request (1 user x 100 listings, ``search_ranker_v1``) through Feast's
``get_online_features`` and through the scorer's feature path (:class:`ranker.serving.features.OnlineFeatures`).
Feast's calls are split into those that refreshed the registry inside the call and the others (the
anchor, same run). Needs feature tables and a materialized online store (``make demo``)::

    RANKER_HOME=$PWD .venv/bin/python infra/feast_registry_ttl.py [--pg postgresql://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import time
import uuid
import warnings

import numpy as np


def _line(label: str, samples: list[float]) -> str:
    a = np.asarray(samples)
    if a.size == 0:
        return f"{label:<42} n=0"
    return (
        f"{label:<42} n={a.size:<5} p50 {np.percentile(a, 50):6.1f} ms  p99 {np.percentile(a, 99):6.1f} ms  "
        f"max {a.max():6.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--pg",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="a PostgreSQL URL allowed to CREATE/DROP DATABASE",
    )
    parser.add_argument("--seconds", type=float, default=12.0, help="how long to alternate requests")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    import pandas as pd
    import psycopg

    import ranker.features.store as store_module
    from ranker.config import Settings
    from ranker.serving.features import OnlineFeatures

    admin = psycopg.connect(args.pg, autocommit=True)
    database = f"ranker_ttl_probe_{uuid.uuid4().hex[:8]}"
    admin.execute(f'CREATE DATABASE "{database}"')
    base = args.pg.rsplit("/", 1)[0]
    try:
        settings = Settings.from_env().with_(feast_registry=f"{base}/{database}")
        store_module.apply(settings)
        sql_config = store_module.sql_registry_config
        store_module.sql_registry_config = lambda url, file_registry: {
            **sql_config(url, file_registry),
            "cache_ttl_seconds": 1,
        }
        store = store_module.feature_store(settings)
        service = store.get_feature_service("search_ranker_v1")
        items = pd.read_parquet(settings.features_dir / "listings.parquet").item_id.drop_duplicates().head(100).tolist()
        rows = [
            {
                "user_id": "u000001",
                "item_id": item,
                "seller_id": "s1",
                "category": "dresses",
                "query": "black dress",
                "request_ts": 1_790_000_000,
                "query_text": "black dress",
            }
            for item in items
        ]
        plain, refreshed, fast_path = [], [], []
        with OnlineFeatures(settings, service="search_ranker_v1") as fast:
            deadline = time.monotonic() + args.seconds
            while time.monotonic() < deadline:
                before = store.registry.cached_registry_proto_created
                t0 = time.perf_counter()
                store.get_online_features(features=service, entity_rows=rows)
                elapsed = (time.perf_counter() - t0) * 1000
                (refreshed if store.registry.cached_registry_proto_created != before else plain).append(elapsed)
                t0 = time.perf_counter()
                fast.fetch(user_id="u000001", item_ids=items, query="black dress", request_ts=1_790_000_000)
                fast_path.append((time.perf_counter() - t0) * 1000)
        print(f"online store {settings.online_store}, SQL registry, cache_ttl_seconds=1, cache_mode=sync, 100 listings")
        print(_line("Feast, calls without a refresh (anchor)", plain))
        print(_line("Feast, calls that refreshed the registry", refreshed))
        print(_line("scorer feature path (never refreshes)", fast_path))
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.close()


if __name__ == "__main__":
    main()

"""Materialization throughput into Redis: the platform's vectorised writer against Feast's own
``online_write_batch`` for the same rows, in the same run, each into a fresh database of a private
redis-server started here on a free loopback port.

    RANKER_HOME=/path/with/built/features .venv/bin/python benchmarks/materialize_redis.py [--views item_stats_fv ...]

Needs `ranker features build` and `ranker features apply` to have run in RANKER_HOME.
Prints rows, seconds and rows/s per view for both writers.
"""

from __future__ import annotations

import argparse
import time
import warnings
from datetime import datetime, timezone

import _stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--views", nargs="*", default=["item_stats_fv", "listing_fv", "user_category_fv", "user_stats_fv"]
    )
    parser.add_argument("--feast-max-rows", type=int, default=100_000, help="Cap rows for Feast's slower writer.")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    import redis
    from ranker.config import Settings
    from ranker.features.feast_compat import arrow_to_online_rows, online_write_batch, redis_ts_view_name
    from ranker.features.materialize import _latest_rows, write_redis
    from ranker.features.store import feature_store

    with _stack.private_redis() as redis_url:
        server = redis_url.rsplit("/", 1)[0]
        base = Settings.from_env()
        ours = base.with_(online_store="redis", redis_url=f"{server}/1")
        feasts = base.with_(online_store="redis", redis_url=f"{server}/2")
        end = datetime.now(timezone.utc)
        print(
            f"{'view':<18} {'rows':>9} {'ours s':>8} {'ours rows/s':>12} {'feast rows':>10} {'feast s':>8} "
            f"{'feast rows/s':>13} {'speed-up':>8}"
        )
        for name in args.views:
            store = feature_store(ours)
            view = store.get_feature_view(name)
            table = _latest_rows(view, str((base.feature_repo / view.batch_source.path).resolve()), None, end)
            client = redis.Redis.from_url(ours.redis_url)
            t0 = time.perf_counter()
            n = write_redis(
                client,
                project=store.project,
                view=view,
                table=table,
                ts_key_view=redis_ts_view_name(view, store.config),
            )
            ours_s = time.perf_counter() - t0
            fstore = feature_store(feasts)
            sub = table.slice(0, min(args.feast_max_rows, table.num_rows))
            t0 = time.perf_counter()
            rows = arrow_to_online_rows(sub, view, {c.name: c.dtype.to_value_type() for c in view.entity_columns})
            online_write_batch(fstore, view, rows)
            feast_s = time.perf_counter() - t0
            ours_rate, feast_rate = n / ours_s, sub.num_rows / feast_s
            print(
                f"{name:<18} {n:>9,} {ours_s:>8.2f} {ours_rate:>12,.0f} {sub.num_rows:>10,} {feast_s:>8.2f} "
                f"{feast_rate:>13,.0f} {ours_rate / feast_rate:>7.1f}x"
            )


if __name__ == "__main__":
    main()

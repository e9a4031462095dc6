"""Redis memory per entity: materialize RANKER_HOME's feature tables into a private redis-server
(a free loopback port, stopped and deleted afterwards), then ``MEMORY USAGE key SAMPLES 0`` on a
sample of the keys of each entity type (Feast stores one hash per entity key, holding every view
of that entity) and Redis's own ``used_memory`` over the key count, for sizing a Redis Cluster.

    .venv/bin/python benchmarks/redis_bytes.py                       # RANKER_HOME's world (make demo)
    RANKER_HOME=/tmp/w4 .venv/bin/python benchmarks/redis_bytes.py --sample 2000

Printed per entity type (its join keys): keys, fields per key (features + one ``_ts`` per view),
mean/p50/p99 bytes per key from MEMORY USAGE, and the total over all keys; then used_memory
before/after and per key (allocator overhead and Redis's dict included). The machine-speed probe is
printed beside (it does not move these byte counts, which depend only on the data).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    from benchmarks._stack import machine_speed, private_redis, redis_settings

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", type=int, default=1000, help="Keys measured per entity type.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(machine_speed(), flush=True)
    import redis
    from feast.infra.key_encoding_utils import deserialize_entity_key

    from ranker.features.store import feature_store

    with private_redis() as url:
        client = redis.Redis.from_url(url)
        before = int(client.info("memory")["used_memory"])
        settings = redis_settings(url)  # materializes every view (full)
        store = feature_store(settings)
        project = store.config.project.encode()
        version = store.config.entity_key_serialization_version
        after = int(client.info("memory")["used_memory"])
        by_type: dict[tuple[str, ...], list[bytes]] = defaultdict(list)
        for key in client.scan_iter(count=10_000):
            raw = key[: -len(project)] if key.endswith(project) else key
            try:
                names = tuple(deserialize_entity_key(raw, entity_key_serialization_version=version).join_keys)
            except Exception:  # not a Feast entity key (the platform's own bookkeeping keys)
                names = (f"other: {key[:24]!r}",)
            by_type[names].append(key)
        total_keys = sum(len(keys) for keys in by_type.values())
        rng = np.random.default_rng(args.seed)
        print(f"\n{total_keys:,} keys; used_memory {before / 1e6:.1f} MB before, {after / 1e6:.1f} MB after")
        print(
            f"{'entity type (join keys)':<28} {'keys':>10} {'fields/key':>10} {'mean B/key':>10} "
            f"{'p50':>7} {'p99':>7} {'total MB':>9}"
        )
        for names, keys in sorted(by_type.items(), key=lambda kv: -len(kv[1])):
            pick = [keys[i] for i in rng.choice(len(keys), size=min(args.sample, len(keys)), replace=False)]
            pipe = client.pipeline(transaction=False)
            for key in pick:
                pipe.memory_usage(key, samples=0)
                pipe.hlen(key)
            replies = pipe.execute()
            usage = np.array(replies[0::2], dtype=np.float64)
            fields = np.array(replies[1::2], dtype=np.float64)
            print(
                f"{' x '.join(names):<28} {len(keys):>10,} {fields.mean():>10.1f} {usage.mean():>10.0f} "
                f"{np.percentile(usage, 50):>7.0f} {np.percentile(usage, 99):>7.0f} "
                f"{usage.mean() * len(keys) / 1e6:>9.1f}",
                flush=True,
            )
        print(
            f"used_memory per key (all types, allocator and Redis's dict included): "
            f"{(after - before) / max(total_keys, 1):.0f} B"
        )
    print(machine_speed(), flush=True)


if __name__ == "__main__":
    main()

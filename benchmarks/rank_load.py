"""Concurrent load on the scorer: `ranker serve` with gunicorn (2 workers by default) on the Redis
online store, hit by N client threads over loopback with 200-candidate requests for a bounded
number of requests; prints requests/s, errors, degraded answers and latency percentiles.

    make demo    # once
    RANKER_HOME=$PWD .venv/bin/python benchmarks/rank_load.py [--clients 8] [--requests 4000] [--workers 2]
        [--item-cache-ttl 60]

The clients are threads of this process using a minimal HTTP/1.1 client (_stack.HttpClient); on
a 2-core machine they share the cores with gunicorn and redis-server, as the figures say.
"""

from __future__ import annotations

import argparse
import threading
import time
import warnings

import _stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=4000, help="Total requests (bounded load).")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--candidates", type=int, default=200)
    parser.add_argument("--surface", choices=["search", "recs"], default="search")
    parser.add_argument("--item-cache-ttl", type=float, default=0.0, help="RANKER_ITEM_CACHE_TTL_S (0: no cache).")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    with _stack.private_redis() as redis_url:
        settings = _stack.redis_settings(redis_url)
        bodies = [_stack.dumps(b) for b in _stack.request_bodies(settings, surface=args.surface,
                                                                candidates=args.candidates, n=500, seed=1)]
        extra_env = {"RANKER_ITEM_CACHE_TTL_S": str(args.item_cache_ttl)}
        with _stack.gunicorn(settings, workers=args.workers, extra_env=extra_env) as base:
            lock = threading.Lock()
            counter = iter(range(args.requests))
            latencies: list[float] = []
            outcome = {"errors": 0, "degraded": 0}

            def client() -> None:
                conn = _stack.HttpClient(base)
                while True:
                    with lock:
                        i = next(counter, None)
                    if i is None:
                        return
                    t0 = time.perf_counter()
                    try:
                        status, raw = conn.post(bodies[i % len(bodies)])
                        degraded = status == 200 and b'"degraded":true' in raw
                    except OSError:
                        status, degraded = 0, False
                    elapsed = (time.perf_counter() - t0) * 1000
                    with lock:
                        latencies.append(elapsed)
                        outcome["errors"] += status != 200
                        outcome["degraded"] += bool(degraded)

            threads = [threading.Thread(target=client) for _ in range(args.clients)]
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            seconds = time.perf_counter() - started
        print(f"{args.requests} requests x {args.candidates} candidates ({args.surface}), {args.clients} clients, "
              f"{args.workers} gunicorn workers, Redis online store, item cache "
              f"{f'{args.item_cache_ttl:g} s' if args.item_cache_ttl else 'off'}")
        print(f"  throughput {args.requests / seconds:7.0f} req/s   errors {outcome['errors']}   degraded {outcome['degraded']}")
        print(f"  latency    {_stack.summary(latencies)}")


if __name__ == "__main__":
    main()

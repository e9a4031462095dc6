"""Concurrent load on the scorer: `ranker serve` with gunicorn (2 workers by default) on the Redis
online store, hit by N client threads over loopback with 200-candidate requests for a bounded
number of requests; prints requests/s, errors, degraded answers and latency percentiles.

    make demo    # once
    RANKER_HOME=$PWD .venv/bin/python benchmarks/rank_load.py [--clients 4] [--requests 4000] [--workers 2]
        [--item-cache-ttl 60]

The clients are threads of this process using a minimal HTTP/1.1 client (_stack.HttpClient); on
a 2-core machine they share the cores with gunicorn and redis-server, as the figures say.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
import warnings

import _stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4,
                        help="Client threads (gunicorn's sync workers take one connection each: 2 per worker saturate them).")
    parser.add_argument("--requests", type=int, default=4000, help="Total requests (bounded load).")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--candidates", type=int, default=200)
    parser.add_argument("--surface", choices=["search", "recs"], default="search")
    parser.add_argument("--item-cache-ttl", type=float, default=0.0, help="RANKER_ITEM_CACHE_TTL_S (0: no cache).")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    print(_stack.machine_speed())
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
            cpu_before = _cpu_seconds()
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            seconds = time.perf_counter() - started
            cpu = {k: v - cpu_before.get(k, 0.0) for k, v in _cpu_seconds().items()}
        print(f"{args.requests} requests x {args.candidates} candidates ({args.surface}), {args.clients} clients, "
              f"{args.workers} gunicorn workers, Redis online store, item cache "
              f"{f'{args.item_cache_ttl:g} s' if args.item_cache_ttl else 'off'}")
        print(f"  throughput {args.requests / seconds:7.0f} req/s   errors {outcome['errors']}   degraded {outcome['degraded']}")
        print(f"  latency    {_stack.summary(latencies)}")
        print("  CPU ms per request: " + ", ".join(f"{k} {v / args.requests * 1000:.2f}" for k, v in cpu.items())
              + f" (the machine has {os.cpu_count()} cores: {os.cpu_count() * 1000 / args.requests * seconds:.2f} "
              "core-ms per request were available)")
    print(_stack.machine_speed())


def _cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far by the scorer (gunicorn master and workers), redis-server and this
    load generator (its client threads), all started from this process."""
    import psutil

    out = {"scorer": 0.0, "redis-server": 0.0}
    for proc in psutil.Process().children(recursive=True):
        try:
            times = proc.cpu_times()
            key = "redis-server" if "redis-server" in " ".join(proc.cmdline()) else "scorer"
            out[key] += times.user + times.system
        except psutil.Error:
            continue
    own = psutil.Process().cpu_times()
    out["load generator"] = own.user + own.system
    return out


if __name__ == "__main__":
    main()

"""Concurrent load on the scorer: `ranker serve` with gunicorn (2 workers by default) on the Redis
online store, hit over loopback with 200-candidate requests; prints requests/s, errors, degraded
answers and latency percentiles.

Two modes:

* closed loop (default): N client threads send a bounded number of requests back to back; each
  waits for its answer before sending the next, so a slow answer also delays the requests behind it
  and its latency is never seen by them (coordinated omission): good for maximum throughput only;
* open loop (``--rates R1 R2 ...``): for each offered rate, a fixed schedule of send times (one
  request every 1/R s for ``--duration`` s) is served by ``--connections`` sender threads; each
  request's latency is measured from its *scheduled* send time, so time spent queued behind slow
  answers counts (no coordinated omission). Reports, per offered rate, the achieved rate and the
  latency percentiles.

    make demo    # once
    RANKER_HOME=$PWD .venv/bin/python benchmarks/rank_load.py [--clients 4] [--requests 4000] [--workers 2]
        [--item-cache-ttl 60]
    RANKER_HOME=$PWD .venv/bin/python benchmarks/rank_load.py --rates 50 100 150 200 [--duration 10]

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
    parser.add_argument(
        "--clients",
        type=int,
        default=4,
        help="Client threads (gunicorn's sync workers take one connection each: 2 per worker saturate them).",
    )
    parser.add_argument("--requests", type=int, default=4000, help="Total requests (bounded load).")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--candidates", type=int, default=200)
    parser.add_argument("--surface", choices=["search", "recs"], default="search")
    parser.add_argument("--item-cache-ttl", type=float, default=0.0, help="RANKER_ITEM_CACHE_TTL_S (0: no cache).")
    parser.add_argument("--rates", type=float, nargs="*", help="Open loop: offered requests/s, one run per rate.")
    parser.add_argument("--duration", type=float, default=10.0, help="Open loop: seconds per offered rate.")
    parser.add_argument(
        "--connections",
        type=int,
        default=16,
        help="Open loop: sender threads (each one connection); more than the server can take at once.",
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    print(_stack.machine_speed())
    with _stack.private_redis() as redis_url:
        settings = _stack.redis_settings(redis_url)
        bodies = [
            _stack.dumps(b)
            for b in _stack.request_bodies(settings, surface=args.surface, candidates=args.candidates, n=500, seed=1)
        ]
        extra_env = {"RANKER_ITEM_CACHE_TTL_S": str(args.item_cache_ttl)}
        with _stack.gunicorn(settings, workers=args.workers, extra_env=extra_env) as base:
            if args.rates:
                _stack.HttpClient(base).post(bodies[0])  # warm the workers before the first schedule
                print(
                    f"open loop: {args.candidates} candidates ({args.surface}), {args.workers} gunicorn workers, "
                    f"{args.connections} connections, {args.duration:g} s per rate, Redis online store, item cache "
                    f"{f'{args.item_cache_ttl:g} s' if args.item_cache_ttl else 'off'}; latency from the scheduled send"
                )
                for rate in args.rates:
                    print(
                        "  " + _open_loop(base, bodies, rate=rate, duration=args.duration, connections=args.connections)
                    )
                print(_stack.machine_speed())
                return
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
        print(
            f"{args.requests} requests x {args.candidates} candidates ({args.surface}), {args.clients} clients, "
            f"{args.workers} gunicorn workers, Redis online store, item cache "
            f"{f'{args.item_cache_ttl:g} s' if args.item_cache_ttl else 'off'}"
        )
        print(
            f"  throughput {args.requests / seconds:7.0f} req/s   errors {outcome['errors']}   degraded "
            f"{outcome['degraded']}"
        )
        print(f"  latency    {_stack.summary(latencies)}")
        print(
            "  CPU ms per request: "
            + ", ".join(f"{k} {v / args.requests * 1000:.2f}" for k, v in cpu.items())
            + f" (the machine has {os.cpu_count()} cores: {os.cpu_count() * 1000 / args.requests * seconds:.2f} "
            "core-ms per request were available)"
        )
    print(_stack.machine_speed())


def _open_loop(base: str, bodies: list[bytes], *, rate: float, duration: float, connections: int) -> str:
    """One offered rate: requests scheduled every 1/rate s; latency from each scheduled send time."""
    import itertools

    import numpy as np

    n = max(1, int(rate * duration))
    start = time.perf_counter() + 0.1
    schedule = start + np.arange(n) / rate
    latencies = np.full(n, np.nan)
    late = np.zeros(n, dtype=bool)  # sent more than 1 ms after its scheduled time (all senders were busy)
    status_of = np.zeros(n, dtype=np.int32)
    degraded = np.zeros(n, dtype=bool)
    counter = itertools.count()  # next() on it is atomic under the GIL: each index is taken once

    def sender() -> None:
        conn = _stack.HttpClient(base)
        while True:
            i = next(counter)
            if i >= n:
                return
            wait = schedule[i] - time.perf_counter()
            if wait > 0:
                time.sleep(wait)  # a load generator's clock, not a test's synchronisation
            late[i] = time.perf_counter() - schedule[i] > 0.001
            try:
                status, raw = conn.post(bodies[i % len(bodies)])
                degraded[i] = status == 200 and b'"degraded":true' in raw
            except OSError:
                status = 0
            latencies[i] = (time.perf_counter() - schedule[i]) * 1000
            status_of[i] = status

    threads = [threading.Thread(target=sender) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    p = np.percentile(latencies, [50, 90, 99, 99.9])
    return (
        f"offered {rate:6.0f} req/s  achieved {n / elapsed:6.0f} req/s  latency p50 {p[0]:7.2f}  p90 {p[1]:7.2f}  "
        f"p99 {p[2]:7.2f}  p99.9 {p[3]:7.2f}  max {latencies.max():7.2f} ms  errors {int((status_of != 200).sum())}  "
        f"degraded {int(degraded.sum())}  sent late {late.mean() * 100:.0f}%"
    )


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

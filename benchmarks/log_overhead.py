"""Served-feature log overhead on /v1/rank latency: the same requests through two in-process scorers
on the same Redis online store, one logging every request (RANKER_SERVED_LOG_SAMPLE=1) and one not
logging (the anchor), interleaved request by request so machine noise hits both alike. Also times the
hot-path hand-off itself (Scorer.log_served: sample, build the record, put_nowait) and reports what
the background writer wrote and dropped.

    make demo    # once: data, features and production models in RANKER_HOME
    RANKER_HOME=$PWD .venv/bin/python benchmarks/log_overhead.py [--requests 400] [--candidates 200]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

import _stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="Timed requests per scorer.")
    parser.add_argument("--candidates", type=int, default=200)
    parser.add_argument("--surface", choices=["search", "recs"], default="search")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    from api.app import create_app

    with _stack.private_redis() as redis_url, tempfile.TemporaryDirectory(prefix="bench-served-log-") as folder:
        settings = _stack.redis_settings(redis_url)
        common = {"RANKER_RELOAD_INTERVAL_S": 0, "RANKER_SURFACES": args.surface}
        off = create_app({**common, "RANKER_SERVED_LOG_SAMPLE": 0.0}, settings=settings)
        on = create_app(
            {
                **common,
                "RANKER_SERVED_LOG_SAMPLE": 1.0,
                "RANKER_SERVED_LOG_URI": Path(folder).as_uri(),
                "RANKER_SERVED_LOG_ROTATE_S": 5.0,
            },
            settings=settings,
        )
        state = on.extensions["ranker"]
        handoff_us: list[float] = []
        original = state.log_served

        def timed(**kwargs):
            t0 = time.perf_counter()
            original(**kwargs)
            handoff_us.append((time.perf_counter() - t0) * 1e6)

        state.log_served = timed
        clients = {"logging off (anchor)": off.test_client(), "logging every request": on.test_client()}
        bodies = _stack.request_bodies(
            settings, surface=args.surface, candidates=args.candidates, n=args.requests + 30, seed=7
        )
        samples: dict[str, list[float]] = {name: [] for name in clients}
        for i, body in enumerate(bodies):
            payload = _stack.dumps(body)
            order = list(clients.items()) if i % 2 == 0 else list(reversed(clients.items()))
            for name, client in order:
                t0 = time.perf_counter()
                status = client.post("/v1/rank", data=payload, content_type="application/json").status_code
                elapsed = (time.perf_counter() - t0) * 1e3
                if status != 200:
                    raise SystemExit(f"{name}: /v1/rank answered {status}")
                if i >= 30:  # warm-up
                    samples[name].append(elapsed)
        t0 = time.perf_counter()
        state.served_log.flush(timeout=60)
        flush_s = time.perf_counter() - t0
        writer = state.served_log
        print(
            f"{args.surface}, {args.candidates} candidates, {args.requests} timed requests per scorer, Redis online "
            f"store, in-process (Flask test client), interleaved"
        )
        for name, values in samples.items():
            print(f"  {name:<24} {_stack.summary(values)}")
        a, b = (np.asarray(v) for v in samples.values())
        print(
            f"  difference (on - off)    p50 {np.percentile(b, 50) - np.percentile(a, 50):+7.3f} ms  "
            f"mean {b.mean() - a.mean():+7.3f} ms"
        )
        h = np.asarray(handoff_us[30:])
        print(f"  hot-path hand-off        p50 {np.percentile(h, 50):7.1f} us  p99 {np.percentile(h, 99):7.1f} us")
        print(
            f"  writer: {writer.written_rows:,} rows in {len(writer.files)} files, {writer.dropped} dropped; "
            f"final flush {flush_s:.2f} s"
        )
        off.extensions["ranker"].close()
        state.close()
        print("caveat: a shared 2-core machine; compare the two rows of this run, not numbers across runs")


if __name__ == "__main__":
    main()

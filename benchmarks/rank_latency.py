"""Ranking latency for 50 / 200 / 1000 candidates on the Redis online store, three ways, in one run:

* http      : POST /v1/rank to `ranker serve` (gunicorn, 1 worker) over loopback, end to end (a
              minimal HTTP/1.1 client, _stack.HttpClient, so a client library's parsing is not
              counted), plus the server's own mean per stage from its /metrics;
* in-process: the same request through the Flask app in this process (no network);
* anchor    : Feast SDK `get_online_features` for the same entities + LightGBM `Booster.predict`,
              i.e. what a team would do without the platform's fast path.

    make demo    # once: data, features and production models in RANKER_HOME
    RANKER_HOME=$PWD .venv/bin/python benchmarks/rank_latency.py [--requests 300] [--surface search]
        [--sizes 50 200 1000] [--item-cache-ttl 60] [--no-anchor]

--item-cache-ttl sets RANKER_ITEM_CACHE_TTL_S for both scorers (0, the default, is no cache).
"""

from __future__ import annotations

import argparse
import time
import warnings

import _stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="Timed requests per size and path.")
    parser.add_argument("--surface", choices=["search", "recs"], default="search")
    parser.add_argument("--sizes", type=int, nargs="*", default=[50, 200, 1000])
    parser.add_argument("--item-cache-ttl", type=float, default=0.0, help="RANKER_ITEM_CACHE_TTL_S (0: no cache).")
    parser.add_argument("--no-anchor", action="store_true", help="Skip the (slow) Feast SDK anchor.")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    from api.app import create_app, freeze_heap
    from ranker.features.store import feature_store, service_spec
    from ranker.registry import Registry
    from ranker.features.reference import feast_reference
    from ranker.training.train import MODEL_NAMES

    print(_stack.machine_speed())
    with _stack.private_redis() as redis_url:
        settings = _stack.redis_settings(redis_url)
        model = Registry.from_settings(settings).fetch(MODEL_NAMES[args.surface], stage="production")
        booster = model.booster()
        store = feature_store(settings)
        spec = service_spec(store, model.card["feature_service"])
        app = create_app(
            {"RANKER_RELOAD_INTERVAL_S": 0, "RANKER_ITEM_CACHE_TTL_S": args.item_cache_ttl}, settings=settings
        )
        freeze_heap()  # as gunicorn's post_worker_init does for the served app
        client = app.test_client()
        print(
            f"{args.surface} model {model.name} {model.version}, {len(spec.features)} features, "
            f"{model.booster().num_trees()} trees, Redis online store, item cache "
            f"{f'{args.item_cache_ttl:g} s' if args.item_cache_ttl else 'off'}"
        )
        extra_env = {"RANKER_ITEM_CACHE_TTL_S": str(args.item_cache_ttl)}
        paths = ("http", "in-process") if args.no_anchor else ("http", "in-process", "anchor")
        with _stack.gunicorn(settings, workers=1, extra_env=extra_env) as base:
            conn = _stack.HttpClient(base)
            for size in args.sizes:
                bodies = _stack.request_bodies(
                    settings, surface=args.surface, candidates=size, n=args.requests + 30, seed=size
                )
                results = {}
                for name in paths:
                    samples, errors = [], 0
                    if name == "http":
                        before = _stack.stage_totals(base, args.surface)
                    for i, body in enumerate(bodies):
                        payload = _stack.dumps(body)
                        t0 = time.perf_counter()
                        if name == "http":
                            status, _ = conn.post(payload)
                        elif name == "in-process":
                            status = client.post("/v1/rank", data=payload, content_type="application/json").status_code
                        else:
                            rows = feast_reference(
                                store,
                                spec,
                                user_id=body["user_id"],
                                item_ids=body["items"],
                                query=body.get("query"),
                                request_ts=int(time.time()),
                            )
                            booster.predict(rows.matrix, num_threads=1)
                            status = 200
                        elapsed = (time.perf_counter() - t0) * 1000
                        if i >= 30:  # the first requests warm caches and connections
                            samples.append(elapsed)
                            errors += status != 200
                    results[name] = samples
                    rps = 1000 / (sum(samples) / len(samples))
                    print(
                        f"  {size:>5} candidates  {name:<10} {_stack.summary(samples)}  {rps:7.0f} req/s "
                        f"sequential  errors {errors}"
                    )
                    if name == "http":
                        print(
                            f"  {size:>5} candidates  {'':<10} "
                            f"{_stack.stage_means(before, _stack.stage_totals(base, args.surface))}"
                        )
                if "anchor" in results:
                    import numpy as np

                    speedup = np.percentile(results["anchor"], 50) / np.percentile(results["http"], 50)
                    print(f"  {size:>5} candidates  http p50 is {speedup:.1f}x faster than the Feast SDK anchor")
        app.extensions["ranker"].close()
    print(_stack.machine_speed())


if __name__ == "__main__":
    main()

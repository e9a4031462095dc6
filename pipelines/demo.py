"""`make demo`: the main job end to end on the embedded default (no servers needed).

simulate the marketplace -> build feature tables -> feast apply -> materialize into the sqlite
online store -> for each surface: point-in-time training set from Feast -> train -> evaluate
against the baselines -> publish and promote through the gate -> print a summary.
Each step is the same `ranker` command a user runs by hand; rerunning the demo is safe.
"""

from __future__ import annotations

import subprocess
import sys
import time
import warnings


def _run(*args: str, allowed: tuple[int, ...] = (0,)) -> int:
    print(f"\n$ ranker {' '.join(args)}", flush=True)
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", *args])
    if result.returncode not in allowed:
        sys.exit(f"demo stopped: `ranker {' '.join(args)}` failed (exit {result.returncode})")
    return result.returncode


def _newest_model(surface: str) -> str:
    from ranker.config import Settings
    from ranker.training.train import MODEL_NAMES

    cards = sorted((Settings.from_env().artifacts_dir / "models" / MODEL_NAMES[surface]).glob("*/card.json"))
    return str(cards[-1].parent)


def _summary() -> None:
    import duckdb

    from ranker.config import Settings
    from ranker.features.store import feature_store, service_spec

    warnings.filterwarnings("ignore")
    settings = Settings.from_env()
    con = duckdb.connect()
    raw = settings.raw_dir
    counts = dict(
        con.execute(f"SELECT event_type, count(*) FROM read_parquet('{raw}/events.parquet') GROUP BY 1").fetchall()
    )
    n_users = con.execute(f"SELECT count(*) FROM read_parquet('{raw}/users.parquet')").fetchall()[0][0]
    n_items, n_sold = con.execute(
        f"SELECT count(*), count(sold_at) FROM read_parquet('{raw}/listings.parquet')"
    ).fetchall()[0]
    store = feature_store(settings)
    print("\n== Summary ==")
    print(f"raw data        {raw}")
    print(f"  users {n_users:,}  listings {n_items:,} ({n_sold:,} sold)  " + "  ".join(f"{k} {v:,}" for k, v in sorted(counts.items())))
    print(f"feature tables  {settings.features_dir}")
    for path in sorted(settings.features_dir.glob("*.parquet")):
        rows = con.execute(f"SELECT count(*) FROM read_parquet('{path}')").fetchall()[0][0]
        print(f"  {path.stem:<22} {rows:>9,} rows")
    print(f"feast registry  {settings.feast_dir / 'registry.db'} (project {store.project})")
    print(f"online store    {settings.online_store}" + (f" {settings.feast_dir / 'online.db'}" if settings.online_store == "sqlite" else f" {settings.redis_url}"))
    print("entities        " + ", ".join(sorted(e.name for e in store.list_entities())))
    for service in sorted(store.list_feature_services(), key=lambda s: s.name):
        spec = service_spec(store, service.name)
        print(f"feature service {service.name}: {len(spec.features)} features, keys {', '.join(spec.entity_keys)}")
    item = con.execute(
        f"SELECT item_id FROM read_parquet('{settings.features_dir}/item_stats.parquet') "
        "ORDER BY event_timestamp DESC, item_clicks_7d DESC LIMIT 1"
    ).fetchall()[0][0]
    online = store.get_online_features(
        features=["listing_fv:title", "listing_fv:price", "listing_fv:is_sold", "item_stats_fv:item_clicks_7d", "item_stats_fv:item_ctr_7d"],
        entity_rows=[{"item_id": item}],
    ).to_dict()
    print("online lookup   " + ", ".join(f"{k}={v[0]}" for k, v in online.items()))
    from ranker.registry import Registry

    registry = Registry.from_settings(settings)
    for name in registry.list_models():
        card = registry.card(name, stage="production")
        ndcg = card["metrics"]["test"]
        print(
            f"production      {name} {card['version']}: test NDCG@10 {ndcg['model']['ndcg@10']:.4f} "
            f"(logged order {ndcg['logged']['ndcg@10']:.4f}, random {ndcg['random']['ndcg@10']:.4f})"
        )


def _serve_and_rank(port: int = 8642) -> None:
    """Start the scorer (gunicorn, one worker), send a few ranking requests, print them, stop it."""
    import json
    import os
    import signal
    import urllib.error
    import urllib.request

    import duckdb

    from ranker.config import Settings

    settings = Settings.from_env()
    con = duckdb.connect()
    raw = settings.raw_dir
    user = con.execute(f"SELECT user_id FROM read_parquet('{raw}/events.parquet') WHERE event_type = 'click' "
                       "GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1").fetchall()[0][0]
    live = [r[0] for r in con.execute(f"SELECT item_id FROM read_parquet('{raw}/listings.parquet') WHERE sold_at IS NULL "
                                      "AND category = 'dresses' ORDER BY created_at DESC LIMIT 8").fetchall()]
    sold = con.execute(f"SELECT item_id FROM read_parquet('{raw}/listings.parquet') WHERE sold_at IS NOT NULL "
                       "ORDER BY sold_at LIMIT 1").fetchall()[0][0]
    print(f"\n$ ranker serve --port {port} --workers 1", flush=True)
    server = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "serve", "--port", str(port), "--workers", "1"],
                              start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:  # poll readiness over HTTP, bounded
            try:
                with urllib.request.urlopen(f"{base}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit("demo stopped: the scorer did not become ready")
            time.sleep(0.5)
        requests = [
            {"surface": "search", "user_id": user, "query": "black dresses", "items": live + [sold, "i_brand_new"], "limit": 5},
            {"surface": "recs", "user_id": user, "items": live, "limit": 5},
            {"surface": "recs", "user_id": "someone_new", "items": live[:4]},
        ]
        for body in requests:
            req = urllib.request.Request(f"{base}/v1/rank", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as r:
                answer = json.loads(r.read())
            print(f"\nPOST /v1/rank {json.dumps({k: v for k, v in body.items() if k != 'items'})} ({len(body['items'])} candidates)")
            print(f"  model {answer['model']['name']} {answer['model']['version']}  degraded={answer['degraded']}  "
                  f"sold removed={answer.get('removed_sold', 0)}")
            for item in answer["items"]:
                print(f"  {item['rank']:>2}. {item['item_id']:<12} {item['score']:+.4f}")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def main() -> None:
    started = time.perf_counter()
    # Simulate the 21 days that ended last midnight (UTC): the scorer's "now" comes right after the
    # data and the last daily snapshot, as in production.
    from datetime import datetime, timedelta, timezone

    start = (datetime.now(timezone.utc).date() - timedelta(days=22)).isoformat()
    _run("data", "simulate", "--start", start)
    _run("features", "build")
    _run("features", "apply")
    # --full: the demo has just regenerated history, so reload it whole rather than incrementally.
    _run("features", "materialize", "--full")
    for surface in ("search", "recs"):
        _run("dataset", "build", "--surface", surface)
        _run("train", "--surface", surface)
        _run("evaluate", _newest_model(surface))
        # Exit 1 = the gate kept the current production model (e.g. a rerun that is not better).
        if _run("deploy", "--surface", surface, allowed=(0, 1)) == 1:
            print(f"(the gate kept the current {surface} production model)")
    _summary()
    _serve_and_rank()
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()

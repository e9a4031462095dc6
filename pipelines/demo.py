"""`make demo`: the main job end to end on the embedded default (no servers needed).

simulate the marketplace -> build feature tables -> feast apply -> materialize into the sqlite
online store -> for each surface: point-in-time training set from Feast -> train -> evaluate
against the baselines -> publish and promote through the gate -> print a summary.
Each step is the same `ranker` command a user runs by hand; rerunning the demo is safe.
"""

from __future__ import annotations

import contextlib
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
    print(
        f"  users {n_users:,}  listings {n_items:,} ({n_sold:,} sold)  "
        + "  ".join(f"{k} {v:,}" for k, v in sorted(counts.items()))
    )
    print(f"feature tables  {settings.features_dir}")
    for path in sorted(settings.features_dir.glob("*.parquet")):
        rows = con.execute(f"SELECT count(*) FROM read_parquet('{path}')").fetchall()[0][0]
        print(f"  {path.stem:<22} {rows:>9,} rows")
    print(f"feast registry  {settings.feast_dir / 'registry.db'} (project {store.project})")
    print(
        f"online store    {settings.online_store}"
        + (f" {settings.feast_dir / 'online.db'}" if settings.online_store == "sqlite" else f" {settings.redis_url}")
    )
    print("entities        " + ", ".join(sorted(e.name for e in store.list_entities())))
    for service in sorted(store.list_feature_services(), key=lambda s: s.name):
        spec = service_spec(store, service.name)
        print(f"feature service {service.name}: {len(spec.features)} features, keys {', '.join(spec.entity_keys)}")
    item = con.execute(
        f"SELECT item_id FROM read_parquet('{settings.features_dir}/item_stats.parquet') "
        "ORDER BY event_timestamp DESC, item_clicks_7d DESC LIMIT 1"
    ).fetchall()[0][0]
    online = store.get_online_features(
        features=[
            "listing_fv:title",
            "listing_fv:price",
            "listing_fv:is_sold",
            "item_stats_fv:item_clicks_7d",
            "item_stats_fv:item_ctr_7d",
        ],
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


def _free_port() -> int:
    """A free loopback port: a fixed one could be another process's (another demo's scorer would answer)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_and_rank(port: int | None = None) -> None:
    """Start the scorer (gunicorn, one worker), send a few ranking requests, print them, stop it."""
    import json
    import urllib.request

    import duckdb

    from ranker.config import Settings

    port = port or _free_port()
    settings = Settings.from_env()
    con = duckdb.connect()
    raw = settings.raw_dir
    user = con.execute(
        f"SELECT user_id FROM read_parquet('{raw}/events.parquet') WHERE event_type = 'click' "
        "GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1"
    ).fetchall()[0][0]
    live = [
        r[0]
        for r in con.execute(
            f"SELECT item_id FROM read_parquet('{raw}/listings.parquet') WHERE sold_at IS NULL "
            "AND category = 'dresses' ORDER BY created_at DESC LIMIT 8"
        ).fetchall()
    ]
    sold = con.execute(
        f"SELECT item_id FROM read_parquet('{raw}/listings.parquet') WHERE sold_at IS NOT NULL ORDER BY sold_at LIMIT 1"
    ).fetchall()[0][0]
    print(f"\n$ ranker serve --port {port} --workers 1", flush=True)
    with _scorer(port=port, workers=1) as base:
        requests = [
            {
                "surface": "search",
                "user_id": user,
                "query": "black dresses",
                "items": live + [sold, "i_brand_new"],
                "limit": 5,
            },
            {"surface": "recs", "user_id": user, "items": live, "limit": 5},
            {"surface": "recs", "user_id": "someone_new", "items": live[:4]},
        ]
        for body in requests:
            req = urllib.request.Request(
                f"{base}/v1/rank", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(req, timeout=10) as r:
                answer = json.loads(r.read())
            print(
                f"\nPOST /v1/rank {json.dumps({k: v for k, v in body.items() if k != 'items'})} "
                f"({len(body['items'])} candidates)"
            )
            print(
                f"  model {answer['model']['name']} {answer['model']['version']}  degraded={answer['degraded']}  "
                f"sold removed={answer.get('removed_sold', 0)}"
            )
            for item in answer["items"]:
                print(f"  {item['rank']:>2}. {item['item_id']:<12} {item['score']:+.4f}")


@contextlib.contextmanager
def _scorer(**kwargs):
    """`ranker serve` for the length of the block (pipelines.cmd_serve.serving); the demo stops if it
    never gets ready."""
    from pipelines.cmd_serve import serving
    from ranker.errors import RankerError

    try:
        with serving(**kwargs) as base:
            yield base
    except RankerError as exc:
        sys.exit(f"demo stopped: {exc}")


def _monitoring_summary(port: int | None = None, requests: int = 2000) -> None:
    """Monitoring: an A/B on search (production vs a deliberately no-skill model in staging) served
    by a scorer that logs every request; the simulator acts as the live marketplace; then skew,
    drift and online metrics per variant, summarised (full output: the `ranker monitor` commands)."""
    import json
    import os
    from datetime import datetime, timezone

    from ranker.config import Settings
    from ranker.monitoring.live import train_no_skill_model
    from ranker.registry import Registry

    warnings.filterwarnings("ignore")
    port = port or _free_port()
    settings = Settings.from_env()
    since = datetime.now(timezone.utc).isoformat(timespec="seconds")
    print("\n== Monitoring ==")
    print("training a no-skill search model (labels shuffled within requests) for the A/B treatment ...", flush=True)
    folder = train_no_skill_model(settings, "search", seed=1)
    card = json.loads((folder / "card.json").read_text())
    registry = Registry.from_settings(settings)
    registry.publish(folder)
    registry.promote(card["name"], card["version"], stage="staging", gate=None, force=True, reason="demo A/B treatment")
    variants = {
        "search": [
            {"name": "control", "model": "production", "weight": 0.5},
            {"name": "treatment", "model": "staging", "weight": 0.5},
        ]
    }
    env = {
        **os.environ,
        "RANKER_SERVED_LOG_SAMPLE": "1",
        "RANKER_SERVED_LOG_ROTATE_S": "2",
        "RANKER_VARIANTS": json.dumps(variants),
        "RANKER_RELOAD_INTERVAL_S": "0",
    }
    print(
        f"$ RANKER_VARIANTS='{json.dumps(variants)}' RANKER_SERVED_LOG_SAMPLE=1 ranker serve --port {port} --workers 2",
        flush=True,
    )
    # Two halves: the first is the served reference window of the drift check (like with like: the
    # same traffic, the same length, just earlier), the second the window judged.
    with _scorer(port=port, workers=2, env=env, log_level="warning") as base:  # workers flush the log on exit
        _run("monitor", "live", "--url", base, "--requests", str(requests // 2), "--limit", "20", "--seed", "1")
    middle = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    # A new free port: the first scorer's may still be held (its connections in TIME_WAIT) or taken.
    with _scorer(port=_free_port(), workers=2, env=env, log_level="warning") as base:
        _run("monitor", "live", "--url", base, "--requests", str(requests // 2), "--limit", "20", "--seed", "2")
    from pipelines.cmd_monitor import run_drift, run_online, run_skew
    from ranker.monitoring.online import online_table

    window = dict(since=since, until=None, surface=None, log_uri="")
    skew = run_skew(settings, threshold=0.01, rtol=1e-5, atol=1e-6, max_rows=20_000, **window)
    worst = skew["features"][0]
    verdict = "ok" if skew["ok"] else f"SKEW in {len(skew['failed'])} features ({', '.join(skew['failed'][:5])} ...)"
    print(
        f"skew    {skew['rows']:,} served rows recomputed with Feast get_historical_features: {verdict} "
        f"(worst {worst['feature']} {worst['mismatch_rate']:.2%} mismatches)"
    )
    drift_window = dict(
        since=middle, until=None, surface=None, log_uri="", reference_since=since, reference_until=middle
    )
    drift = run_drift(settings, threshold=0.25, score_threshold=0.25, min_rows=200, **drift_window)
    for m in drift["models"]:
        n_drift = sum(f["verdict"] == "drift" for f in m["features"])
        top = ", ".join(f"{f['feature']} {f['psi']:.3f} (healthy <= {f['threshold']:.3f})" for f in m["features"][:2])
        score = "-" if m["score_psi"] is None else f"{m['score_psi']:.3f}"
        state = "no drift" if not n_drift else f"DRIFT in {n_drift} features"
        print(
            f"drift   {m['model_name']} {m['version']} vs the earlier served window: {state} "
            f"({len(m['features'])} features within their healthy range: {len(m['features']) - n_drift}; "
            f"closest to its threshold: {top}; score PSI {score})"
        )
    print(f"drift   verdict: {'no drift' if drift['ok'] else 'DRIFT: ' + ', '.join(drift['drifted'][:8])}")
    shifted = run_drift(
        settings, threshold=0.25, score_threshold=0.25, min_rows=200, shift={"price": 100.0}, **drift_window
    )
    print(
        "drift   injected check (served price x100, a unit change): flagged "
        + (", ".join(shifted["drifted"]) or "NOTHING (the monitor is blind)")
    )
    online, _ = run_online(settings, events=(), k=10, variants=json.dumps(variants), **window)
    print(online_table(online))
    _alert_replay(settings, skew=skew, drift=drift, online=online)
    print(
        f"details: ranker monitor skew|online --since {since}; ranker monitor drift --since {middle} "
        f"--reference-since {since} --reference-until {middle}; ranker monitor report --since {since}"
    )


def _alert_replay(settings, *, skew: dict, drift: dict, online: dict) -> None:
    """Export the monitors' real figures (the textfiles `ranker monitor ...` writes) and replay them
    through infra/prometheus/alerts.yml with promtool: which monitor alerts would fire on them."""
    import shutil
    from pathlib import Path

    from prometheus_client import generate_latest

    from ranker.monitoring import export
    from ranker.monitoring.alertcheck import alerts_that_would_fire

    registries = {
        "skew": export.skew_metrics(skew),
        "drift": export.drift_metrics(drift),
        "online": export.online_metrics(online),
    }
    for name, registry in registries.items():
        export.export(registry, name, textfile_dir=settings.artifacts_dir / "monitoring" / "metrics")
    if shutil.which("promtool") is None:
        print("alerts  (promtool not installed: the alert replay is skipped; `make promtool` installs it)")
        return
    rules = Path(__file__).resolve().parents[1] / "infra" / "prometheus" / "alerts.yml"
    fired = alerts_that_would_fire([generate_latest(r).decode() for r in registries.values()], rules)
    print(
        "alerts  replayed through alerts.yml (promtool): "
        + ("no monitor alert would fire" if not fired else "WOULD FIRE: " + ", ".join(fired))
    )


def _streaming_step(port: int | None = None) -> None:
    """Streaming, when RabbitMQ answers: a processor consumes a fresh one-partition stream, the scorer
    ranks live listings, a sale of the top one is published, and the next rankings are polled until
    it is gone (the measured delay). Otherwise: how to start a broker, and the demo goes on."""
    import json
    import os
    import signal
    import threading
    import urllib.request
    import uuid

    import duckdb

    from ranker.config import Settings
    from ranker.streaming.broker import RabbitMQBroker
    from ranker.streaming.errors import StreamError
    from ranker.streaming.producer import Producer

    print("\n== Streaming ==")
    settings = Settings.from_env()
    broker = RabbitMQBroker(settings.stream_url)
    try:
        broker.check(timeout_s=3)
    except StreamError as exc:
        print(
            f"{exc}\n(streaming step skipped: start RabbitMQ, e.g. `apt-get install rabbitmq-server && "
            "rabbitmq-server -detached`, then rerun `make demo`; docs/guides/streaming.md)"
        )
        return
    name = f"demo-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "RANKER_STREAM_NAME": name, "RANKER_STREAM_PARTITIONS": "1"}
    broker.create(name, 1)
    print(f"$ RANKER_STREAM_NAME={name} RANKER_STREAM_PARTITIONS=1 ranker stream run --partition 0", flush=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "stream", "run", "--partition", "0"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True).start()
    try:
        deadline = time.monotonic() + 180
        while not any("consuming" in line for line in lines):
            if proc.poll() is not None or time.monotonic() > deadline:
                print("the stream processor did not start:\n" + "".join(lines[-20:]))
                return
            time.sleep(0.05)  # polling the processor's announcement
        raw = settings.raw_dir
        con = duckdb.connect()
        user = con.execute(
            f"SELECT user_id FROM read_parquet('{raw}/events.parquet') WHERE event_type = 'click' "
            "GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1"
        ).fetchall()[0][0]
        live = [
            r[0]
            for r in con.execute(
                f"SELECT item_id FROM read_parquet('{raw}/listings.parquet') WHERE sold_at IS NULL "
                "ORDER BY created_at DESC LIMIT 20"
            ).fetchall()
        ]
        with _scorer(port=port or _free_port(), workers=1) as base:

            def ranked() -> list[str]:
                body = json.dumps({"surface": "recs", "user_id": user, "items": live}).encode()
                req = urllib.request.Request(f"{base}/v1/rank", data=body, headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=10) as r:
                    return [i["item_id"] for i in json.loads(r.read())["items"]]

            top = ranked()[0]
            sale = {"type": "listing", "change": "sold", "item_id": top, "timestamp": time.time_ns() // 1000}
            Producer(broker, name, 1).send([sale])
            sent = time.monotonic()
            while top in ranked():
                if time.monotonic() - sent > 30:
                    print(f"{top} was still ranked 30 s after its sale was published")
                    return
            delay_ms = (time.monotonic() - sent) * 1000
            print(
                f"published a sale of {top} (the top of a recs ranking of {len(live)} live listings): gone from "
                f"the next ranking {delay_ms:.0f} ms later (publish -> processor -> online store -> scorer)"
            )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        broker.delete(name, 1)
        broker.close()


def main() -> None:
    started = time.perf_counter()
    # Simulate the 21 days that ended last midnight (UTC): the scorer's "now" comes right after the
    # data and the last daily snapshot, as in production.
    from datetime import datetime, timedelta, timezone

    start = (datetime.now(timezone.utc).date() - timedelta(days=21)).isoformat()
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
    _monitoring_summary()
    _streaming_step()
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()

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


def _run(*args: str) -> None:
    print(f"\n$ ranker {' '.join(args)}", flush=True)
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", *args])
    if result.returncode != 0:
        sys.exit(f"demo stopped: `ranker {' '.join(args)}` failed (exit {result.returncode})")


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


def main() -> None:
    started = time.perf_counter()
    _run("data", "simulate")
    _run("features", "build")
    _run("features", "apply")
    # --full: the demo has just regenerated history, so reload it whole rather than incrementally.
    _run("features", "materialize", "--full")
    for surface in ("search", "recs"):
        _run("dataset", "build", "--surface", surface)
        _run("train", "--surface", surface)
        _run("evaluate", _newest_model(surface))
        _run("deploy", "--surface", surface)
    _summary()
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()

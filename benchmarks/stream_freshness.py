"""Stream freshness: a producer publishes the simulated marketplace's events live at a fixed rate
(1k, 10k events/s, then as fast as it can) into a one-partition RabbitMQ stream while the scorer
serves requests from the same Redis; one processor process (``ranker.streaming.processor``)
consumes the partition. Per rate: freshness p50/p99 (per record, the broker publish time of its
message to its update readable in Redis), events/s processed, lost (records published and not
processed) and stale (entities whose online value is not the last one the processor computed).

    RANKER_HOME=/path/after/make-demo .venv/bin/python benchmarks/stream_freshness.py [--seconds 10]

Without a built home (features, a promoted recs model) it builds a small one in a temporary folder
first. Needs RabbitMQ (RANKER_STREAM_URL, default the machine's 127.0.0.1:5672) and redis-server
(a private one is started). The anchor is Feast's own stream entry in the same run: ``store.push``
of the same view's rows to its push source (``item_realtime_push``), online.
Ends with ``freshness p50_ms=<x> p99_ms=<y> events_per_s=<n> lost=<n> stale=<n>`` for the 10k rate.

``--baseline-tree DIR`` (a checkout of an older commit, e.g. ``git archive <commit> | tar -x -C DIR``)
runs the processor of that tree and of this one on the same rates, interleaved (``--repeat`` rounds,
alternating which goes first), in the same run: the comparison this noisy, shared 2-core host allows.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
import uuid
import warnings
from pathlib import Path

import numpy as np

import _stack

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _small_home(root: Path):
    """Simulate, build, apply and train a small recs model into ``root`` (a few tens of seconds)."""
    import json
    from datetime import date

    from ranker.config import Settings
    from ranker.data.simulate import SimConfig, simulate
    from ranker.jobs.feature_tables import build_feature_tables
    from ranker.features.store import apply
    from ranker.registry import Registry
    from ranker.training.dataset import DatasetOptions, build_dataset
    from ranker.training.train import TrainOptions, train_model
    import shutil

    shutil.copytree(REPO / "feature_repo", root / "feature_repo", ignore=shutil.ignore_patterns("__pycache__"))
    settings = Settings(home=root)
    config = SimConfig(seed=11, users=2000, items=6000, new_items_per_day=300, days=8, start=date(2026, 10, 1))
    simulate(config, raw_dir=settings.raw_dir, ground_truth_dir=settings.ground_truth_dir)
    build_feature_tables(settings)  # batch tables and the real-time backfill, as `ranker features build`
    apply(settings)
    build_dataset(settings, DatasetOptions(surface="recs", chunk_rows=50_000))
    model = train_model(settings, TrainOptions(surface="recs"))
    registry = Registry.from_settings(settings)
    registry.publish(model)
    card = json.loads((model / "card.json").read_text())
    registry.promote(card["name"], card["version"], stage="production", gate=None, force=True, reason="benchmark")
    return settings


def _state_class() -> tuple[object, str]:
    try:
        from ranker.streaming.windows import WindowState

        return WindowState, "ranker.streaming.windows.WindowState"
    except ImportError:
        from tests.stream_state import CountingState

        return CountingState, "tests.stream_state.CountingState (windows.py not on this branch yet)"


def _consume(code_root: str, fields: dict, until_records: int, max_seconds: float, out) -> None:
    """Child process: one processor on partition 0 until ``until_records`` records are processed, with
    the ``ranker`` package of ``code_root`` (this tree or ``--baseline-tree``; the settings come as plain
    fields so that nothing of ``ranker`` is imported before the path is set)."""
    warnings.filterwarnings("ignore")
    sys.path.insert(0, code_root)
    from ranker.config import Settings
    from ranker.streaming.processor import Processor

    settings = Settings(**fields)

    state, _ = _state_class()
    stop = threading.Event()
    processor = Processor(settings, 0, state_class=state, stop=stop, keep_freshness=True, batch_messages=200)
    first: list[float] = []

    def watch() -> None:
        processor.ready.wait()  # the deadline runs from the first poll: start-up takes a minute on a busy host
        deadline = time.monotonic() + max_seconds
        while time.monotonic() < deadline and processor.counts["records"] < until_records:
            if processor.counts["records"] and not first:
                first.append(time.monotonic())
            time.sleep(0.005)  # a watchdog's polling interval, not synchronisation
        stop.set()

    def announce() -> None:
        processor.ready.wait()
        out.put(("ready", None))

    threading.Thread(target=watch, daemon=True).start()
    threading.Thread(target=announce, daemon=True).start()
    summary = processor.run(max_seconds=max_seconds + 5)
    seconds = time.monotonic() - (first[0] if first else time.monotonic())
    fresh = np.asarray(processor.freshness or [0.0]) * 1000
    out.put(
        (
            "done",
            {
                "records": processor.counts["records"],
                "seconds": seconds,
                "p50_ms": float(np.percentile(fresh, 50)),
                "p99_ms": float(np.percentile(fresh, 99)),
                "stale_skipped": processor.counts["stale_skipped"],
                "stale": _stale(settings),
                "dropped": summary["dropped"],
            },
        )
    )


def _stale(settings) -> int:
    """Entities whose online value differs from the last update the processor wrote (offline copy)."""
    import pandas as pd
    import pyarrow.parquet as pq

    from ranker.features.store import feature_store

    store = feature_store(settings)
    bad = 0
    for view_dir in sorted(settings.realtime_dir.glob("*")):
        files = sorted(view_dir.glob(f"stream-{settings.stream_name}-p0-*.parquet"))
        if not files:
            continue
        df = pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)
        view = store.get_feature_view(view_dir.name)
        keys = [c.name for c in view.entity_columns]
        last = df.sort_values("event_timestamp", kind="stable").groupby(keys, as_index=False).last()
        last = last.sample(min(len(last), 2000), random_state=0)
        features = [c for c in last.columns if c not in (*keys, "event_timestamp", "created")]
        online = store.get_online_features(
            features=[f"{view.name}:{f}" for f in features], entity_rows=last[keys].to_dict("records")
        ).to_df()
        for f in features:
            want, got = last[f].to_numpy(), online[f].to_numpy()
            known = pd.notna(want)
            bad += int((want[known] != got[known]).sum())
    return bad


def _serve_load(base_url: str, bodies: list[bytes], stop: threading.Event, latencies: list[float]) -> None:
    client = _stack.HttpClient(base_url)
    i = 0
    while not stop.is_set():
        t0 = time.perf_counter()
        client.post(bodies[i % len(bodies)])
        latencies.append((time.perf_counter() - t0) * 1000)
        i += 1
        stop.wait(0.05)  # ~20 requests/s: the scorer serving while the stream writes


def _run_rate(
    settings, rows: list[dict], rate: float | None, seconds: float, broker_url: str, code_root: Path = REPO
) -> dict:
    from ranker.streaming.broker import RabbitMQBroker
    from ranker.streaming.messages import parse, encode
    from ranker.streaming.producer import Producer

    name = f"bench-freshness-{uuid.uuid4().hex[:8]}"
    run = settings.with_(stream_name=name, stream_partitions=1, stream_url=broker_url, stream_checkpoint_s=1.0)
    n = len(rows) if rate is None else min(len(rows), int(rate * seconds))
    chunk = rows[:n]
    expected = len(parse(encode(chunk))[0])  # records: an event feeds its listing's and its user's windows
    broker = RabbitMQBroker(broker_url)
    broker.create(name, 1)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    import dataclasses

    fields = {f.name: getattr(run, f.name) for f in dataclasses.fields(run)}
    child = ctx.Process(target=_consume, args=(str(code_root), fields, expected, seconds * 3 + 30, out))
    child.start()
    try:
        assert out.get(timeout=180)[0] == "ready"  # subscribed, the online store open
        stats = Producer(broker, name, 1).publish(chunk, rate=rate, retime=True)
        kind, result = out.get(timeout=seconds * 3 + 120)
        child.join(timeout=60)
    finally:
        if child.is_alive():
            child.terminate()
        broker.delete(name, 1)
        broker.close()
    result["lost"] = expected - result["records"]
    result["events"] = n
    result["events_per_s"] = n / result["seconds"] if result["seconds"] > 0 else float("nan")
    result["offered_per_s"] = stats.rows_per_s
    return result


def _anchor(settings) -> str:
    """Feast's own stream entry: ``store.push`` to ``item_realtime_push`` (online), one row at a time
    (a per-event latency) and 5,000 rows in one call (throughput)."""
    import pandas as pd
    import pyarrow.parquet as pq
    from feast.data_source import PushMode

    from ranker.features.store import feature_store

    store = feature_store(settings)
    files = sorted((settings.realtime_dir / "item_realtime_fv").glob("backfill-*.parquet"))
    rows = pq.read_table(files[0]).to_pandas().tail(5000).reset_index(drop=True)
    rows["event_timestamp"] = rows["created"] = pd.Timestamp.now(tz="UTC")
    one = []
    for i in range(200):
        t0 = time.perf_counter()
        store.push("item_realtime_push", rows.iloc[[i]], to=PushMode.ONLINE)
        one.append((time.perf_counter() - t0) * 1000)
    t0 = time.perf_counter()
    store.push("item_realtime_push", rows, to=PushMode.ONLINE)
    batch_s = time.perf_counter() - t0
    a = np.asarray(one)
    return (
        f"anchor Feast store.push(item_realtime_push, to=ONLINE): one row p50 {np.percentile(a, 50):.2f} ms "
        f"p99 {np.percentile(a, 99):.2f} ms; {len(rows)} rows in one call {len(rows) / batch_s:,.0f} rows/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="Publishing time per fixed rate.")
    parser.add_argument("--rates", type=float, nargs="*", default=[1000.0, 10000.0])
    parser.add_argument(
        "--max-events", type=int, default=200_000, help="Events of the as-fast-as-possible run (0: none)."
    )
    parser.add_argument("--no-scorer", action="store_true", help="Do not run the scorer meanwhile.")
    parser.add_argument(
        "--baseline-tree", type=Path, help="Also run this older checkout's processor, interleaved with this one's."
    )
    parser.add_argument("--repeat", type=int, default=1, help="Rounds of every rate (each code once per round).")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    from ranker.config import Settings
    from ranker.features.materialize import materialize
    from ranker.streaming.producer import live_rows

    print(_stack.machine_speed(), flush=True)
    home = Settings.from_env()
    tmp = None
    if not (home.features_dir / "listings.parquet").exists() or not home.artifacts_dir.exists():
        tmp = tempfile.mkdtemp(prefix="bench-stream-home-")
        print(f"no built home at {home.home}: building a small one in {tmp}", flush=True)
        home = _small_home(Path(tmp))
    broker_url = Settings.from_env().stream_url
    _, state_name = _state_class()
    print(f"window state: {state_name}", flush=True)
    with _stack.private_redis() as redis_url:
        settings = home.with_(online_store="redis", redis_url=redis_url)
        materialize(settings, full=True)
        rows = live_rows(settings.raw_dir)
        while len(rows) < max(args.max_events, 1):
            rows = rows + [{**r, "event_id": f"{r.get('event_id', 'x')}-{len(rows)}"} for r in rows]
        print(_anchor(settings), flush=True)
        load_stop = threading.Event()
        latencies: list[float] = []
        scorer = None
        if not args.no_scorer:
            scorer = _stack.gunicorn(
                settings, workers=1, extra_env={"RANKER_HOME": str(settings.home), "RANKER_SURFACES": "recs"}
            )
            base_url = scorer.__enter__()
            bodies = [_stack.dumps(b) for b in _stack.request_bodies(settings, surface="recs", candidates=100, n=50)]
            threading.Thread(target=_serve_load, args=(base_url, bodies, load_stop, latencies), daemon=True).start()
        results: dict[str, list[dict]] = {}
        trees = [("this tree", REPO)] + ([("baseline", args.baseline_tree.resolve())] if args.baseline_tree else [])
        try:
            plan = [(r, args.seconds) for r in args.rates] + ([(None, args.seconds)] if args.max_events > 0 else [])
            for round_ in range(args.repeat):
                for rate, seconds in plan:
                    rows_for = rows if rate is not None else rows[: args.max_events]
                    for tree, root in trees if round_ % 2 == 0 else trees[::-1]:
                        res = _run_rate(settings, rows_for, rate, seconds, broker_url, root)
                        label = f"{rate:,.0f}/s" if rate else "max"
                        results.setdefault(f"{tree}|{label}", []).append(res)
                        print(
                            f"{tree:>9} rate {label:>9}: freshness p50 {res['p50_ms']:8.1f} ms "
                            f"p99 {res['p99_ms']:8.1f} ms  "
                            f"processed {res['events_per_s']:9,.0f} events/s (offered {res['offered_per_s']:9,.0f})  "
                            f"events {res['events']:,} lost {res['lost']} stale {res['stale']} "
                            f"(skipped not newer {res['stale_skipped']}) dropped {res['dropped'] or 'none'}",
                            flush=True,
                        )
        finally:
            load_stop.set()
            if scorer is not None:
                scorer.__exit__(None, None, None)
        if latencies:
            print(f"scorer meanwhile: {len(latencies)} requests, {_stack.summary(latencies)}")
    print(_stack.machine_speed(), flush=True)
    if args.baseline_tree:
        for key in sorted(k for k in results if k.startswith("baseline|")):
            label = key.split("|", 1)[1]
            mine, base = results.get(f"this tree|{label}", []), results[key]
            p99 = [float(np.median([r["p99_ms"] for r in runs])) for runs in (base, mine)]
            eps = [float(np.median([r["events_per_s"] for r in runs])) for runs in (base, mine)]
            print(
                f"rate {label:>9} (median of {len(mine)}): p99 baseline {p99[0]:.1f} ms, this tree {p99[1]:.1f} ms "
                f"(x{p99[0] / max(p99[1], 1e-9):.2f} lower); events/s {eps[0]:,.0f} -> {eps[1]:,.0f}"
            )
    mine = {k.split("|", 1)[1]: v for k, v in results.items() if k.startswith("this tree|")}
    runs = mine.get("10,000/s") or next(iter(mine.values()))
    ten = {k: float(np.median([r[k] for r in runs])) for k in ("p50_ms", "p99_ms", "events_per_s")}
    ten.update(lost=max(r["lost"] for r in runs), stale=max(r["stale"] for r in runs))
    print(
        f"freshness p50_ms={ten['p50_ms']:.1f} p99_ms={ten['p99_ms']:.1f} events_per_s={ten['events_per_s']:.0f} "
        f"lost={ten['lost']} stale={ten['stale']}"
    )
    if tmp:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    os._exit(0)  # the spawned children's queues are closed; do not wait on feeder threads


if __name__ == "__main__":
    main()

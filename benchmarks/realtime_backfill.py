"""The real-time views' backfill (ranker/streaming/backfill.py) on a demo-sized log, beside the daily
batch tables of the same log (the anchor: `ranker features build`'s DuckDB tables) and the stream's
window state replaying the same events (ranker/streaming/windows.py, one partition, both routes).

    .venv/bin/python benchmarks/realtime_backfill.py                   # scale 2: ~1M events
    .venv/bin/python benchmarks/realtime_backfill.py --home /tmp/w2    # reuse (or build once) a world

Prints the machine-speed probe (benchmarks/_stack.py) before and after; quote the ratios of one run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    from benchmarks._stack import machine_speed
    from ranker.config import Settings
    from ranker.data.schema import EVENTS, LISTINGS, read_table

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=2.0, help="Simulator scale of a new world (2: ~1M events).")
    parser.add_argument("--home", type=Path, default=None, help="A platform home to reuse (simulated when empty).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2000, help="Records per WindowState.apply call.")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    print(machine_speed(), flush=True)
    home = args.home or Path(tempfile.mkdtemp(prefix="ranker-backfill-", dir="/tmp"))
    settings = Settings(home=home)
    if not (settings.raw_dir / EVENTS.file).exists():
        from ranker.data.simulate import SimConfig, simulate

        t0 = time.perf_counter()
        simulate(SimConfig(scale=args.scale), raw_dir=settings.raw_dir, ground_truth_dir=settings.ground_truth_dir)
        print(f"simulated scale {args.scale:g} into {home} in {time.perf_counter() - t0:.1f} s", flush=True)
    events = read_table(settings.raw_dir, EVENTS)
    listings = read_table(settings.raw_dir, LISTINGS)
    print(f"{len(events):,} events, {len(listings):,} listings", flush=True)

    from ranker.features.build import BuildOptions, build_features
    from ranker.streaming.backfill import backfill

    t0 = time.perf_counter()
    build_features(settings, options=BuildOptions(threads=args.threads))
    anchor = time.perf_counter() - t0
    print(f"anchor: daily batch tables (build_features, DuckDB, {args.threads} threads): {anchor:.1f} s", flush=True)

    t0 = time.perf_counter()
    summary = backfill(events, listings, settings.features_dir / "realtime", threads=args.threads)
    seconds = time.perf_counter() - t0
    rows = ", ".join(f"{v} {info['rows']:,} rows" for v, info in summary["views"].items())
    print(
        f"backfill: {seconds:.1f} s for {len(events):,} events ({len(events) / seconds:,.0f} events/s; {rows}); "
        f"{seconds / anchor:.2f}x the batch tables",
        flush=True,
    )

    from ranker.streaming.records import StreamRecord
    from ranker.streaming.windows import WindowState

    ts = events["timestamp"].astype("int64").to_numpy()
    records = []
    for eid, kind, t, user, item in zip(
        events.event_id.tolist(), events.event_type.tolist(), ts.tolist(), events.user_id.tolist(),
        events.item_id.tolist(), strict=True,
    ):  # fmt: skip
        for route in (item, user):
            records.append(StreamRecord(eid, "event", t, item, user, kind, None, route))
    state = WindowState()
    state.seed_listings(listings)
    t0 = time.perf_counter()
    for k in range(0, len(records), args.batch):
        state.apply(records[k : k + args.batch])
    replay = time.perf_counter() - t0
    print(
        f"stream state replay: {len(events) / replay:,.0f} events/s ({len(records) / replay:,.0f} records/s, "
        f"batches of {args.batch}, one process)",
        flush=True,
    )
    t0 = time.perf_counter()
    blob = state.snapshot()
    dump = time.perf_counter() - t0
    t0 = time.perf_counter()
    WindowState.restore(blob)
    load = time.perf_counter() - t0
    sizes = ", ".join(f"{k} {v:,}" for k, v in state.sizes.items())
    print(
        f"state after the replay: {sizes}; snapshot {len(blob) / 1e6:.1f} MB in {dump * 1000:.0f} ms, "
        f"restore {load * 1000:.0f} ms",
        flush=True,
    )
    print(machine_speed(), flush=True)
    print(f"backfill seconds={seconds:.1f} events={len(events)} anchor_seconds={anchor:.1f}")


if __name__ == "__main__":
    main()

"""Does the stream help ranking? v1 (batch features) against v2 (+ real-time views fed in the loop) in
the closed loop of ranker/monitoring/closed_loop.py, on a world with the within-day dynamics.

    .venv/bin/python benchmarks/stream_closed_loop.py                    # ~5-8 min on 2 shared cores
    .venv/bin/python benchmarks/stream_closed_loop.py --users 600 --hours 12 --boot 300   # a quick look

Simulates --days of history (`ranker data simulate --within-day`), builds the features, trains v1
and v2 for both surfaces (`ranker dataset build --feature-service {surface}_ranker_vN`, `ranker
train`), then runs the next --hours of the marketplace on the same requests and seeds, per arm:
v1 on the batch snapshot; v2 with the stream applied in-process (WindowState + OnlineWriter); and
the ablations v1 with only the stream's sold flags (what dropping sold listings alone is worth) and
v2 without the stream (its real-time features frozen at the snapshot).
Prints per arm true-utility NDCG@10, CTR, purchases per 1k requests and the share of
impressions that went to sold listings, then v2 - v1 with a paired bootstrap 95% interval.
The anchor is the v1 arm of the same run; the machine-speed probe is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
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
    from ranker.data.simulate import SimConfig
    from ranker.monitoring import closed_loop as cl

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1500)
    parser.add_argument("--days", type=int, default=10, help="Days of history (training data).")
    parser.add_argument("--hours", type=int, default=24, help="Hours of the closed loop after the log.")
    parser.add_argument("--requests-per-user-day", type=float, default=1.5)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--boot", type=int, default=1000, help="Bootstrap resamples of the paired differences.")
    parser.add_argument("--no-ablation", action="store_true", help="Skip the v1+sold and v2-no-stream arms.")
    parser.add_argument("--home", type=Path, default=None, help="Where to build the world (default: a temp dir).")
    parser.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    started = time.perf_counter()
    print("command: " + " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]), flush=True)
    probe_before = machine_speed()
    print(probe_before, flush=True)
    home = args.home or Path(tempfile.mkdtemp(prefix="ranker-loop-", dir="/tmp"))
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "feature_repo").exists():
        shutil.copytree(REPO / "feature_repo", home / "feature_repo", ignore=shutil.ignore_patterns("__pycache__"))
    settings = Settings(home=home, online_store="sqlite")
    config = SimConfig(
        seed=args.seed,
        users=args.users,
        items=int(args.users * 3),
        new_items_per_day=max(1, int(args.users * 0.17)),
        days=args.days,
        requests_per_user_day=args.requests_per_user_day,
        within_day=True,
    )
    say = lambda m: print(f"  [{time.perf_counter() - started:6.0f} s] {m}", flush=True)  # noqa: E731
    world = cl.prepare(settings, config, hours=args.hours, progress=say)
    models = {}
    for version in ("v1", "v2"):
        t0 = time.perf_counter()
        models[version] = cl.train(settings, version)
        say(f"trained {version} (search, recs) in {time.perf_counter() - t0:.0f} s")
    the_plan = cl.plan(world, hours=args.hours)
    say(f"plan: {the_plan.n_requests:,} requests, {len(the_plan.item):,} candidates over {args.hours} h")
    arms = [("v1", "v1", False), ("v2+stream", "v2", True)]
    if not args.no_ablation:
        arms += [("v1+sold", "v1", "sold"), ("v2-no-stream", "v2", False)]
    results, summaries = {}, {}
    for name, version, stream in arms:
        results[name] = cl.run_arm(settings, world, the_plan, models[version], name=name, stream=stream, progress=say)
        summaries[name] = cl.summarise(results[name])
        say(f"{name}: {json.dumps(summaries[name])}")

    print()
    print(f"closed loop: {args.hours} h after {args.days} days of history, {the_plan.n_requests:,} requests per arm")
    header = f"{'arm':<14}{'NDCG@10':>9}{'CTR':>8}{'buys/1k req':>13}{'sold share':>12}{'impressions':>13}{'s':>6}"
    print(header)
    for name, s in summaries.items():
        print(
            f"{name:<14}{s['ndcg@10']:>9.4f}{s['ctr']:>8.4f}{s['purchases_per_1k_requests']:>13.1f}"
            f"{s['sold_share']:>12.4f}{s['impressions']:>13,}{s['seconds']:>6.0f}"
        )
    diffs = {}
    for name in [n for n in results if n != "v1"]:
        diffs[name] = cl.compare(results["v1"], results[name], n_boot=args.boot, seed=args.seed)
        print(f"\n{name} - v1 (paired bootstrap 95% CI, {args.boot} resamples of the requests):")
        for metric, d in diffs[name].items():
            print(f"  {metric:<28}{d['diff']:>+10.4f}   [{d['lo']:+.4f}, {d['hi']:+.4f}]")
    probe_after = machine_speed()
    print()
    print(probe_after)
    print(f"total {time.perf_counter() - started:.0f} s; home {home}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "command": sys.argv,
                    "probe": [probe_before, probe_after],
                    "arms": summaries,
                    "diffs": diffs,
                    "stream": {n: r.stream_counts for n, r in results.items()},
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()

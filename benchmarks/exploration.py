"""What does exploration for new listings cost and buy? The closed loop of
ranker/monitoring/closed_loop.py with exploration off against reserved slots for young listings
(ranker/serving/exploration.py, as the scorer applies it), on the same requests and seeds.

    .venv/bin/python benchmarks/exploration.py                       # ~15-25 min on 2 shared cores
    .venv/bin/python benchmarks/exploration.py --users 600 --hours 84 --boot 300   # a quicker look

Simulates --days of history with the within-day dynamics, builds the features, trains v1 for both
surfaces, then runs the next --hours of the marketplace per arm: sold flags pushed as they happen
(``stream="sold"``) and every listing written online when it goes live (``publish_listings``), so
the ranker sees new listings' attributes and age. Arms: ``off`` (the model's order; the anchor) and
one per --arm (``SLOTS[:POOL]``, e.g. ``4,8`` or ``4,8:5``), young = younger than --young-hours.

Prints per arm: true-utility NDCG@10 over all candidates and over the candidates younger than 48 h
(the arm's order restricted to them), CTR, purchases per 1k requests, the share of explored
impressions; for the listings that went live in the loop's first (hours - 72) hours (each followed
for 72 h): the share with a first impression, a first click and a sale within 3 days of going live,
the share with a first click within 24 h and the mean impressions in the first 3 days.
Then each arm - off with a paired bootstrap 95% interval (requests resampled for the per-request
metrics, listings for the listing shares). The machine-speed probe is printed before and after.
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

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FOLLOW_HOURS = 72
SHARES = ("impression_3d", "click_3d", "sold_3d", "click_24h", "impressions_3d")


def listing_outcomes(result, the_plan, *, follow_hours: int = FOLLOW_HOURS):
    """Per listing of the cohort (went live in the loop's first hours - follow_hours): 0/1 columns
    first impression / first click / sale within follow_hours of going live."""
    from ranker.data.simulate import HOUR_MS
    from ranker.monitoring import closed_loop as cl

    f = result.listings
    start = the_plan.start_ms
    end = start + (the_plan.hours - follow_hours) * HOUR_MS
    cohort = f[(f.created_ms >= start) & (f.created_ms < end)]
    horizon = cohort.created_ms + follow_hours * HOUR_MS
    assert follow_hours == cl.EXPOSURE_HOURS, "impressions are counted over the loop's exposure hours"
    return {
        "impression_3d": (cohort.first_impression_ms < horizon).to_numpy(dtype=np.float64),
        "click_3d": (cohort.first_click_ms < horizon).to_numpy(dtype=np.float64),
        "sold_3d": (cohort.sold_ms < horizon).to_numpy(dtype=np.float64),
        "click_24h": (cohort.first_click_ms < cohort.created_ms + 24 * HOUR_MS).to_numpy(dtype=np.float64),
        # not a share: the mean number of impressions in the listing's first 3 days
        "impressions_3d": cohort[f"impressions_{cl.EXPOSURE_HOURS}h"].to_numpy(dtype=np.float64),
    }


def paired_share_diff(a: np.ndarray, b: np.ndarray, *, n_boot: int, seed: int) -> dict:
    """b - a over the same listings, with a paired bootstrap 95% interval (listings resampled)."""
    if not len(a):
        return {"diff": float("nan"), "lo": float("nan"), "hi": float("nan")}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n_boot, len(a)))
    boot = b[idx].mean(axis=1) - a[idx].mean(axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"diff": float(b.mean() - a.mean()), "lo": float(lo), "hi": float(hi)}


def main() -> None:
    from benchmarks._stack import machine_speed
    from ranker.config import Settings
    from ranker.data.simulate import SimConfig
    from ranker.monitoring import closed_loop as cl
    from ranker.serving.exploration import ExplorationPolicy, parse_slots

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1500)
    parser.add_argument("--days", type=int, default=10, help="Days of history (training data).")
    parser.add_argument("--hours", type=int, default=96, help="Hours of the closed loop (> 72: the follow-up).")
    parser.add_argument("--requests-per-user-day", type=float, default=1.5)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--arm", action="append", default=None, help="SLOTS[:POOL], e.g. 4,8 or 4,8:5 (repeatable).")
    parser.add_argument("--young-hours", type=float, default=48.0)
    parser.add_argument("--explore-seed", type=int, default=0)
    parser.add_argument("--boot", type=int, default=1000, help="Bootstrap resamples of the paired differences.")
    parser.add_argument("--home", type=Path, default=None, help="Where to build the world (default: a temp dir).")
    parser.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = parser.parse_args()
    if args.hours <= FOLLOW_HOURS:
        parser.error(f"--hours must be more than {FOLLOW_HOURS} (the new listings are followed for 3 days)")
    warnings.filterwarnings("ignore")

    started = time.perf_counter()
    print("command: " + " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]), flush=True)
    probe_before = machine_speed()
    print(probe_before, flush=True)
    home = args.home or Path(tempfile.mkdtemp(prefix="ranker-explore-", dir="/tmp"))
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
    t0 = time.perf_counter()
    models = cl.train(settings, "v1")
    say(f"trained v1 (search, recs) in {time.perf_counter() - t0:.0f} s")
    the_plan = cl.plan(world, hours=args.hours)
    say(f"plan: {the_plan.n_requests:,} requests, {len(the_plan.item):,} candidates over {args.hours} h")

    policies = {"off": None}
    for spec in args.arm or ["4,8"]:
        slots, _, pool = spec.partition(":")
        policies[f"slots {spec}"] = ExplorationPolicy(
            slots=parse_slots(slots), young_hours=args.young_hours, pool=int(pool or 0), seed=args.explore_seed
        )
    results, summaries, outcomes = {}, {}, {}
    for name, policy in policies.items():
        results[name] = cl.run_arm(
            settings,
            world,
            the_plan,
            models,
            name=name,
            stream="sold",
            exploration=policy,
            publish_listings=True,
            progress=say,
        )
        summaries[name] = cl.summarise(results[name])
        f = results[name].requests
        summaries[name]["explored_share"] = float(f.explored.sum() / max(f.impressions.sum(), 1))
        outcomes[name] = listing_outcomes(results[name], the_plan)
        summaries[name].update({k: float(v.mean()) if len(v) else float("nan") for k, v in outcomes[name].items()})
        summaries[name]["cohort_listings"] = int(len(outcomes[name]["click_3d"]))
        say(f"{name}: {json.dumps(summaries[name])}")

    young = cl.YOUNG_NDCG
    print()
    print(
        f"closed loop: {args.hours} h after {args.days} days of history, {the_plan.n_requests:,} requests per arm; "
        f"new listings: the {summaries['off']['cohort_listings']:,} that went live in the first "
        f"{args.hours - FOLLOW_HOURS} h, each followed {FOLLOW_HOURS} h"
    )
    header = (
        f"{'arm':<16}{'NDCG@10':>9}{'<48h':>8}{'CTR':>8}{'buys/1k':>9}{'explored':>10}"
        f"{'shown 3d':>10}{'imp 3d':>8}{'click 24h':>10}{'click 3d':>10}{'sold 3d':>9}{'s':>6}"
    )
    print(header)
    for name, s in summaries.items():
        print(
            f"{name:<16}{s['ndcg@10']:>9.4f}{s[young]:>8.4f}{s['ctr']:>8.4f}{s['purchases_per_1k_requests']:>9.1f}"
            f"{s['explored_share']:>10.4f}{s['impression_3d']:>10.3f}{s['impressions_3d']:>8.1f}"
            f"{s['click_24h']:>10.3f}{s['click_3d']:>10.3f}{s['sold_3d']:>9.3f}"
            f"{s['seconds']:>6.0f}"
        )
    diffs = {}
    for name in [n for n in results if n != "off"]:
        diffs[name] = cl.compare(results["off"], results[name], n_boot=args.boot, seed=args.seed)
        for k in SHARES:
            diffs[name][k] = paired_share_diff(outcomes["off"][k], outcomes[name][k], n_boot=args.boot, seed=args.seed)
        print(f"\n{name} - off (paired bootstrap 95% CI, {args.boot} resamples of the requests / new listings):")
        for metric, d in diffs[name].items():
            print(f"  {metric:<28}{d['diff']:>+10.4f}   [{d['lo']:+.4f}, {d['hi']:+.4f}]")
    probe_after = machine_speed()
    print()
    print(probe_after)
    print(f"total {time.perf_counter() - started:.0f} s; home {home}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"command": sys.argv, "probe": [probe_before, probe_after], "arms": summaries, "diffs": diffs},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()

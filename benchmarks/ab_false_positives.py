"""False positives and power of the A/B decision rules, over many experiments in the simulator.

The traffic is the logged search requests of the simulated marketplace in RANKER_HOME (run
`make demo` first), replayed as in :mod:`ranker.monitoring.absim`: users assigned with the
production hash (a new salt per experiment), clicks drawn from the simulator's click model.

* A/A (both variants serve the logged order): the share of experiments "decided" is the false-positive
  rate of each rule: the always-valid mSPRT read every --step requests, the user-level fixed-horizon
  interval read once at the end, and the retired rule (a request-level interval re-checked every
  --step requests, the old "decided after N requests").
* A/B (the treatment serves the oracle order in a share of its requests): a known CTR@10 gain; the
  share decided in its direction is the power.

Rates come with Clopper-Pearson 95% intervals. Statistics only (no speed figure), so no machine-speed
probe is needed; the run time is printed for reference.

    RANKER_HOME=$PWD .venv/bin/python benchmarks/ab_false_positives.py [--experiments 2000] [--requests 2000]
"""

from __future__ import annotations

import argparse
import time
import warnings


def _rate(entry: dict) -> str:
    return f"{entry['rate']:.2%} [{entry['low']:.2%}, {entry['high']:.2%}] ({entry['count']})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiments", type=int, default=2000, help="A/A experiments (A/B: a quarter of it each).")
    parser.add_argument("--requests", type=int, default=2000, help="Requests per experiment (both variants).")
    parser.add_argument("--step", type=int, default=20, help="Requests between two looks.")
    parser.add_argument("--last-days", type=float, default=3.0, help="Logged days the traffic is drawn from.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    from ranker.config import Settings
    from ranker.monitoring.absim import run_experiments, traffic_from_environment
    from ranker.monitoring.abstats import SequentialOptions
    from ranker.monitoring.live import LiveEnvironment

    started = time.perf_counter()
    env = LiveEnvironment(Settings.from_env(), surfaces=("search",), last_days=args.last_days, seed=args.seed)
    traffic = traffic_from_environment(env)
    options = SequentialOptions(step=args.step)
    print(
        f"traffic: {len(traffic.shown):,} logged search requests of {len(set(traffic.user_ids)):,} users; "
        f"{args.requests:,} requests per experiment, a look every {args.step}; alpha {options.alpha}, "
        f"tau {options.relative_tau:.0%} of the control mean, burn-in {options.burn_in_users} users per variant"
    )
    aa = run_experiments(traffic, experiments=args.experiments, requests=args.requests, options=options, seed=args.seed)
    print(f"\nA/A, {aa['experiments']:,} experiments (~{aa['users_per_experiment']:.0f} users each): share decided")
    print(f"  mSPRT (always valid, every look)      {_rate(aa['msprt_decided'])}")
    print(f"  user-level fixed horizon (end only)   {_rate(aa['fixed_horizon_decided'])}")
    print(f"  request-level, re-checked every look  {_rate(aa['peeking_decided'])}   <- the retired rule")
    print(f"\nA/B, {args.experiments // 4:,} experiments per effect: power (decided in the true direction)")
    print(
        f"  {'oracle share':<13} {'true CTR@10 gain':>17}  {'mSPRT':<32} {'fixed horizon (end)':<32} median decided at"
    )
    for share in (0.25, 0.5, 1.0):
        ab = run_experiments(
            traffic,
            experiments=args.experiments // 4,
            requests=args.requests,
            effect_share=share,
            options=options,
            seed=args.seed + 1,
        )
        median = "-" if ab["median_decided_at"] is None else f"{ab['median_decided_at']:.0f} requests"
        print(
            f"  {share:<13.2f} {ab['true_effect']:>+17.4f}  {_rate(ab['msprt_power']):<32} "
            f"{_rate(ab['fixed_horizon_power']):<32} {median}"
        )
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()

"""Many A/A and A/B experiments in the simulator, to measure what a decision rule really does.

The traffic is the simulator's own: logged requests of the simulated marketplace (their users,
candidate lists and the hidden utility each user felt, :class:`~ranker.monitoring.live.LiveEnvironment`),
and clicks follow the simulator's click model, ``P(click at rank p) = p^-EXAMINE_EXPONENT x
sigmoid(utility - CLICK_THRESHOLD)``. Each experiment draws a stream of requests (with replacement,
so a user comes back with their taste: the within-user correlation of real traffic), assigns users
with the production hash (:class:`~ranker.monitoring.abtest.Experiment`, a new salt per experiment)
and draws the clicks of the ranking each variant serves:

* A/A: both variants serve the same ranking (the logged order): every "decided" is a false positive;
* A/B: the treatment serves the oracle order (by true utility) in a share ``effect_share`` of its
  requests, so the true CTR@k difference is known exactly (the mean over requests of the expected
  CTR gap): the share of experiments decided in its direction is the power.

For each experiment three rules are read: the always-valid mSPRT (:func:`~ranker.monitoring.abstats.sequential_test`,
looked at every ``step`` requests), the user-level fixed-horizon interval read once at the end, and
the retired rule (a request-level interval re-checked every ``step`` requests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from ranker.data import simulate
from ranker.monitoring import abstats as S
from ranker.monitoring.abtest import Experiment, Variant


@dataclass(frozen=True, eq=False)
class SimulatedTraffic:
    """Per logged request: the user, and the click probability at each of the top ``k`` ranks under
    the control ranking and under the oracle ranking (0 beyond the list's length)."""

    user_ids: np.ndarray  # str, one per request
    shown: np.ndarray  # items shown in the top k
    p_control: np.ndarray  # (requests, k)
    p_oracle: np.ndarray  # (requests, k)

    def true_effect(self, effect_share: float) -> float:
        """Expected CTR@k of the treatment minus the control over the request distribution."""
        gap = (self.p_oracle.sum(axis=1) - self.p_control.sum(axis=1)) / self.shown
        return float(effect_share * gap.mean())


def click_probability(utility: np.ndarray) -> np.ndarray:
    """The simulator's click model along a ranked list of utilities (rank 1 first)."""
    return simulate.click_probability(utility, np.arange(1, len(utility) + 1))


def traffic_from_environment(env: Any, *, k: int = 10) -> SimulatedTraffic:
    """The traffic of a :class:`~ranker.monitoring.live.LiveEnvironment` (its logged requests)."""
    n = len(env.requests)
    p_c = np.zeros((n, k))
    p_o = np.zeros((n, k))
    shown = np.zeros(n)
    users = np.empty(n, dtype=object)
    for i, request in enumerate(env.requests):
        logged = np.array([request.utility[item] for item in request.items], dtype=np.float64)
        m = min(k, len(logged))
        p_c[i, :m] = click_probability(logged)[:m]
        p_o[i, :m] = click_probability(np.sort(logged)[::-1])[:m]
        shown[i] = max(m, 1)
        users[i] = request.user_id
    return SimulatedTraffic(users, shown, p_c, p_o)


def _interval(successes: int, trials: int) -> tuple[float, float]:
    """Clopper-Pearson 95% interval of a proportion."""
    low = stats.beta.ppf(0.025, successes, trials - successes + 1) if successes else 0.0
    high = stats.beta.ppf(0.975, successes + 1, trials - successes) if successes < trials else 1.0
    return float(low), float(high)


def run_experiments(
    traffic: SimulatedTraffic,
    *,
    experiments: int,
    requests: int,
    effect_share: float = 0.0,
    options: S.SequentialOptions | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """``experiments`` simulated experiments of ``requests`` requests each (see the module docstring).

    Returns per rule the share of experiments decided (with a Clopper-Pearson 95% interval) and, for
    an A/B, the share decided in the true direction (power) and the wrong one."""
    options = options or S.SequentialOptions()
    rng = np.random.default_rng(seed)
    effect = traffic.true_effect(effect_share)
    unique_users, user_codes = np.unique(traffic.user_ids.astype(str), return_inverse=True)
    counts = {"msprt": 0, "msprt_right": 0, "fixed_end": 0, "fixed_end_right": 0, "peeking": 0}
    decided_at: list[int] = []
    n_users: list[int] = []
    for e in range(experiments):
        ab = Experiment(
            "search",
            (Variant("control", "production", 0.5), Variant("treatment", "staging", 0.5)),
            salt=f"sim-{seed}-{e}",
        )
        treated_user = np.array([ab.assign(u).name == "treatment" for u in unique_users])
        idx = rng.integers(0, len(traffic.shown), size=requests)
        users = user_codes[idx]
        is_t = treated_user[users]
        p = traffic.p_control[idx]
        if effect_share:
            p = np.where(is_t[:, None], (1 - effect_share) * p + effect_share * traffic.p_oracle[idx], p)
        ctr = (rng.random(p.shape) < p).sum(axis=1) / traffic.shown[idx]
        seq = S.sequential_test(ctr, users, is_t, options)
        t, c = S.estimate(ctr[is_t], users[is_t]), S.estimate(ctr[~is_t], users[~is_t])
        diff, se = S.difference(t, c)
        fixed = math.isfinite(se) and abs(diff) > 1.959963984540054 * se
        direction = np.sign(effect) if effect else 0
        counts["msprt"] += seq["decided"]
        counts["msprt_right"] += bool(seq["decided"] and seq["direction"] == direction)
        counts["fixed_end"] += fixed
        counts["fixed_end_right"] += bool(fixed and np.sign(diff) == direction)
        counts["peeking"] += S.peeking_fixed_horizon(ctr, is_t, step=options.step)
        n_users.append(len(np.unique(users)))
        if seq["decided"]:
            decided_at.append(seq["decided_at"])

    def share(key: str) -> dict[str, float]:
        low, high = _interval(counts[key], experiments)
        return {"rate": counts[key] / experiments, "low": low, "high": high, "count": counts[key]}

    out: dict[str, Any] = {
        "experiments": experiments,
        "requests": requests,
        "effect_share": effect_share,
        "true_effect": effect,
        "users_per_experiment": float(np.mean(n_users)),
        "alpha": options.alpha,
        "step": options.step,
        "burn_in_users": options.burn_in_users,
        "relative_tau": options.relative_tau,
        "msprt_decided": share("msprt"),
        "fixed_horizon_decided": share("fixed_end"),
        "peeking_decided": share("peeking"),
        "median_decided_at": float(np.median(decided_at)) if decided_at else None,
    }
    if effect_share:
        out["msprt_power"] = share("msprt_right")
        out["fixed_horizon_power"] = share("fixed_end_right")
    return out

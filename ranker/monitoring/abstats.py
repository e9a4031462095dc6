"""A/B statistics at the unit of randomisation (the user), the sample-ratio check and an
always-valid sequential decision.

Why users: assignment hashes the user id (:mod:`ranker.monitoring.abtest`), so a user's requests
share one variant *and* one taste; they are not independent draws. A per-request metric averaged
over requests is a ratio of user totals, ``R = sum_u S_u / sum_u N_u`` (``S_u`` the user's summed
metric, ``N_u`` the user's requests), and its variance comes from the delta method over users::

    var(R) ~= var_u(S_u - R N_u) / (n_users * mean(N_u)^2)

(Deng, Lu & Litz 2017, "Trustworthy analysis of online A/B tests"). Variants hold different users,
so the variance of a difference is the sum. The request-level interval (requests treated as
independent) is kept only to show how much too narrow it is (``request_level_diff``).

Sample-ratio mismatch: the users seen per variant against the configured weights, Pearson's
chi-square with ``k - 1`` degrees of freedom; ``p < 0.001`` is a broken split (a variant that
crashes for some users, a bot filter on one arm...) and every metric of that comparison is void.

Sequential decision (``RULE_MSPRT``): the mixture sequential probability ratio test of Johari,
Pekelis & Walsh (2017, "Always valid inference") on the user-level difference ``d`` with variance
``V``: with a normal mixture ``N(0, tau^2)`` over the true difference,
``Lambda = sqrt(V / (V + tau^2)) * exp(d^2 tau^2 / (2 V (V + tau^2)))``; the test is *decided* the
first time ``Lambda >= 1 / alpha``. Its confidence sequence (``d +- half_width``, see
:func:`msprt_half_width`) covers the true difference at every time simultaneously with probability
``1 - alpha``, so the result may be read after every request without inflating false positives
(re-checking a fixed-horizon interval every 20 requests does inflate them: measured in
``benchmarks/ab_false_positives.py``). ``tau`` is fixed when the burn-in ends, as a share of the
control's mean (default 10 %, the size of effect the test is tuned for); fewer users than the
burn-in per variant are never judged (the variance estimate is unreliable there).

The alternative rule (``RULE_FIXED``) is a fixed horizon from a power calculation
(:func:`fixed_horizon_plan`, ``ranker monitor ab-plan``): read once, at the planned number of users.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ranker.errors import RankerError

RULE_MSPRT = "mSPRT (always valid, normal mixture)"
RULE_FIXED = "fixed horizon (power plan)"
SRM_P_VALUE = 0.001


@dataclass(frozen=True)
class SequentialOptions:
    """The always-valid rule's parameters.

    Args:
        alpha: type-I error over the whole (continuously monitored) experiment.
        relative_tau: mixture sd as a share of the control's mean at the end of burn-in.
        burn_in_users: users per variant before the test may decide.
        step: requests (both variants, serving order) between two looks.
    """

    alpha: float = 0.05
    relative_tau: float = 0.1
    burn_in_users: int = 100
    step: int = 20

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise RankerError("alpha must be within (0, 1)")
        if self.relative_tau <= 0:
            raise RankerError("relative tau (the mixture sd) must be > 0")
        if self.burn_in_users < 2 or self.step < 1:
            raise RankerError("burn-in must be >= 2 users and the step >= 1 request")


@dataclass(frozen=True)
class Estimate:
    """A ratio of user totals with its delta-method standard error."""

    mean: float
    se: float
    users: int
    requests: int

    def interval(self, z: float = 1.959963984540054) -> tuple[float, float]:
        return self.mean - z * self.se, self.mean + z * self.se

    def to_dict(self) -> dict[str, Any]:
        low, high = self.interval()
        return {
            "mean": finite_or_none(self.mean),
            "low": finite_or_none(low),
            "high": finite_or_none(high),
            "se": finite_or_none(self.se),
            "users": self.users,
            "requests": self.requests,
            "n": self.requests,
        }


def finite_or_none(x: float | None) -> float | None:
    """A float for JSON: None for missing, NaN or infinite values."""
    return float(x) if x is not None and math.isfinite(x) else None


def user_totals(values: np.ndarray, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per user: the summed metric ``S_u`` and the count ``N_u`` of finite values (NaN = not counted)."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    codes, _ = pd.factorize(pd.Series(users)[finite].to_numpy())
    s = np.bincount(codes, weights=values[finite]) if len(codes) else np.zeros(0)
    n = np.bincount(codes).astype(np.float64) if len(codes) else np.zeros(0)
    return s, n


def ratio_estimate(s: np.ndarray, n: np.ndarray) -> Estimate:
    """``sum S / sum N`` with the delta-method standard error over users."""
    k = len(s)
    total_n = float(n.sum())
    if k < 2 or total_n <= 0:
        return Estimate(math.nan if not total_n else float(s.sum()) / total_n, math.nan, k, int(total_n))
    r = float(s.sum()) / total_n
    resid = s - r * n
    se = math.sqrt(resid.var(ddof=1) / k) / (total_n / k)
    return Estimate(r, se, k, int(total_n))


def estimate(values: np.ndarray, users: np.ndarray) -> Estimate:
    """User-level estimate of the per-request mean of ``values``."""
    return ratio_estimate(*user_totals(values, users))


def difference(treatment: Estimate, control: Estimate) -> tuple[float, float]:
    """(treatment - control, its standard error): independent groups of users."""
    return treatment.mean - control.mean, math.sqrt(treatment.se**2 + control.se**2)


def request_level_diff(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(mean a - mean b, se) treating every request as independent: the too-narrow interval."""
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) < 2 or len(b) < 2:
        return math.nan, math.nan
    return float(a.mean() - b.mean()), math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))


# ------------------------------------------------------------------------------- sample ratio


def srm_check(
    users_per_variant: Mapping[str, int], weights: Mapping[str, float], *, p_threshold: float = SRM_P_VALUE
) -> dict[str, Any]:
    """Chi-square of the users seen per variant against the configured weights.

    Returns ``{"observed", "expected", "chi2", "dof", "p_value", "threshold", "ok", "verdict"}``;
    ``ok`` is False on a mismatch (p below ``p_threshold``)."""
    names = [v for v in weights if weights[v] > 0]
    unknown = sorted(set(users_per_variant) - set(names))
    observed = np.array([users_per_variant.get(v, 0) for v in names], dtype=np.float64)
    total = observed.sum() + sum(users_per_variant[v] for v in unknown)
    w = np.array([weights[v] for v in names], dtype=np.float64)
    expected = total * w / w.sum()
    if len(names) < 2 or total == 0:
        return {
            "observed": dict(users_per_variant),
            "expected": dict(zip(names, expected.tolist(), strict=False)),
            "chi2": None,
            "dof": 0,
            "p_value": None,
            "threshold": p_threshold,
            "ok": not unknown,
            "verdict": ("not applicable (one variant)" if not unknown else f"users in unconfigured variants {unknown}"),
        }
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    p = float(stats.chi2.sf(chi2, len(names) - 1))
    ok = p >= p_threshold and not unknown
    share = ", ".join(
        f"{v} {o / total:.1%} (expected {e / total:.1%})" for v, o, e in zip(names, observed, expected, strict=False)
    )
    if unknown:
        verdict = f"SAMPLE RATIO MISMATCH: users in variants not configured: {', '.join(unknown)}"
    elif not ok:
        verdict = f"SAMPLE RATIO MISMATCH (p = {p:.2g} < {p_threshold}): {share}; the comparison is void"
    else:
        verdict = f"ok (p = {p:.2f}): {share}"
    return {
        "observed": {v: int(users_per_variant.get(v, 0)) for v in [*names, *unknown]},
        "expected": {v: float(e) for v, e in zip(names, expected, strict=False)},
        "chi2": chi2,
        "dof": len(names) - 1,
        "p_value": p,
        "threshold": p_threshold,
        "ok": ok,
        "verdict": verdict,
    }


# ------------------------------------------------------------------------------- sequential


def msprt_half_width(variance: float, tau: float, alpha: float) -> float:
    """Half-width of the mSPRT confidence sequence at variance ``variance`` of the difference."""
    if not (variance > 0 and tau > 0):
        return math.inf
    t2 = tau * tau
    return math.sqrt(variance * (variance + t2) / t2 * (2 * math.log(1 / alpha) + math.log((variance + t2) / variance)))


def sequential_test(
    values: np.ndarray, users: np.ndarray, is_treatment: np.ndarray, options: SequentialOptions | None = None
) -> dict[str, Any]:
    """The always-valid decision on ``treatment - control``, looked at every ``step`` requests.

    ``values``, ``users`` and ``is_treatment`` are per request in serving order. Returns
    ``{"rule", "alpha", "tau", "looks", "decided", "decided_at" (requests), "direction" (+1/-1/0),
    "diff", "low", "high"}`` (the interval is the running intersection of the confidence sequence)."""
    options = options or SequentialOptions()
    values = np.asarray(values, dtype=np.float64)
    users = pd.factorize(pd.Series(users))[0]
    is_treatment = np.asarray(is_treatment, dtype=bool)
    n = len(values)
    looks = list(range(options.step, n + 1, options.step))
    if not looks or looks[-1] != n:
        looks.append(n)
    finite = np.isfinite(values)
    v0 = np.where(finite, values, 0.0)
    out: dict[str, Any] = {
        "rule": RULE_MSPRT,
        "alpha": options.alpha,
        "tau": None,
        "looks": 0,
        "decided": False,
        "decided_at": None,
        "direction": 0,
        "diff": None,
        "low": -math.inf,
        "high": math.inf,
    }
    tau = None
    low, high = -math.inf, math.inf
    n_users = int(users.max()) + 1 if n else 0
    for end in looks:
        arms = []
        for arm in (True, False):
            sel = (is_treatment[:end] == arm) & finite[:end]
            u = users[:end][sel]
            s = np.bincount(u, weights=v0[:end][sel], minlength=n_users)
            c = np.bincount(u, minlength=n_users).astype(np.float64)
            keep = c > 0
            arms.append(ratio_estimate(s[keep], c[keep]))
        t, c_est = arms
        if min(t.users, c_est.users) < options.burn_in_users or not (math.isfinite(t.se) and math.isfinite(c_est.se)):
            continue
        if tau is None:
            tau = max(options.relative_tau * abs(c_est.mean), 1e-12)
            out["tau"] = tau
        d, se = difference(t, c_est)
        half = msprt_half_width(se * se, tau, options.alpha)
        low, high = max(low, d - half), min(high, d + half)
        out["looks"] += 1
        out["diff"] = d
        if not out["decided"] and (low > 0 or high < 0):
            out.update(decided=True, decided_at=int(end), direction=1 if low > 0 else -1)
    out["low"], out["high"] = (finite_or_none(low), finite_or_none(high))
    return out


def peeking_fixed_horizon(
    values: np.ndarray,
    is_treatment: np.ndarray,
    *,
    step: int = 20,
    z: float = 1.959963984540054,
    min_requests: int = 40,
) -> bool:
    """The rule the issue retired, for the benchmark: a request-level 95% interval re-checked every
    ``step`` requests, 'decided' the first time it excludes zero."""
    values = np.asarray(values, dtype=np.float64)
    is_treatment = np.asarray(is_treatment, dtype=bool)
    for end in range(max(step, min_requests), len(values) + 1, step):
        d, se = request_level_diff(values[:end][is_treatment[:end]], values[:end][~is_treatment[:end]])
        if math.isfinite(se) and se > 0 and abs(d) > z * se:
            return True
    return False


# ------------------------------------------------------------------------------- fixed horizon


def fixed_horizon_plan(
    values: np.ndarray,
    users: np.ndarray,
    *,
    mde: float,
    relative: bool = True,
    alpha: float = 0.05,
    power: float = 0.8,
    weights: tuple[float, float] = (0.5, 0.5),
) -> dict[str, Any]:
    """Users (and requests) per variant needed to detect ``mde`` with a two-sided test.

    ``values``/``users``: per-request metric of the measurement period (e.g. the control); the
    user-level variance of the linearised ratio ``(S_u - R N_u) / mean(N)`` is what the plan uses."""
    if mde <= 0:
        raise RankerError("--mde must be > 0")
    if not (0 < alpha < 1 and 0 < power < 1):
        raise RankerError("--alpha and --power must be within (0, 1)")
    s, n = user_totals(values, users)
    if len(s) < 10:
        raise RankerError(f"only {len(s)} users measured: too few to estimate the variance (need >= 10)")
    r = float(s.sum() / n.sum())
    sigma2 = float(((s - r * n) / n.mean()).var(ddof=1))
    effect = mde * abs(r) if relative else mde
    if effect <= 0:
        raise RankerError("the metric's mean is 0: give --mde as an absolute difference (--absolute)")
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    wt, wc = weights[0] / sum(weights), weights[1] / sum(weights)
    total_users = z**2 * sigma2 * (1 / wt + 1 / wc) / effect**2
    per_user = float(n.mean())
    return {
        "rule": RULE_FIXED,
        "metric_mean": r,
        "user_variance": sigma2,
        "requests_per_user": per_user,
        "mde": mde,
        "mde_absolute": effect,
        "relative": relative,
        "alpha": alpha,
        "power": power,
        "users_total": math.ceil(total_users),
        "users_per_variant": {"treatment": math.ceil(total_users * wt), "control": math.ceil(total_users * wc)},
        "requests_total": math.ceil(total_users * per_user),
        "measured_users": len(s),
    }

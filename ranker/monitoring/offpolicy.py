"""Inverse-propensity evaluation on the served log's explored slots.

The scorer's exploration policy (:mod:`ranker.serving.exploration`) fills reserved slots by a uniform
draw among young candidates and logs, per served (request, item), the probability of that item at that
rank (``propensity`` in the served log, :mod:`ranker.monitoring.servedlog`). Each explored slot is a
round of a uniform-random logging policy: context = the request, action = the listing drawn,
propensity ``1 / pool size``, reward = a click on that (request, listing) within the attribution
window. Any other way of filling the slot from the same pool (a challenger's favourite young listing,
a boosted score...) can be evaluated on those rounds without serving it: IPS = mean(click x
target probability / propensity), with the estimators, bootstrap intervals and effective sample size
of :func:`ranker.training.ips.estimate` (the same code as the Open Bandit evaluation).

A target that is the logging policy itself gets weight 1 on every round, so its IPS is exactly the
logged click-through rate (the check that the logged propensities are the ones used).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ranker.errors import RankerError

__all__ = ["explored_rounds", "slot_ips"]


class OffPolicyError(RankerError):
    """The served log holds no explored rounds to evaluate."""


def explored_rounds(served: pd.DataFrame, clicks: pd.DataFrame, *, window: pd.Timedelta | None = None) -> pd.DataFrame:
    """One row per explored slot of the served rows: ``request_id, rank, item_id, propensity, click``.

    Args:
        served: served-log rows (:attr:`ServedFrame.rows <ranker.monitoring.servedlog.ServedFrame>`:
            at least ``request_id, request_ts, item_id, rank, propensity, explored``).
        clicks: click events with ``request_id, item_id, timestamp``.
        window: count a click only this long after the request (None: any later click).
    """
    rounds = served.loc[served.explored.astype(bool) & served["rank"].notna()]
    if rounds.empty:
        raise OffPolicyError("no explored slot in these served rows: is RANKER_EXPLORE_SLOTS set on the scorer?")
    rounds = rounds[["request_id", "request_ts", "rank", "item_id", "propensity"]].reset_index(drop=True)
    hits = rounds.merge(clicks[["request_id", "item_id", "timestamp"]], on=["request_id", "item_id"], how="left")
    ok = hits.timestamp.notna()
    if window is not None:
        ok &= (hits.timestamp - hits.request_ts) <= window
    clicked = hits.loc[ok, ["request_id", "item_id"]].drop_duplicates()
    key = pd.MultiIndex.from_frame(rounds[["request_id", "item_id"]])
    rounds["click"] = key.isin(pd.MultiIndex.from_frame(clicked)).astype(np.float64)
    rounds["rank"] = rounds["rank"].astype(np.int64)
    return rounds


def slot_ips(rounds: pd.DataFrame, target_probability: np.ndarray, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """The click-through rate a target policy would get in the explored slots, by IPS.

    ``target_probability``: per round, the probability that the target puts the logged item in that
    slot. Returns :func:`ranker.training.ips.estimate`'s fields plus ``logged_ctr`` and the paired
    interval of IPS - logged."""
    from ranker.training.ips import estimate

    r = rounds.click.to_numpy(dtype=np.float64)
    p = rounds.propensity.to_numpy(dtype=np.float64)
    if not (np.isfinite(p) & (p > 0) & (p <= 1)).all():
        raise OffPolicyError("every explored round needs a propensity in (0, 1]")
    w = np.asarray(target_probability, dtype=np.float64) / p
    boot = np.random.default_rng(seed).integers(0, len(r), size=(n_boot, len(r)))
    out = estimate(r, w, boot)
    b = out.pop("_boot")
    b_logged = r[boot].mean(axis=1)
    out["logged_ctr"] = float(r.mean())
    out["rounds"] = int(len(r))
    out["ips_minus_logged_ci"] = [float(np.percentile(b - b_logged, 2.5)), float(np.percentile(b - b_logged, 97.5))]
    return out

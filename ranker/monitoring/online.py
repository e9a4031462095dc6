"""Online metrics: served rankings (the served-feature log) joined with the later clicks, saves,
add-to-bags and purchases on the same (request, item) from the event log.

Per request (its returned list, ranks 1..n):

* ``ctr@k``: clicked items among the top k / the number shown in the top k;
* ``purchase``: 1 when any listed item was bought (purchase rate = its mean);
* ``revenue``: the summed price of the listed items bought (when listing prices are given);
* ``ndcg@k``: NDCG of the served order against the graded engagement (click 1, save 2,
  add_to_bag 3, purchase 4: the training label), over requests with any engagement, as offline;
* ``utility@k``: the mean hidden true utility of the top k returned items (when the simulator's
  replay wrote it, ``data/live/utility/``): what the user actually gained, free of click noise;

and the guardrails ``degraded`` (answered by the fallback) and ``latency_s`` (served wall time:
``logged_at - request_ts`` when the request carried no replay timestamp, else missing).

Statistics are at the user level (:mod:`ranker.monitoring.abstats`): every mean is a ratio of user
totals with a delta-method 95% interval. Variants of a surface are compared with the control (its
``control`` variant, else the first by name): the difference with its user-level 95% interval (read
once, at a planned horizon), the always-valid mSPRT decision (may be read at any time; this is what
``better`` reports), and the sample-ratio check of the users per variant against the configured
weights. A sample-ratio mismatch voids the comparison (``better`` is None, ``ok`` is False).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ranker.data.schema import EVENT_GRADE
from ranker.errors import RankerError
from ranker.monitoring import abstats as S
from ranker.monitoring.abstats import SequentialOptions
from ranker.training import metrics as M

ENGAGEMENT = {k: v for k, v in EVENT_GRADE.items() if v > 0}
Z95 = 1.959963984540054


def served_rankings(frames: list) -> pd.DataFrame:
    """The returned items of every logged request (rank not null), all feature services together."""
    cols = [
        "request_id",
        "request_ts",
        "logged_at",
        "surface",
        "user_id",
        "model_name",
        "model_version",
        "variant",
        "degraded",
        "item_id",
        "rank",
    ]
    parts = [f.rows.loc[f.rows["rank"].notna(), cols] for f in frames]
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)
    out["rank"] = out["rank"].astype(np.int64)
    return out


def listing_prices(path: Any) -> pd.Series | None:
    """``item_id -> price`` from a listings parquet (raw schema), or None when it is not there."""
    path = Path(path)
    if not path.exists():
        return None
    frame = pd.read_parquet(path, columns=["item_id", "price"])
    return frame.drop_duplicates("item_id").set_index("item_id").price.astype(float)


def per_request(
    served: pd.DataFrame,
    events: pd.DataFrame,
    *,
    k: int = 10,
    prices: pd.Series | None = None,
    utility: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per served request: surface, user_id, model_version, variant, logged_at, ctr@k,
    clicks@k, purchase, revenue (with ``prices``), ndcg@k (NaN without engagement), utility@k (with
    ``utility``: ``request_id, item_id, true_utility`` of served items; NaN for a request it lacks),
    degraded, latency_s."""
    if served.empty:
        raise RankerError("no served rankings in the window: nothing to measure")
    engaged = events[events.event_type.isin(list(ENGAGEMENT))]
    engaged = engaged[engaged.request_id.isin(served.request_id.unique())]
    grade = engaged.assign(grade=engaged.event_type.map(ENGAGEMENT)).groupby(["request_id", "item_id"]).grade.max()
    clicked = engaged[engaged.event_type == "click"].groupby(["request_id", "item_id"]).size().gt(0)
    bought = engaged[engaged.event_type == "purchase"].groupby(["request_id", "item_id"]).size().gt(0)
    key = pd.MultiIndex.from_arrays([served.request_id, served.item_id])
    frame = served.assign(
        label=grade.reindex(key).fillna(0).to_numpy(),
        click=clicked.reindex(key, fill_value=False).to_numpy(dtype=bool),
        purchase=bought.reindex(key, fill_value=False).to_numpy(dtype=bool),
    )
    if prices is not None:
        frame["revenue"] = np.where(frame.purchase, prices.reindex(frame.item_id).fillna(0.0).to_numpy(), 0.0)
    top = frame["rank"] <= k
    grouped = frame.groupby("request_id", sort=True)
    aggs = dict(
        surface=("surface", "first"),
        user_id=("user_id", "first"),
        model_name=("model_name", "first"),
        model_version=("model_version", "first"),
        variant=("variant", "first"),
        logged_at=("logged_at", "first"),
        request_ts=("request_ts", "first"),
        degraded=("degraded", "max"),
        shown=("item_id", "size"),
        purchase=("purchase", "max"),
    )
    if prices is not None:
        aggs["revenue"] = ("revenue", "sum")
    out = grouped.agg(**aggs)
    top_frame = frame[top].groupby("request_id", sort=True).agg(clicks=("click", "sum"), shown_k=("item_id", "size"))
    out = out.join(top_frame)
    if utility is not None:
        truth = utility.drop_duplicates(["request_id", "item_id"]).set_index(["request_id", "item_id"]).true_utility
        top_truth = frame.loc[top, ["request_id"]].assign(u=truth.reindex(key[top.to_numpy()]).to_numpy())
        out[f"utility@{k}"] = top_truth.groupby("request_id", sort=True).u.mean().reindex(out.index)
    out[f"clicks@{k}"] = out.clicks.fillna(0)
    out[f"ctr@{k}"] = out[f"clicks@{k}"] / out.shown_k.clip(lower=1)
    out["purchase"] = out.purchase.astype(float)
    out["degraded"] = out.degraded.astype(float)
    # Served wall time; a replayed request (context.timestamp) has no arrival time to measure from.
    latency = (
        pd.to_datetime(out.logged_at, utc=True) - pd.to_datetime(out.request_ts, unit="s", utc=True)
        if not pd.api.types.is_datetime64_any_dtype(out.request_ts)
        else pd.to_datetime(out.logged_at, utc=True) - pd.to_datetime(out.request_ts, utc=True)
    )
    seconds = latency.dt.total_seconds()
    out["latency_s"] = seconds.where((seconds >= 0) & (seconds < 60))
    ks = (k,)
    pg = M.per_group_metrics(frame.request_id.to_numpy(), frame.label.to_numpy(), -frame["rank"].to_numpy(float), ks=ks)
    out[f"ndcg@{k}"] = pg[f"ndcg@{k}"].reindex(out.index)
    return out.drop(columns=["clicks", "shown_k", "request_ts"]).sort_values("logged_at")


GUARDRAILS = ("latency_p99_ms", "degraded_share", "error_rate")


def _guardrails(part: pd.DataFrame) -> dict[str, Any]:
    latency = part.latency_s.dropna().to_numpy(dtype=float) if "latency_s" in part else np.array([])
    return {
        "latency_p99_ms": float(np.quantile(latency, 0.99) * 1000) if len(latency) else None,
        "latency_requests": int(len(latency)),
        "degraded_share": float(part.degraded.mean()) if "degraded" in part and len(part) else None,
        # Failed requests never reach the served log: the scorer counts them per variant
        # (ranker_variant_errors_total, alert RankerVariantErrorRate).
        "error_rate": None,
        "error_rate_source": "prometheus: ranker_variant_errors_total / (ranker_variant_requests_total + errors)",
    }


def metric_names(reqs: pd.DataFrame, k: int) -> list[str]:
    """The metrics measurable on ``reqs``: CTR@k, purchase rate, revenue per request (with prices),
    click NDCG@k and mean true utility@k (where the simulator provided it)."""
    names = [f"ctr@{k}", "purchase"]
    names += [m for m in ("revenue",) if m in reqs]
    names.append(f"ndcg@{k}")
    names += [m for m in (f"utility@{k}",) if m in reqs]
    return names


def online_report(
    reqs: pd.DataFrame,
    *,
    k: int = 10,
    weights: Mapping[str, Mapping[str, float]] | None = None,
    sequential: SequentialOptions | None = None,
) -> dict[str, Any]:
    """Metrics per (surface, model version, variant) with user-level intervals and guardrails, and
    each variant against the control: difference, always-valid decision, sample-ratio check.

    Args:
        reqs: :func:`per_request` output.
        weights: ``surface -> {variant: weight}`` as configured (``RANKER_VARIANTS``); without it the
            sample-ratio check says it was not run.
        sequential: the mSPRT's options (alpha, tau, burn-in, step).
    """
    sequential = sequential or SequentialOptions()
    metrics = metric_names(reqs, k)
    groups = []
    for (surface, version, variant), part in reqs.groupby(["surface", "model_version", "variant"], sort=True):
        entry: dict[str, Any] = {
            "surface": surface,
            "model_version": version,
            "variant": variant,
            "model_name": str(part.model_name.iloc[0]),
            "requests": int(len(part)),
            "users": int(part.user_id.nunique()),
        }
        for m in metrics:
            entry[m] = S.estimate(part[m].to_numpy(dtype=float), part.user_id.to_numpy()).to_dict()
        entry["guardrails"] = _guardrails(part)
        groups.append(entry)
    comparisons = []
    srm_failed = []
    for surface, part in reqs.sort_values("logged_at").groupby("surface", sort=True):
        variants = sorted(part.variant.unique())
        configured = dict((weights or {}).get(surface) or {})
        users = part.groupby("variant").user_id.nunique().to_dict()
        if configured:
            srm = S.srm_check({v: int(n) for v, n in users.items()}, configured)
        else:
            srm = {
                "ok": True,
                "p_value": None,
                "observed": {v: int(n) for v, n in users.items()},
                "verdict": "not checked: no configured weights (pass --variants or set RANKER_VARIANTS)",
            }
        if not srm["ok"]:
            srm_failed.append(surface)
        if len(variants) < 2:
            continue
        control = "control" if "control" in variants else variants[0]
        for treatment in (v for v in variants if v != control):
            pair = part[part.variant.isin([treatment, control])]
            is_t = (pair.variant == treatment).to_numpy()
            row: dict[str, Any] = {
                "surface": surface,
                "control": control,
                "treatment": treatment,
                "versions": {
                    v: sorted(part.loc[part.variant == v, "model_version"].unique()) for v in (control, treatment)
                },
                "requests": {v: int((part.variant == v).sum()) for v in (control, treatment)},
                "users": {v: int(users.get(v, 0)) for v in (control, treatment)},
                "srm": srm,
                "rule": S.RULE_MSPRT,
            }
            for m in metrics:
                values = pair[m].to_numpy(dtype=float)
                uid = pair.user_id.to_numpy()
                t = S.estimate(values[is_t], uid[is_t])
                c = S.estimate(values[~is_t], uid[~is_t])
                diff, se = S.difference(t, c)
                req_diff, req_se = S.request_level_diff(values[is_t], values[~is_t])
                seq = S.sequential_test(values, uid, is_t, sequential)
                winner = None
                if srm["ok"] and seq["decided"]:
                    winner = treatment if seq["direction"] > 0 else control
                row[m] = {
                    "diff": S.finite_or_none(diff),
                    "low": S.finite_or_none(diff - Z95 * se),
                    "high": S.finite_or_none(diff + Z95 * se),
                    "se": S.finite_or_none(se),
                    "request_level_se": S.finite_or_none(req_se),
                    "sequential": seq,
                    "better": winner,
                    "decided": bool(seq["decided"] and srm["ok"]),
                    "requests_needed": seq["decided_at"] if winner else None,
                }
            comparisons.append(row)
    return {
        "k": k,
        "metrics": metrics,
        "guardrails": list(GUARDRAILS),
        "groups": groups,
        "comparisons": comparisons,
        "requests": int(len(reqs)),
        "users": int(reqs.user_id.nunique()),
        "rule": S.RULE_MSPRT,
        "alpha": sequential.alpha,
        "srm_failed": srm_failed,
        "ok": not srm_failed,
    }


def timeline(reqs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Cumulative mean of ``metric`` per (surface, variant) in serving order (for the report)."""
    out = []
    for (surface, variant), part in reqs.sort_values("logged_at").groupby(["surface", "variant"], sort=True):
        values = part[metric].to_numpy(dtype=float)
        finite = np.isfinite(values)
        cum = np.cumsum(np.where(finite, values, 0.0)) / np.maximum(np.cumsum(finite), 1)
        out.append(
            pd.DataFrame(
                {
                    "surface": surface,
                    "variant": variant,
                    "n": np.arange(1, len(part) + 1),
                    "logged_at": part.logged_at.to_numpy(),
                    metric: cum,
                }
            )
        )
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


METRIC_LABELS = {"purchase": "purchase rate", "revenue": "revenue/request"}


def _fmt_value(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def online_table(report: dict[str, Any]) -> str:
    """The A/B table: per variant the user-level 95% intervals and the guardrails; per comparison the
    sample-ratio verdict, the difference and the always-valid decision with the rule that made it."""
    metrics = report["metrics"]
    labels = [METRIC_LABELS.get(m, m.upper() if m.startswith("ctr") else m) for m in metrics]
    head = f"{'surface':<7} {'variant':<10} {'version':<26} {'users':>6} {'requests':>8}  "
    lines = [
        "per variant: mean [95% interval, users resampled as the unit (delta method)]",
        head + "".join(f"{label:<26}" for label in labels) + "latency p99  degraded",
    ]

    def fmt(ci: dict) -> str:
        if ci["mean"] is None:
            return "-"
        if ci["low"] is None:
            return f"{ci['mean']:.4f}"
        return f"{ci['mean']:.4f} [{ci['low']:.4f}, {ci['high']:.4f}]"

    for g in report["groups"]:
        guard = g["guardrails"]
        p99 = "-" if guard["latency_p99_ms"] is None else f"{guard['latency_p99_ms']:.0f} ms"
        degraded = "-" if guard["degraded_share"] is None else f"{guard['degraded_share']:.1%}"
        lines.append(
            f"{g['surface']:<7} {g['variant']:<10} {g['model_version']:<26} {g['users']:>6} "
            f"{g['requests']:>8}  " + "".join(f"{fmt(g[m]):<26}" for m in metrics) + f"{p99:>11}  {degraded:>8}"
        )
    seen_srm = set()
    for c in report["comparisons"]:
        if c["surface"] not in seen_srm:
            seen_srm.add(c["surface"])
            lines.append(f"{c['surface']}: sample ratio {c['srm']['verdict']}")
            lines.append(f"{c['surface']}: decision rule {c['rule']}, alpha {report['alpha']}")
        for m, label in zip(metrics, labels, strict=False):
            r = c[m]
            seq = r["sequential"]
            if not c["srm"]["ok"]:
                verdict = "VOID (sample ratio mismatch)"
            elif r["better"]:
                verdict = f"{r['better']} is better (decided after {r['requests_needed']} requests)"
            elif seq["looks"] == 0:
                verdict = "not judged yet (burn-in)"
            else:
                verdict = "no decision yet"
            cs = (
                ""
                if seq["low"] is None and seq["high"] is None
                else f"; always-valid [{_fmt_value(seq['low'], '+.4f')}, {_fmt_value(seq['high'], '+.4f')}]"
            )
            lines.append(
                f"{c['surface']}: {c['treatment']} - {c['control']} {label}: {_fmt_value(r['diff'], '+.4f')} "
                f"[{_fmt_value(r['low'], '+.4f')}, {_fmt_value(r['high'], '+.4f')}]{cs} -> {verdict}"
            )
    return "\n".join(lines)

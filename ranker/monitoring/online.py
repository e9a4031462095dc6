"""Online metrics: served rankings (the served-feature log) joined with the later clicks, saves,
add-to-bags and purchases on the same (request, item) from the event log.

Per request (its returned list, ranks 1..n):

* ``ctr@k``: clicked items among the top k / the number shown in the top k;
* ``purchase``: 1 when any listed item was bought (purchase rate = its mean);
* ``ndcg@k``: NDCG of the served order against the graded engagement (click 1, save 2,
  add_to_bag 3, purchase 4: the training label), over requests with any engagement, as offline.

Means per (surface, model version, variant) come with percentile-bootstrap 95% intervals over
requests. Variants of a surface are compared with the control (its first variant in the log, by
name order unless ``control`` is present): the difference of the per-request means with a normal
95% interval (independent groups: different users), and the number of requests (both variants
together, in serving order) from which that interval excludes zero at every later checkpoint.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from ranker.data.schema import EVENT_GRADE
from ranker.errors import RankerError
from ranker.training import metrics as M

ENGAGEMENT = {k: v for k, v in EVENT_GRADE.items() if v > 0}


def served_rankings(frames: list) -> pd.DataFrame:
    """The returned items of every logged request (rank not null), all feature services together."""
    cols = ["request_id", "logged_at", "surface", "user_id", "model_name", "model_version", "variant", "item_id", "rank"]
    parts = [f.rows.loc[f.rows["rank"].notna(), cols] for f in frames]
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)
    out["rank"] = out["rank"].astype(np.int64)
    return out


def per_request(served: pd.DataFrame, events: pd.DataFrame, *, k: int = 10) -> pd.DataFrame:
    """One row per served request: surface, model_version, variant, logged_at, ctr@k, clicks@k,
    purchase, ndcg@k (NaN without engagement)."""
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
    top = frame["rank"] <= k
    grouped = frame.groupby("request_id", sort=True)
    out = grouped.agg(
        surface=("surface", "first"), model_name=("model_name", "first"), model_version=("model_version", "first"),
        variant=("variant", "first"), logged_at=("logged_at", "first"), shown=("item_id", "size"),
        purchase=("purchase", "max"),
    )
    top_frame = frame[top].groupby("request_id", sort=True).agg(clicks=("click", "sum"), shown_k=("item_id", "size"))
    out = out.join(top_frame)
    out[f"clicks@{k}"] = out.clicks.fillna(0)
    out[f"ctr@{k}"] = out[f"clicks@{k}"] / out.shown_k.clip(lower=1)
    out["purchase"] = out.purchase.astype(float)
    ks = (k,)
    pg = M.per_group_metrics(frame.request_id.to_numpy(), frame.label.to_numpy(), -frame["rank"].to_numpy(float), ks=ks)
    out[f"ndcg@{k}"] = pg[f"ndcg@{k}"].reindex(out.index)
    return out.drop(columns=["clicks", "shown_k"]).sort_values("logged_at")


def _diff_ci(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) < 2 or len(b) < 2:
        return {"diff": math.nan, "low": math.nan, "high": math.nan}
    diff = float(a.mean() - b.mean())
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    return {"diff": diff, "low": diff - 1.96 * se, "high": diff + 1.96 * se}


def requests_needed(reqs: pd.DataFrame, metric: str, treatment: str, control: str, *, step: int = 20) -> int | None:
    """Smallest number of requests (both variants, serving order) from which the 95% interval of
    ``treatment - control`` on ``metric`` excludes zero at every later checkpoint (every ``step``)."""
    reqs = reqs[reqs.variant.isin([treatment, control])].sort_values("logged_at")
    values = reqs[metric].to_numpy(dtype=float)
    is_t = (reqs.variant == treatment).to_numpy()
    checkpoints = list(range(step, len(reqs) + 1, step)) or [len(reqs)]
    if checkpoints[-1] != len(reqs):
        checkpoints.append(len(reqs))
    decided = []
    for n in checkpoints:
        ci = _diff_ci(values[:n][is_t[:n]], values[:n][~is_t[:n]])
        decided.append(bool(np.isfinite(ci["low"]) and (ci["low"] > 0 or ci["high"] < 0)))
    if not decided[-1]:
        return None
    first = len(decided) - 1
    while first > 0 and decided[first - 1]:
        first -= 1
    return checkpoints[first]


def online_report(reqs: pd.DataFrame, *, k: int = 10, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Metrics per (surface, model version, variant) with intervals, and the variant comparison."""
    metrics = [f"ctr@{k}", "purchase", f"ndcg@{k}"]
    groups = []
    for (surface, version, variant), part in reqs.groupby(["surface", "model_version", "variant"], sort=True):
        entry: dict[str, Any] = {"surface": surface, "model_version": version, "variant": variant,
                                 "model_name": str(part.model_name.iloc[0]), "requests": int(len(part))}
        for m in metrics:
            entry[m] = M.bootstrap_mean_ci(part[m].to_numpy(dtype=float), n_boot=n_boot, seed=seed)
        groups.append(entry)
    comparisons = []
    for surface, part in reqs.groupby("surface", sort=True):
        variants = sorted(part.variant.unique())
        if len(variants) < 2:
            continue
        control = "control" if "control" in variants else variants[0]
        for treatment in (v for v in variants if v != control):
            row: dict[str, Any] = {"surface": surface, "control": control, "treatment": treatment,
                                   "versions": {v: sorted(part.loc[part.variant == v, "model_version"].unique())
                                                for v in (control, treatment)},
                                   "requests": {v: int((part.variant == v).sum()) for v in (control, treatment)}}
            for m in metrics:
                a = part.loc[part.variant == treatment, m].to_numpy(dtype=float)
                b = part.loc[part.variant == control, m].to_numpy(dtype=float)
                ci = _diff_ci(a, b)
                winner = None
                if np.isfinite(ci["low"]) and ci["low"] > 0:
                    winner = treatment
                elif np.isfinite(ci["high"]) and ci["high"] < 0:
                    winner = control
                row[m] = {**ci, "better": winner, "requests_needed": requests_needed(part, m, treatment, control)}
            comparisons.append(row)
    return {"k": k, "metrics": metrics, "groups": groups, "comparisons": comparisons,
            "requests": int(len(reqs))}


def timeline(reqs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Cumulative mean of ``metric`` per (surface, variant) in serving order (for the report)."""
    out = []
    for (surface, variant), part in reqs.sort_values("logged_at").groupby(["surface", "variant"], sort=True):
        values = part[metric].to_numpy(dtype=float)
        finite = np.isfinite(values)
        cum = np.cumsum(np.where(finite, values, 0.0)) / np.maximum(np.cumsum(finite), 1)
        out.append(pd.DataFrame({"surface": surface, "variant": variant, "n": np.arange(1, len(part) + 1),
                                 "logged_at": part.logged_at.to_numpy(), metric: cum}))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def online_table(report: dict[str, Any]) -> str:
    k = report["k"]
    lines = [f"{'surface':<7} {'variant':<10} {'version':<26} {'requests':>8}  "
             f"{'CTR@' + str(k):<22} {'purchase rate':<22} {'click NDCG@' + str(k):<22}"]

    def fmt(ci: dict) -> str:
        if not ci["n"]:
            return "-"
        return f"{ci['mean']:.4f} [{ci['low']:.4f}, {ci['high']:.4f}]"

    for g in report["groups"]:
        lines.append(f"{g['surface']:<7} {g['variant']:<10} {g['model_version']:<26} {g['requests']:>8}  "
                     + "  ".join(f"{fmt(g[m]):<22}" for m in report["metrics"]))
    for c in report["comparisons"]:
        for m in report["metrics"]:
            r = c[m]
            verdict = f"{r['better']} is better" if r["better"] else "no significant difference yet"
            needed = f" (decided after {r['requests_needed']} requests)" if r["requests_needed"] else ""
            lines.append(f"{c['surface']}: {c['treatment']} - {c['control']} {m}: {r['diff']:+.4f} "
                         f"[{r['low']:+.4f}, {r['high']:+.4f}] -> {verdict}{needed}")
    return "\n".join(lines)

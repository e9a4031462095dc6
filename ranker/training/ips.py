"""Inverse-propensity (off-policy) evaluation: the click-through rate a learned ranking would have
had on a log that records its logging policy's propensities (Open Bandit), against the rate the
logging policy actually got.

Each logged row is a round: context x (user, time), slot k, the item a the logging policy showed
there with probability p = P(a in slot k | x), and the click r. The learned ranker scores every
candidate of the campaign available at that time with the features Feast returns for that moment
(the model's own feature service, point in time) and is evaluated as the deterministic policy
"slot j shows the j-th best item" (tied scores in random order, as the ranking metrics average
ties). Two position assumptions, both reported:

* ``independent`` (the Open Bandit Pipeline's standard): the click in a slot depends only on the
  context and the item in that slot. Weight w = P(the ranking puts a in slot k) / p.
* ``pbm`` (position-based model): P(click) = examination(slot) x appeal(x, item), the examination
  of each slot estimated from the uniform-random policy's click-through rate by slot (relative to
  slot 1). A logged click in any slot then informs the ranking's item in any slot:
  w = sum over slots j of P(a at rank j) * theta(j) / (L * theta(k) * p), L = number of slots.
  About L times more rows match, at the cost of the assumption.

The estimated value is the expected clicks per slot impression, comparable with the logged CTR.
IPS = mean(r w); self-normalised IPS = sum(r w) / sum(w) (lower variance, slightly biased).
Intervals: percentile bootstrap over rows (the same resamples for every policy, so the
difference with the logged CTR is paired), plus the normal-approximation interval of IPS. Matched
rows, matched clicks and the effective sample size (sum w)^2 / sum w^2 say how much evidence
there is: on the small Open Bandit sample it is very little, and the intervals show it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ranker.config import Settings
from ranker.data import schema
from ranker.data.open_bandit import PROPENSITIES, catalogue
from ranker.errors import RankerError
from ranker.features.reference import LISTING_KEYS


class IPSError(RankerError):
    """Off-policy evaluation cannot run on this log or model."""


def _examination(props: pd.DataFrame) -> dict[int, float] | None:
    """Relative examination by slot from the uniform-random policy's CTR by slot (slot 1 = 1)."""
    rnd = props[props.policy == "random"]
    if rnd.empty:
        return None
    ctr = rnd.groupby("position").click.mean()
    first = ctr.get(int(ctr.index.min()), 0.0)
    if first <= 0 or (ctr <= 0).any():
        return None
    return {int(k): float(v / first) for k, v in ctr.items()}


def _candidate_scores(
    settings: Settings, model, rows: pd.DataFrame, listings: pd.DataFrame
) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each logged row: (candidate item ids, model scores) with features fetched from Feast
    at the row's time."""
    from ranker.features.store import feature_store, in_feature_repo, service_spec
    from ranker.features.matrix import feature_matrix

    lst = listings.set_index("item_id")
    entity = []
    for i, row in enumerate(rows.itertuples(index=False)):
        items = catalogue(listings, row.campaign)
        live = lst.loc[items]
        ok = (live.created_at <= row.timestamp) & (live.sold_at.isna() | (live.sold_at > row.timestamp))
        items = items[ok.to_numpy()]
        entity.append(
            pd.DataFrame({"_row": i, "item_id": items, "user_id": row.user_id, "event_timestamp": row.timestamp})
        )
    frame = pd.concat(entity, ignore_index=True)
    for key in LISTING_KEYS:
        frame[key] = frame.item_id.map(lst[key]).astype(str)
    frame["request_ts"] = frame.event_timestamp.astype("int64") // 10**6
    frame["_order"] = np.arange(len(frame))
    store = feature_store(settings)
    spec = service_spec(store, model.card["feature_service"])
    if "query" in spec.entity_keys or "query_text" in spec.request_fields:
        frame["query"] = ""
        frame["query_text"] = ""
    with in_feature_repo(settings.feature_repo):
        out = store.get_historical_features(
            entity_df=frame, features=store.get_feature_service(model.card["feature_service"])
        ).to_df()
    out = out.sort_values("_order").reset_index(drop=True)
    scores = model.booster().predict(feature_matrix(out, spec), num_threads=2)
    result = []
    for _, part in out.assign(_score=scores).groupby("_row", sort=True):
        result.append((part.item_id.astype(str).to_numpy(), part._score.to_numpy()))
    return result


def _tie_block(items: np.ndarray, scores: np.ndarray, logged: str) -> tuple[int, int]:
    """The 1-based ranks [lo, hi] the logged item's score shares with its ties ((0, 0) if it is
    not a candidate). Tied items are ordered uniformly at random, as the ranking metrics average
    ties: the item is at each rank of its block with probability 1 / (hi - lo + 1)."""
    hit = np.flatnonzero(items == logged)
    if not len(hit):
        return 0, 0
    s = scores[hit[0]]
    return int((scores > s).sum()) + 1, int((scores >= s).sum())


def weights(
    blocks: np.ndarray,
    slots: np.ndarray,
    p: np.ndarray,
    *,
    n_slots: int,
    theta: dict[int, float] | None,
    assumption: str,
) -> np.ndarray:
    """Importance weights of a ranking (``blocks``: the rank range [lo, hi] it gives each logged
    item, ties shared uniformly), i.e. E[target probability] / logging propensity."""
    lo, hi = blocks[:, 0], blocks[:, 1]
    present = lo > 0
    size = np.where(present, hi - lo + 1, 1).astype(np.float64)
    if assumption == "independent":
        return np.where(present & (lo <= slots) & (slots <= hi), 1.0 / size, 0.0) / p
    if theta is None:
        raise IPSError("the pbm estimator needs uniform-random logging rows to estimate examination by slot")
    th = np.array([theta.get(j, np.nan) for j in range(1, n_slots + 1)])
    num = np.zeros(len(lo))
    for j in range(1, n_slots + 1):
        num += np.where(present & (lo <= j) & (j <= hi), th[j - 1], 0.0)
    th_k = th[np.clip(slots, 1, n_slots) - 1]
    return num / (size * n_slots * th_k * p)


def _uniform_weights(n_cand: np.ndarray, slots, p, *, n_slots, theta, assumption) -> np.ndarray:
    """The uniform-random ranking as a stochastic policy: each candidate is in a slot w.p. 1/N."""
    if assumption == "independent":
        return 1.0 / (n_cand * p)
    if theta is None:
        raise IPSError("the pbm estimator needs uniform-random logging rows")
    th = np.vectorize(lambda k: theta.get(int(k), np.nan))
    total = sum(theta.get(j, 0.0) for j in range(1, n_slots + 1))
    return total / (n_cand * n_slots * th(slots) * p)


def estimate(r: np.ndarray, w: np.ndarray, boot: np.ndarray) -> dict:
    """IPS and SNIPS with bootstrap (percentile) and analytic intervals."""
    n = len(r)
    rw = r * w
    ips = float(rw.mean())
    se = float(rw.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    b_ips = rw[boot].mean(axis=1)
    sw = w[boot].sum(axis=1)
    b_snips = np.where(sw > 0, rw[boot].sum(axis=1) / np.where(sw > 0, sw, 1), np.nan)
    total_w = float(w.sum())
    return {
        "ips": ips,
        "ips_ci": [float(np.percentile(b_ips, 2.5)), float(np.percentile(b_ips, 97.5))],
        "ips_normal_ci": [ips - 1.96 * se, ips + 1.96 * se],
        "snips": float(rw.sum() / total_w) if total_w > 0 else None,
        "snips_ci": [float(np.nanpercentile(b_snips, 2.5)), float(np.nanpercentile(b_snips, 97.5))]
        if np.isfinite(b_snips).any()
        else None,
        "matched_rows": int((w > 0).sum()),
        "matched_clicks": int(((w > 0) & (r > 0)).sum()),
        "ess": float(total_w**2 / (w**2).sum()) if (w > 0).any() else 0.0,
        "_boot": b_ips,
    }


def evaluate_ips(
    settings: Settings,
    model_dir: Path,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    max_rows: int | None = None,
    write: bool = True,
) -> dict:
    """Off-policy CTR of the model's ranking on the logged rounds of its test window, per logging
    policy; stored in the card under ``off_policy`` (when ``write``)."""
    from ranker.training.evaluate import _popularity, load_model
    from ranker.training.train import Split

    path = settings.raw_dir / f"{PROPENSITIES}.parquet"
    if not path.exists():
        raise IPSError(
            f"{path} not found: off-policy evaluation needs a log with propensities (ranker data import --format "
            "open-bandit)"
        )
    model = load_model(model_dir)
    split = Split.from_dict(model.card["split"])
    props = pd.read_parquet(path)
    props["timestamp"] = pd.to_datetime(props.timestamp, utc=True)
    theta = _examination(props)
    test = props[props.timestamp >= split.valid_end].reset_index(drop=True)
    if test.empty:
        raise IPSError(f"no logged rounds after {split.valid_end} (the model's test window)")
    if max_rows is not None and len(test) > max_rows:
        test = (
            test.sample(n=max_rows, random_state=seed).sort_values(["timestamp", "request_id"]).reset_index(drop=True)
        )
    listings = schema.read_table(settings.raw_dir, schema.LISTINGS)
    cands = _candidate_scores(settings, model, test, listings)
    n_slots = int(props.position.max())
    model_ranks = np.array(
        [_tie_block(items, s, a) for (items, s), a in zip(cands, test.item_id, strict=False)]
    ).reshape(-1, 2)
    all_items = pd.Series(np.concatenate([items for items, _ in cands])).unique()
    pop = pd.Series(
        _popularity(settings, pd.Series(all_items), split, model.card["training_window"]["start"]), index=all_items
    )
    pop_ranks = np.array(
        [
            _tie_block(items, pop.reindex(items).to_numpy(), a)
            for (items, _), a in zip(cands, test.item_id, strict=False)
        ]
    ).reshape(-1, 2)
    n_cand = np.array([len(items) for items, _ in cands], dtype=np.float64)
    rng = np.random.default_rng(seed)
    out: dict = {
        "window": {"start": split.valid_end.isoformat(), "rows": int(len(test))},
        "slots": n_slots,
        "examination": theta,
        "assumptions": {
            "independent": "click in a slot depends only on the context and that slot's item (OBP standard)",
            "pbm": "click = examination(slot) x appeal; examination from the random policy's CTR by slot",
        },
        "policies": {},
    }
    for policy, part_idx in [("all", np.arange(len(test)))] + [
        (p, np.flatnonzero(test.policy.to_numpy() == p)) for p in sorted(test.policy.unique())
    ]:
        if len(part_idx) == 0:
            continue
        r = test.click.to_numpy(dtype=np.float64)[part_idx]
        p = test.propensity.to_numpy(dtype=np.float64)[part_idx]
        k = test.position.to_numpy()[part_idx]
        boot = rng.integers(0, len(part_idx), size=(n_boot, len(part_idx)))
        b_logged = r[boot].mean(axis=1)
        entry: dict = {
            "rows": int(len(part_idx)),
            "clicks": int(r.sum()),
            "logged_ctr": float(r.mean()),
            "logged_ctr_ci": [float(np.percentile(b_logged, 2.5)), float(np.percentile(b_logged, 97.5))],
            "estimators": {},
        }
        for assumption in ("independent", "pbm"):
            if assumption == "pbm" and theta is None:
                continue
            per: dict = {}
            for name, w in (
                ("model", weights(model_ranks[part_idx], k, p, n_slots=n_slots, theta=theta, assumption=assumption)),
                ("popularity", weights(pop_ranks[part_idx], k, p, n_slots=n_slots, theta=theta, assumption=assumption)),
                (
                    "uniform_random",
                    _uniform_weights(n_cand[part_idx], k, p, n_slots=n_slots, theta=theta, assumption=assumption),
                ),
            ):
                est = estimate(r, w, boot)
                b = est.pop("_boot")
                est["ips_minus_logged_ci"] = [
                    float(np.percentile(b - b_logged, 2.5)),
                    float(np.percentile(b - b_logged, 97.5)),
                ]
                per[name] = est
            entry["estimators"][assumption] = per
        out["policies"][policy] = entry
    if write:
        card_path = Path(model_dir) / "card.json"
        card = json.loads(card_path.read_text())
        card["off_policy"] = out
        card_path.write_text(json.dumps(card, indent=2, allow_nan=False, default=_none_for_nan))
    return out


def _none_for_nan(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def ips_table(result: dict) -> str:
    """The comparison as text: per logging policy, the logged CTR and each ranking's estimates."""

    def pct(x):
        return "   n/a" if x is None or not np.isfinite(x) else f"{100 * x:6.3f}"

    def ci(pair):
        return "[   n/a,    n/a]" if not pair else f"[{pct(pair[0])}, {pct(pair[1])}]"

    lines = [
        f"Off-policy CTR (%) on the {result['window']['rows']:,} logged rounds after {result['window']['start']} "
        f"(95% bootstrap intervals; examination by slot: "
        + (", ".join(f"{k}: {v:.2f}" for k, v in (result["examination"] or {}).items()) or "n/a")
        + ")"
    ]
    for policy, e in result["policies"].items():
        lines.append(
            f"logging policy {policy}: {e['rows']:,} rounds, {e['clicks']} clicks, "
            f"actual CTR {pct(e['logged_ctr'])} {ci(e['logged_ctr_ci'])}"
        )
        for assumption, per in e["estimators"].items():
            for name, est in per.items():
                lines.append(
                    f"  {assumption:<11} {name:<14} IPS {pct(est['ips'])} {ci(est['ips_ci'])}  "
                    f"SNIPS {pct(est['snips'])} {ci(est['snips_ci'])}  IPS-actual {ci(est['ips_minus_logged_ci'])}  "
                    f"matched {est['matched_rows']} rows / {est['matched_clicks']} clicks, ESS {est['ess']:.0f}"
                )
    return "\n".join(lines)

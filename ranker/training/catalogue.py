"""Full-catalogue evaluation for interaction logs (issue 17, item 4).

Sampled negatives (``ranker dataset build --negatives K``) make ranking easy: a positive against K
uniformly drawn listings. What a recommender faces is the whole catalogue. This module ranks, for
each test user, **every listing live at the test split's start** against what the user engaged
with afterwards:

* ``T`` is the start of the model's test window, the split's ``valid_end`` (the same time split
  ``ranker evaluate`` uses: requests at or after it are the test set).
* Live at T: ``created_at <= T`` and not sold before T (``sold_at`` null or ``>= T``), from the
  canonical listings table. The catalogue is never sampled.
* Per user, the candidates are the live listings minus those the user engaged with (click, save,
  add_to_bag, purchase, any surface) before T.
* Relevance: **graded**, the best engagement of the user with the listing in the test window
  ``[T, last event]`` (``schema.EVENT_GRADE``: click 1 .. purchase 4; gain ``2**grade - 1`` as in
  training). Recall counts any engagement (grade > 0).
* Test users: users with at least one engagement in the test window on one of their candidates
  (an engagement with a listing created after T cannot be ranked at T). A seeded sample of them
  (``users``, default 500) is scored; every ranker is scored on the same users.
* Metrics per user, averaged over users: NDCG@10, Recall@10, Recall@50; ties are averaged
  (:mod:`ranker.training.metrics`), so a constant score gets a random ordering's expectation.

Rankers: ``model`` (the model's feature service through Feast's point-in-time join at T, the
training path, in chunks), ``popularity`` (engagements before T), ``popularity_7d`` (engagements
in the 7 days before T), ``ease`` (EASE, Steck 2019, closed form in numpy on the user x item
matrix of engagements before T restricted to the ``ease_top_n`` most engaged listings; listings
outside them score below every listing inside) and ``random`` (seeded). Paired bootstrap over
users (seeded) of model - best popularity and model - EASE.

Computing the metrics only needs, per user, the candidates whose score reaches the user's 50th
best score (a tie block straddling it included) plus the relevant ones: every other candidate
sits below rank 50 and changes none of NDCG@10, Recall@10, Recall@50. So scores are kept as a
dense users x live-listings block per chunk of users and only that head is ranked.

Training uses the same construction on the validation window (:class:`CatalogueValidation`: the
listings live at ``train_end``, users who engaged in ``[train_end, valid_end)``) as its early-stopping
metric for sampled groups; the deploy gate uses the per-user NDCG@10 of the test window
(:mod:`ranker.registry.evidence`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from ranker.data import schema
from ranker.errors import RankerError
from ranker.training import metrics

DEFAULT_USERS = 500
DEFAULT_EASE_LAMBDA = 200.0
DEFAULT_EASE_TOP_N = 4000
RECENT_DAYS = 7
K_NDCG = 10
K_RECALL = (10, 50)
METRICS = ("ndcg@10", "recall@10", "recall@50")
BASELINES = ("popularity", "popularity_7d", "ease", "random")
POPULARITY_BASELINES = ("popularity", "popularity_7d")
# Below every score EASE gives a listing inside its top-N (finite, so ties stay ties).
_OUTSIDE = -1.0e30


class CatalogueError(RankerError):
    """A full-catalogue evaluation cannot run on this data; the message says why."""


@dataclass(frozen=True)
class CatalogueTask:
    """What every ranker is scored on: the sampled test users, the live listings at ``start`` and,
    per user, the candidates (live minus engaged before) with their test-window grades."""

    start: pd.Timestamp
    end: pd.Timestamp  # the last event of the log (the test window is [start, end])
    users: np.ndarray  # sampled test user ids (str), sorted
    items: np.ndarray  # live listing ids (str), sorted
    excluded: np.ndarray  # sorted int64 codes u * n_items + i of (user, item) engaged before start
    relevant: np.ndarray  # sorted int64 codes of (user, item) candidates engaged in the window
    grade: np.ndarray  # grade of each ``relevant`` code
    history: pd.DataFrame  # engagements before start: user_id, item_id, timestamp (all users)
    test_users_total: int  # test users before sampling
    seed: int
    stats: dict = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    def candidate_mask(self, rows: slice) -> np.ndarray:
        """Bool (users in ``rows``) x items: True where the listing is a candidate for the user."""
        u = np.arange(self.n_users)[rows]
        mask = np.ones((len(u), self.n_items), dtype=bool)
        lo, hi = np.searchsorted(self.excluded, [u[0] * self.n_items, (u[-1] + 1) * self.n_items]) if len(u) else (0, 0)
        codes = self.excluded[lo:hi] - u[0] * self.n_items
        mask.reshape(-1)[codes] = False
        return mask

    def label_block(self, rows: slice) -> np.ndarray:
        """Grades (users in ``rows``) x items (0 = not engaged in the test window)."""
        u = np.arange(self.n_users)[rows]
        block = np.zeros((len(u), self.n_items), dtype=np.float64)
        if len(u):
            lo, hi = np.searchsorted(self.relevant, [u[0] * self.n_items, (u[-1] + 1) * self.n_items])
            block.reshape(-1)[self.relevant[lo:hi] - u[0] * self.n_items] = self.grade[lo:hi]
        return block


def engagements(events: pd.DataFrame) -> pd.DataFrame:
    """Engagement events (not impressions) with their grade: user_id, item_id, timestamp, grade."""
    eng = events[events.event_type.astype(str) != "impression"]
    return pd.DataFrame(
        {
            "user_id": eng.user_id.astype(str).to_numpy(),
            "item_id": eng.item_id.astype(str).to_numpy(),
            "timestamp": pd.to_datetime(eng.timestamp, utc=True).to_numpy(),
            "grade": eng.event_type.astype(str).map(schema.EVENT_GRADE).fillna(1).astype(np.int64).to_numpy(),
        }
    ).assign(timestamp=lambda d: pd.to_datetime(d.timestamp, utc=True))


def live_items(listings: pd.DataFrame, start: pd.Timestamp) -> np.ndarray:
    """Ids (sorted) of the listings live at ``start``: created at or before it, not sold before it."""
    created = pd.to_datetime(listings.created_at, utc=True)
    sold = pd.to_datetime(listings.sold_at, utc=True)
    live = (created <= start) & (sold.isna() | (sold >= start))
    return np.sort(listings.item_id.astype(str).to_numpy()[live.to_numpy()])


def build_task(
    events: pd.DataFrame,
    listings: pd.DataFrame,
    start: pd.Timestamp,
    *,
    users: int | None = DEFAULT_USERS,
    seed: int = 0,
    end: pd.Timestamp | None = None,
) -> CatalogueTask:
    """The full-catalogue task at ``start`` from raw events and listings (module docstring).

    ``users``: how many test users to sample (seeded); None or more than there are = all.
    ``end``: the window is ``[start, end)`` (default: to the last event; training's validation
    uses ``[train_end, valid_end)``)."""
    start = pd.Timestamp(start)
    start = start.tz_localize("UTC") if start.tzinfo is None else start.tz_convert("UTC")
    eng = engagements(events)
    if eng.empty:
        raise CatalogueError("the log has no engagement events: nothing to evaluate against")
    items = live_items(listings, start)
    if not len(items):
        raise CatalogueError(f"no listing is live at {start.isoformat()} (created before it and not yet sold)")
    before = eng[eng.timestamp < start]
    after = eng[eng.timestamp >= start]
    if end is not None:
        end = pd.Timestamp(end)
        end = end.tz_localize("UTC") if end.tzinfo is None else end.tz_convert("UTC")
        after = after[after.timestamp < end]
    item_pos = pd.Series(np.arange(len(items)), index=items)
    # best grade per (user, live item) in the test window
    window = after[after.item_id.isin(item_pos.index)]
    window = window.groupby(["user_id", "item_id"], sort=True).grade.max().reset_index()
    seen = before[before.item_id.isin(item_pos.index)][["user_id", "item_id"]].drop_duplicates()
    window = window.merge(seen.assign(_seen=True), on=["user_id", "item_id"], how="left")
    window = window[window._seen.isna()]
    all_test_users = np.sort(window.user_id.unique().astype(str))
    if not len(all_test_users):
        raise CatalogueError(
            f"no user engaged after {start.isoformat()} with a listing live then that they had not engaged with "
            "before: the test window holds nothing to rank"
        )
    if users is not None and users < len(all_test_users):
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(len(all_test_users), size=int(users), replace=False))
        test_users = all_test_users[chosen]
    else:
        test_users = all_test_users
    user_pos = pd.Series(np.arange(len(test_users)), index=test_users)
    n_items = len(items)

    def codes(frame: pd.DataFrame) -> np.ndarray:
        frame = frame[frame.user_id.isin(user_pos.index)]
        return user_pos.reindex(frame.user_id).to_numpy().astype(np.int64) * n_items + item_pos.reindex(
            frame.item_id
        ).to_numpy().astype(np.int64)

    excluded = np.unique(codes(seen))
    window = window[window.user_id.isin(user_pos.index)]
    rel = codes(window)
    order = np.argsort(rel)
    end = eng.timestamp.max() if end is None else end
    return CatalogueTask(
        start=start,
        end=end,
        users=test_users,
        items=items,
        excluded=excluded,
        relevant=rel[order],
        grade=window.grade.to_numpy()[order].astype(np.float64),
        history=before[["user_id", "item_id", "timestamp"]].reset_index(drop=True),
        test_users_total=int(len(all_test_users)),
        seed=int(seed),
        stats={
            "engagements_before": int(len(before)),
            "engagements_in_window": int(len(after)),
        },
    )


# --------------------------------------------------------------------------------------------------
# Baselines: each returns a scorer(rows) -> float64 block (users in rows) x items


Scorer = Callable[[slice], np.ndarray]


def popularity_scorer(task: CatalogueTask, *, days: float | None = None) -> Scorer:
    """Engagement events per listing before T (all time, or the last ``days`` days); same for every user."""
    hist = task.history
    if days is not None:
        hist = hist[hist.timestamp >= task.start - pd.Timedelta(days=days)]
    counts = hist.item_id.value_counts()
    score = counts.reindex(task.items).fillna(0).to_numpy(dtype=np.float64)

    def scorer(rows: slice) -> np.ndarray:
        n = len(range(task.n_users)[rows])
        return np.broadcast_to(score, (n, task.n_items))

    return scorer


def random_scorer(task: CatalogueTask, *, seed: int = 0) -> Scorer:
    """A seeded uniform score per (user, listing), independent of the chunking."""

    def scorer(rows: slice) -> np.ndarray:
        out = np.empty((len(range(task.n_users)[rows]), task.n_items))
        for j, u in enumerate(range(task.n_users)[rows]):
            out[j] = np.random.default_rng([seed, u]).random(task.n_items)
        return out

    return scorer


def ease_weights(x: np.ndarray, lam: float = DEFAULT_EASE_LAMBDA) -> np.ndarray:
    """EASE's item-item weights: P = (X^T X + lam I)^-1, B = I - P / diag(P) (column j divided by
    P_jj), so diag(B) = 0."""
    x = np.asarray(x, dtype=np.float64)
    gram = x.T @ x
    gram[np.diag_indices_from(gram)] += lam
    p = np.linalg.inv(gram)
    b = -p / np.diag(p)[None, :]
    b[np.diag_indices_from(b)] = 0.0
    return b


def ease_scorer(
    task: CatalogueTask, *, lam: float = DEFAULT_EASE_LAMBDA, top_n: int = DEFAULT_EASE_TOP_N
) -> tuple[Scorer, dict]:
    """EASE on the binary user x item matrix of engagements before T (every user with one), the
    items restricted to the ``top_n`` most engaged before T (ties by id). A test user's score of a
    live listing among them is row_u(X) @ B; the live listings outside score below all of them."""
    hist = task.history[["user_id", "item_id"]].drop_duplicates()
    counts = task.history.groupby("item_id").size().rename("n").reset_index()
    counts = counts.sort_values(["n", "item_id"], ascending=[False, True], kind="stable")
    kept = np.sort(counts.item_id.to_numpy()[:top_n].astype(str))
    hist = hist[hist.item_id.isin(kept)]
    users = np.sort(hist.user_id.unique().astype(str))
    col = pd.Series(np.arange(len(kept)), index=kept)
    row = pd.Series(np.arange(len(users)), index=users)
    x = np.zeros((len(users), len(kept)), dtype=np.float64)
    x[row.reindex(hist.user_id).to_numpy(), col.reindex(hist.item_id).to_numpy()] = 1.0
    t0 = time.perf_counter()
    b = ease_weights(x, lam) if len(kept) else np.zeros((0, 0))
    seconds = time.perf_counter() - t0
    live_col = col.reindex(task.items).to_numpy()  # NaN outside the top-N
    inside = ~np.isnan(live_col)
    b_live = b[:, live_col[inside].astype(np.int64)] if len(kept) else np.zeros((0, 0))
    test_row = row.reindex(task.users).to_numpy()

    def scorer(rows: slice) -> np.ndarray:
        idx = test_row[rows]
        out = np.full((len(idx), task.n_items), _OUTSIDE)
        have = ~np.isnan(idx)
        block = np.zeros((len(idx), int(inside.sum())))
        if have.any() and len(kept):
            block[have] = x[idx[have].astype(np.int64)] @ b_live
        out[:, inside] = block
        return out

    info = {
        "lambda": float(lam),
        "top_n": int(top_n),
        "items_in_matrix": int(len(kept)),
        "users_in_matrix": int(len(users)),
        "live_listings_inside": int(inside.sum()),
        "test_users_with_history": int((~np.isnan(test_row)).sum()),
        "fit_seconds": round(seconds, 2),
    }
    return scorer, info


# --------------------------------------------------------------------------------------------------
# Metrics


def _head(scores: np.ndarray, mask: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Bool block: the candidates at or above each user's k-th best candidate score, plus the
    relevant candidates (everything else is below rank k and changes no metric at k or less)."""
    work = np.where(mask, scores, -np.inf)
    if work.shape[1] == 0:
        return mask
    kth = min(k, work.shape[1]) - 1
    # the k-th best candidate score per row (-inf when a row has fewer candidates: all are kept)
    threshold = -np.partition(-work, kth, axis=1)[:, kth]
    return mask & ((work >= threshold[:, None]) | (labels > 0))


def block_metrics(scores: np.ndarray, mask: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """NDCG@10, Recall@10, Recall@50 per row (user) of a users x items block: candidates are
    ``mask``, graded ``labels``, ties averaged. Users without a relevant candidate get NaN."""
    scores = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(scores[mask]).all():
        raise CatalogueError("a ranker gave a NaN or infinite score to a candidate")
    head = _head(scores, mask, labels, max(K_RECALL))
    r, c = np.nonzero(head)
    s, lab = scores[r, c], labels[r, c]
    index = metrics.encode_groups(r)
    first = metrics.per_group_metrics(index, lab, s, ks=(K_NDCG,), recall_at=K_RECALL[0])
    second = metrics.per_group_metrics(index, lab, s, ks=(K_NDCG,), recall_at=K_RECALL[1])
    out = pd.DataFrame(np.nan, index=np.arange(len(scores)), columns=list(METRICS))
    out.loc[first.index, "ndcg@10"] = first["ndcg@10"].to_numpy()
    out.loc[first.index, "recall@10"] = first["recall@10"].to_numpy()
    out.loc[second.index, "recall@50"] = second["recall@50"].to_numpy()
    return out


def per_user_metrics(task: CatalogueTask, scorer: Scorer, *, chunk_users: int = 64) -> pd.DataFrame:
    """Per test user (index = user id), the metrics of one ranker over the whole catalogue."""
    parts = []
    for lo in range(0, task.n_users, chunk_users):
        rows = slice(lo, min(lo + chunk_users, task.n_users))
        part = block_metrics(scorer(rows), task.candidate_mask(rows), task.label_block(rows))
        part.index = task.users[rows]
        parts.append(part)
    return pd.concat(parts).rename_axis("user_id")


def summarise(per_user: dict[str, pd.DataFrame], *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Means (with a bootstrap interval of NDCG@10) per ranker and the paired bootstrap of
    model - best popularity (by mean NDCG@10) and model - EASE, over the same users."""
    rankers: dict = {}
    for name, frame in per_user.items():
        ci = metrics.bootstrap_mean_ci(frame["ndcg@10"].to_numpy(), n_boot=n_boot, seed=seed)
        rankers[name] = {m: _finite(frame[m].mean()) for m in METRICS}
        rankers[name]["ndcg@10_ci"] = [_finite(ci["low"]), _finite(ci["high"])]
        rankers[name]["users"] = int(frame["ndcg@10"].notna().sum())
    out: dict = {"rankers": rankers, "ci": {}}
    if "model" not in per_user:
        return out
    pops = [p for p in POPULARITY_BASELINES if p in per_user]
    if pops:
        best = max(pops, key=lambda p: rankers[p]["ndcg@10"] if rankers[p]["ndcg@10"] is not None else -1.0)
        out["best_popularity"] = best
        out["ci"]["model-vs-best_popularity"] = _paired(per_user["model"], per_user[best], best, n_boot, seed)
        if rankers[best]["ndcg@10"]:
            out["model_over_best_popularity"] = _finite(rankers["model"]["ndcg@10"] / rankers[best]["ndcg@10"])
    if "ease" in per_user:
        out["ci"]["model-vs-ease"] = _paired(per_user["model"], per_user["ease"], "ease", n_boot, seed)
    return out


def _paired(a: pd.DataFrame, b: pd.DataFrame, baseline: str, n_boot: int, seed: int) -> dict:
    ci = metrics.paired_bootstrap_ci(
        a["ndcg@10"].to_numpy(), b.reindex(a.index)["ndcg@10"].to_numpy(), n_boot=n_boot, seed=seed
    )
    return {"metric": "ndcg@10", "baseline": baseline, **{k: _finite(v) for k, v in ci.items()}}


def _finite(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


# --------------------------------------------------------------------------------------------------
# The model: every (user, candidate) pair through the training path (Feast's point-in-time join at T)


def model_scores(settings, model, task: CatalogueTask, *, chunk_rows: int = 400_000, timings: dict | None = None):
    """The model's score of every (test user, candidate) pair, a float32 users x items block (NaN
    where the listing is not a candidate). Features come from ``get_historical_features`` with the
    model's feature service and every row at T, in the entity layout the training-set build uses
    (:func:`ranker.training.dataset._entity_frame`), so each pair sees what a training row at T saw."""
    return score_models(settings, [model], task, chunk_rows=chunk_rows, timings=timings)[0]


def score_models(
    settings, models: list, task: CatalogueTask, *, chunk_rows: int = 400_000, timings: dict | None = None
) -> list[np.ndarray]:
    """:func:`model_scores` of several models on the same task; the features of each distinct
    feature service are fetched once (the gate scores champion and challenger this way)."""
    by_service: dict[str, list[int]] = {}
    for i, model in enumerate(models):
        by_service.setdefault(model.card["feature_service"], []).append(i)
    out: list = [None] * len(models)
    for service_name, members in by_service.items():
        blocks = _score_service(
            settings, service_name, [models[i] for i in members], task, chunk_rows=chunk_rows, timings=timings
        )
        for i, block in zip(members, blocks, strict=True):
            out[i] = block
    return out


def _score_service(
    settings, service_name: str, models: list, task: CatalogueTask, *, chunk_rows: int, timings: dict | None
) -> list[np.ndarray]:
    columns = []
    for model in models:
        columns.append(list(model.features))
    boosters = [model.booster() for model in models]
    out = [np.full((task.n_users, task.n_items), np.nan, dtype=np.float32) for _ in models]
    clock = timings if timings is not None else {}
    for r, c, matrix, names in pair_features(settings, service_name, task, chunk_rows=chunk_rows, timings=clock):
        t0 = time.perf_counter()
        for block, booster, feats in zip(out, boosters, columns, strict=True):
            missing = [f for f in feats if f not in names]
            if missing:
                raise CatalogueError(
                    f"feature service {service_name} lacks {len(missing)} of the model's features "
                    f"({', '.join(missing[:5])})"
                )
            x = np.ascontiguousarray(matrix[:, [names.index(f) for f in feats]])
            block[r, c] = booster.predict(x, num_threads=2).astype(np.float32)
        clock["predict"] = clock.get("predict", 0.0) + time.perf_counter() - t0
    return out


def pair_features(settings, service_name: str, task: CatalogueTask, *, chunk_rows: int = 400_000, timings=None):
    """Yield ``(user rows, item columns, float32 feature matrix, feature names)`` for every
    (user, candidate) pair of ``task``, users in order (a user's pairs in one chunk, by item):
    ``get_historical_features`` with the service, every row at T, in the entity layout of the
    training-set build (:func:`ranker.training.dataset._entity_frame`), defaults applied."""
    import ibis
    import pyarrow as pa

    from ranker.features.store import feature_store, in_feature_repo, service_spec
    from ranker.training.dataset import _duckdb_settings, _entity_frame, _features_in_entity_order

    clock = timings if timings is not None else {}
    t0 = time.perf_counter()
    store = feature_store(settings)
    spec = service_spec(store, service_name)
    service = store.get_feature_service(service_name)
    listings = schema.read_table(settings.raw_dir, schema.LISTINGS)
    attrs = listings.assign(item_id=listings.item_id.astype(str)).set_index("item_id").reindex(task.items)
    attr_cols = [c.name for c in schema.LISTINGS.columns if c.name not in ("item_id", "created_at", "sold_at")]
    item_arrays = {c: pa.array(attrs[c].astype(object).where(attrs[c].notna(), None).to_numpy()) for c in attr_cols}
    item_ids = pa.array(task.items.astype(object))
    user_ids = pa.array(task.users.astype(object))
    per_user = max(1, chunk_rows // max(task.n_items, 1))
    names = list(spec.features)
    clock["setup"] = clock.get("setup", 0.0) + time.perf_counter() - t0
    con = ibis.get_backend().con
    previous = _duckdb_settings(con, {"memory_limit": "2GB"})
    try:
        with in_feature_repo(settings.feature_repo):
            for lo in range(0, task.n_users, per_user):
                t1 = time.perf_counter()
                rows = slice(lo, min(lo + per_user, task.n_users))
                r, c = np.nonzero(task.candidate_mask(rows))
                if not len(r):
                    continue
                take_i = pa.array(c)
                chunk = pa.table(
                    {
                        "user_id": user_ids.take(pa.array(r + lo)),
                        "item_id": item_ids.take(take_i),
                        **{name: arr.take(take_i) for name, arr in item_arrays.items()},
                        "event_timestamp": pa.array(
                            np.full(len(r), task.start.value // 1000, dtype=np.int64), pa.timestamp("us", tz="UTC")
                        ),
                        "query": pa.array([""] * len(r)),
                    }
                )
                entity_df = _entity_frame(chunk, spec)
                job = store.get_historical_features(entity_df=entity_df, features=service)
                with pd.option_context("future.infer_string", True):
                    result = job.to_arrow()
                matrix = _features_in_entity_order(result, spec, len(r))
                clock["features"] = clock.get("features", 0.0) + time.perf_counter() - t1
                clock["rows"] = clock.get("rows", 0) + len(r)
                yield r + lo, c, matrix, names
    finally:
        _duckdb_settings(con, previous)


def scores_scorer(block: np.ndarray) -> Scorer:
    """A scorer over a precomputed users x items block (NaN off the candidates)."""
    return lambda rows: np.nan_to_num(block[rows].astype(np.float64), nan=0.0)


def read_engagement_log(settings) -> pd.DataFrame:
    """The raw events without impressions (user_id, item_id, timestamp, event_type)."""
    import duckdb

    path = settings.raw_dir / schema.EVENTS.file
    if not path.exists():
        raise CatalogueError(f"{path} not found: run `ranker data import` (or simulate) first")
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone='UTC'")
        df = con.execute(
            f"""SELECT user_id, item_id, timestamp, event_type FROM read_parquet('{path}')
                WHERE event_type <> 'impression'"""
        ).df()
    finally:
        con.close()
    df["timestamp"] = pd.to_datetime(df.timestamp, utc=True)
    return df


def catalogue_task(settings, model, *, users: int | None = DEFAULT_USERS, seed: int = 0) -> CatalogueTask:
    """The task at the start of ``model``'s test window (its split's ``valid_end``)."""
    valid_end = pd.Timestamp(model.card["split"]["valid_end"])  # the card's split (train imports this module)
    listings = schema.read_table(settings.raw_dir, schema.LISTINGS)
    return build_task(read_engagement_log(settings), listings, valid_end, users=users, seed=seed)


def evaluate_catalogue(
    settings,
    model,
    *,
    users: int | None = DEFAULT_USERS,
    seed: int = 0,
    n_boot: int = 1000,
    ease_lambda: float = DEFAULT_EASE_LAMBDA,
    ease_top_n: int = DEFAULT_EASE_TOP_N,
    chunk_rows: int = 400_000,
    task: CatalogueTask | None = None,
) -> tuple[dict, dict[str, pd.DataFrame]]:
    """The full-catalogue evaluation of ``model`` (a :class:`ranker.training.evaluate.ModelArtefact`)
    and the baselines; returns the JSON-ready result and the per-user metrics of each ranker."""
    started = time.perf_counter()
    seconds: dict = {}
    t = time.perf_counter()
    task = task or catalogue_task(settings, model, users=users, seed=seed)
    seconds["task"] = round(time.perf_counter() - t, 2)
    timings: dict = {}
    t = time.perf_counter()
    scores = model_scores(settings, model, task, chunk_rows=chunk_rows, timings=timings)
    seconds["model_scoring"] = round(time.perf_counter() - t, 2)
    seconds["model_features"] = round(timings.get("features", 0.0), 2)
    seconds["model_predict"] = round(timings.get("predict", 0.0), 2)
    t = time.perf_counter()
    ease, ease_info = ease_scorer(task, lam=ease_lambda, top_n=ease_top_n)
    scorers: dict[str, Scorer] = {
        "model": scores_scorer(scores),
        "popularity": popularity_scorer(task),
        "popularity_7d": popularity_scorer(task, days=RECENT_DAYS),
        "ease": ease,
        "random": random_scorer(task, seed=seed),
    }
    per_user = {name: per_user_metrics(task, scorer) for name, scorer in scorers.items()}
    seconds["baselines_and_metrics"] = round(time.perf_counter() - t, 2)
    summary = summarise(per_user, n_boot=n_boot, seed=seed)
    n_candidates = task.n_users * task.n_items - len(task.excluded)
    seconds["total"] = round(time.perf_counter() - started, 2)
    result = {
        "at": task.start.isoformat(),
        "test_window_end": task.end.isoformat(),
        "relevance": "graded: the user's best engagement with the listing in [at, test_window_end] "
        "(click 1, save 2, add_to_bag 3, purchase 4; gain 2^grade - 1); recall counts any engagement",
        "candidates": "every listing live at `at` (created at or before it, not sold before it) minus the "
        "listings the user engaged with before it",
        "listings_live": int(task.n_items),
        "test_users": int(task.test_users_total),
        "users_scored": int(task.n_users),
        "users_sampled": task.n_users < task.test_users_total,
        "user_sample_seed": int(task.seed),
        "pairs_scored": int(n_candidates),
        "pairs_scored_excluded": int(len(task.excluded)),
        "relevant_pairs": int(len(task.relevant)),
        "ease": ease_info,
        "popularity_7d_days": RECENT_DAYS,
        "n_bootstrap": int(n_boot),
        "seconds": seconds,
        **summary,
    }
    return result, per_user


# --------------------------------------------------------------------------------------------------
# Model selection for sampled groups: early stopping on the full catalogue of the validation window

VALIDATION_USERS = 200


@dataclass(frozen=True, eq=False)
class CatalogueValidation:
    """The validation window's full catalogue as LightGBM validation rows: every (user, candidate)
    pair at the split's ``train_end`` for a seeded sample of the users who engaged in
    ``[train_end, valid_end)``, with :meth:`feval`: the tie-averaged Recall@50 (the early-stopping
    metric) and NDCG@10, means over users. On sampled groups the validation NDCG@10 saturates after
    a tree or two (uniform negatives are easy), so early stopping on it keeps a model that ranks the
    full catalogue no better than popularity. Recall@50 rather than NDCG@10: on 200 users with a few
    engagements each the full-catalogue NDCG@10 is noise from one iteration to the next (measured on
    the example log: 0.0025-0.0056 over iterations 1-300, uncorrelated with the test window's), while
    Recall@50 rises with the test NDCG@10 up to ~200 trees and falls after."""

    task: CatalogueTask
    rows: np.ndarray
    cols: np.ndarray
    x: np.ndarray  # float32 pairs x model features
    label: np.ndarray  # grade per pair
    mask: np.ndarray  # users x items candidates
    labels: np.ndarray  # users x items grades

    def feval(self, preds, _data) -> list[tuple[str, float, bool]]:
        """Recall@50 first (the early-stopping metric), then NDCG@10, both means over users."""
        block = np.zeros(self.mask.shape)
        block[self.rows, self.cols] = preds
        per_user = block_metrics(block, self.mask, self.labels)
        return [
            ("recall@50", float(per_user["recall@50"].mean()), True),
            ("ndcg@10", float(per_user["ndcg@10"].mean()), True),
        ]

    def info(self) -> dict:
        return {
            "basis": "full_catalogue",
            "metric": "recall@50",
            "at": self.task.start.isoformat(),
            "window_end": self.task.end.isoformat(),
            "users": int(self.task.n_users),
            "window_users": int(self.task.test_users_total),
            "listings_live": int(self.task.n_items),
            "pairs": int(len(self.rows)),
            "user_sample_seed": int(self.task.seed),
        }


def ndcg_at_10(scores: np.ndarray, mask: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Tie-averaged NDCG@10 per row of a users x items block (NaN without a relevant candidate)."""
    head = _head(scores, mask, labels, K_NDCG)
    r, c = np.nonzero(head)
    got = metrics.per_group_metrics(metrics.encode_groups(r), labels[r, c], scores[r, c], ks=(K_NDCG,))
    out = np.full(len(scores), np.nan)
    out[got.index.to_numpy()] = got["ndcg@10"].to_numpy()
    return out


def catalogue_validation(
    settings, service_name: str, features: list[str], split, *, users: int = VALIDATION_USERS, seed: int = 0
) -> CatalogueValidation:
    """:class:`CatalogueValidation` of the split's validation window (features through Feast at
    ``train_end``, as for the test window at ``valid_end``)."""
    listings = schema.read_table(settings.raw_dir, schema.LISTINGS)
    task = build_task(
        read_engagement_log(settings), listings, split.train_end, users=users, seed=seed, end=split.valid_end
    )
    rows, cols, xs = [], [], []
    for r, c, matrix, names in pair_features(settings, service_name, task):
        missing = [f for f in features if f not in names]
        if missing:
            raise CatalogueError(f"feature service {service_name} lacks {', '.join(missing[:5])}")
        rows.append(r)
        cols.append(c)
        xs.append(matrix[:, [names.index(f) for f in features]])
    r, c = np.concatenate(rows), np.concatenate(cols)
    labels = task.label_block(slice(None))
    return CatalogueValidation(
        task=task,
        rows=r,
        cols=c,
        x=np.ascontiguousarray(np.vstack(xs)),
        label=labels[r, c],
        mask=task.candidate_mask(slice(None)),
        labels=labels,
    )

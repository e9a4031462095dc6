"""Sampled training groups for implicit feedback (logs without impressions, or whose logged lists
are too short to rank, such as Open Bandit's one-slot rounds).

Every positive (an engagement event of the surface in the window) becomes a group: the positive
itself, labelled with its grade (click 1 .. purchase 4), and ``ratio`` negatives labelled 0,
drawn uniformly without replacement from the listings that were *available at that moment*:
created strictly before the event and not sold at or before it (a listing the user could have
been shown). The positive's own listing is never a negative; other listings the user engaged with
may be (sampled negatives are "not chosen this time", not "disliked"). Draws are seeded: the same
log, ratio and seed give the same groups. All rows of a group carry the positive's timestamp, so
Feast fetches every candidate's features as they were at that moment.

The result has the columns and order of the impression-based labelling in
``ranker.training.dataset`` (position is 0: the rows were not shown in a logged list).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from ranker.config import Settings
from ranker.data import schema
from ranker.errors import RankerError
from ranker.features.reference import LISTING_KEYS


# Popularity-drawn negatives weigh listings by their engagements on this many days before the positive's.
POPULAR_DAYS = 7


class SamplingError(RankerError):
    """Sampled groups cannot be built as asked."""


def positives(settings: Settings, options) -> pd.DataFrame:
    """Engagement events of the surface in the window, one row per (user, item, time), best grade."""
    import duckdb

    events = settings.raw_dir / schema.EVENTS.file
    if not events.exists():
        raise SamplingError(f"{events} not found: run `ranker data import` (or simulate) first")
    grade = " ".join(f"WHEN '{k}' THEN {v}" for k, v in schema.EVENT_GRADE.items())
    where = ["event_type <> 'impression'", "surface = $surface"]
    params: dict = {"surface": options.surface}
    if options.start:
        where.append("timestamp >= $start")
        params["start"] = options.start
    if options.end:
        where.append("timestamp < $end")
        params["end"] = options.end
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone='UTC'")
        df = con.execute(
            f"""SELECT min(event_id) AS event_id, timestamp, user_id, item_id, coalesce(query, '') AS query,
                       max(CASE event_type {grade} END)::INTEGER AS label
                FROM read_parquet('{events}') WHERE {" AND ".join(where)}
                GROUP BY timestamp, user_id, item_id, coalesce(query, '')
                ORDER BY timestamp, user_id, item_id, query""",
            params,
        ).df()
    finally:
        con.close()
    df["timestamp"] = pd.to_datetime(df.timestamp, utc=True)
    return df


def sample_negatives(pos: pd.DataFrame, listings: pd.DataFrame, *, ratio: int, seed: int) -> pd.DataFrame:
    """For each positive row, up to ``ratio`` listings available at its timestamp (created
    before, not yet sold, not the positive's own); returns (group, item_id) pairs.

    Rejection sampling over the listings created before the positive (a prefix of the listings
    sorted by creation), vectorised over all positives; the rare positives left short (few
    listings live) are completed exactly from their full available set."""
    if ratio < 1:
        raise SamplingError(f"--negatives must be >= 1 (got {ratio})")
    rng = np.random.default_rng(seed)
    lst = listings.sort_values(["created_at", "item_id"], kind="stable").reset_index(drop=True)
    created = lst.created_at.astype("int64").to_numpy()
    sold = lst.sold_at.astype("int64").to_numpy()
    sold = np.where(lst.sold_at.isna().to_numpy(), np.iinfo(np.int64).max, sold)
    item_index = pd.Series(np.arange(len(lst)), index=lst.item_id.astype(str))
    ts = pos.timestamp.astype("int64").to_numpy()
    own = item_index.reindex(pos.item_id.astype(str)).fillna(-1).astype(np.int64).to_numpy()
    n_created = np.searchsorted(created, ts, side="left")  # listings with created_at < ts
    n = len(pos)
    draws = max(4 * ratio, ratio + 8)
    cand = (rng.random((n, draws)) * n_created[:, None]).astype(np.int64)
    ok = (n_created[:, None] > 0) & (sold[cand] > ts[:, None]) & (cand != own[:, None])
    # keep the first occurrence of each candidate per row
    order = np.argsort(cand, axis=1, kind="stable")
    sorted_cand = np.take_along_axis(cand, order, axis=1)
    dup_sorted = np.zeros_like(ok)
    dup_sorted[:, 1:] = sorted_cand[:, 1:] == sorted_cand[:, :-1]
    dup = np.zeros_like(ok)
    np.put_along_axis(dup, order, dup_sorted, axis=1)
    ok &= ~dup
    rank = np.cumsum(ok, axis=1)
    take = ok & (rank <= ratio)
    rows, cols = np.nonzero(take)
    group, chosen = rows, cand[rows, cols]
    short = np.flatnonzero(take.sum(axis=1) < ratio)
    extra_g, extra_i = [], []
    for r in short:
        avail = np.flatnonzero((np.arange(n_created[r]) != own[r]) & (sold[: n_created[r]] > ts[r]))
        have = cand[r, take[r]]
        rest = np.setdiff1d(avail, have, assume_unique=False)
        need = min(ratio - len(have), len(rest))
        if need > 0:
            extra_g.append(np.full(need, r))
            extra_i.append(rng.choice(rest, size=need, replace=False))
    if extra_g:
        group = np.concatenate([group, *extra_g])
        chosen = np.concatenate([chosen, *extra_i])
    return pd.DataFrame({"group": group, "item_id": lst.item_id.to_numpy()[chosen].astype(str)})


def popular_negatives(
    pos: pd.DataFrame, listings: pd.DataFrame, engaged: pd.DataFrame, *, n: int, seed: int
) -> pd.DataFrame:
    """For each positive, up to ``n`` negatives drawn in proportion to the listing's engagements
    (any user, any surface) on the ``POPULAR_DAYS`` UTC days before the positive's day — strictly
    earlier days, so no draw sees the positive's own day or later — among the listings available
    at the positive's timestamp (created before, not yet sold, not the positive's own). Hard
    negatives: what a popularity ranker would have put on top instead. Returns (group, item_id)."""
    if n < 1 or pos.empty:
        return pd.DataFrame({"group": np.zeros(0, np.int64), "item_id": np.zeros(0, dtype=object)})
    rng = np.random.default_rng([seed, 0xB0B])
    lst = listings.sort_values(["created_at", "item_id"], kind="stable").reset_index(drop=True)
    created = lst.created_at.astype("int64").to_numpy()
    sold = lst.sold_at.astype("int64").to_numpy()
    sold = np.where(lst.sold_at.isna().to_numpy(), np.iinfo(np.int64).max, sold)
    item_index = pd.Series(np.arange(len(lst)), index=lst.item_id.astype(str))
    eng_item = item_index.reindex(engaged.item_id.astype(str)).to_numpy()
    eng_day = pd.to_datetime(engaged.timestamp, utc=True).dt.floor("D").to_numpy()
    ok_eng = ~np.isnan(eng_item)
    eng_item, eng_day = eng_item[ok_eng].astype(np.int64), eng_day[ok_eng]
    ts = pos.timestamp.astype("int64").to_numpy()
    day = pd.to_datetime(pos.timestamp, utc=True).dt.floor("D").to_numpy()
    own = item_index.reindex(pos.item_id.astype(str)).fillna(-1).astype(np.int64).to_numpy()
    groups, chosen = [], []
    draws = max(4 * n, n + 8)
    for d in np.unique(day):
        rows = np.flatnonzero(day == d)
        window = (eng_day < d) & (eng_day >= d - np.timedelta64(POPULAR_DAYS, "D"))
        weight = np.bincount(eng_item[window], minlength=len(lst)).astype(np.float64)
        if weight.sum() == 0:
            continue
        cand = rng.choice(len(lst), size=(len(rows), draws), p=weight / weight.sum())
        t = ts[rows][:, None]
        ok = (created[cand] < t) & (sold[cand] > t) & (cand != own[rows][:, None])
        order = np.argsort(cand, axis=1, kind="stable")
        sorted_cand = np.take_along_axis(cand, order, axis=1)
        dup_sorted = np.zeros_like(ok)
        dup_sorted[:, 1:] = sorted_cand[:, 1:] == sorted_cand[:, :-1]
        dup = np.zeros_like(ok)
        np.put_along_axis(dup, order, dup_sorted, axis=1)
        ok &= ~dup
        take = ok & (np.cumsum(ok, axis=1) <= n)
        r, c = np.nonzero(take)
        groups.append(rows[r])
        chosen.append(cand[r, c])
    if not groups:
        return pd.DataFrame({"group": np.zeros(0, np.int64), "item_id": np.zeros(0, dtype=object)})
    g, i = np.concatenate(groups), np.concatenate(chosen)
    return pd.DataFrame({"group": g, "item_id": lst.item_id.to_numpy()[i].astype(str)})


def _engagements(settings: Settings) -> pd.DataFrame:
    import duckdb

    events = settings.raw_dir / schema.EVENTS.file
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone='UTC'")
        df = con.execute(
            f"SELECT item_id, timestamp FROM read_parquet('{events}') WHERE event_type <> 'impression'"
        ).df()
    finally:
        con.close()
    df["timestamp"] = pd.to_datetime(df.timestamp, utc=True)
    return df


def mixed_negatives(
    pos: pd.DataFrame, listings: pd.DataFrame, engaged: pd.DataFrame, *, ratio: int, popular: float, seed: int
) -> pd.DataFrame:
    """``round(ratio * popular)`` popularity-drawn negatives per positive (:func:`popular_negatives`),
    completed to ``ratio`` with uniform ones (:func:`sample_negatives`) not already drawn."""
    n_pop = int(round(ratio * popular))
    uniform = sample_negatives(pos, listings, ratio=ratio, seed=seed)
    hard = popular_negatives(pos, listings, engaged, n=n_pop, seed=seed)
    both = pd.concat([hard.assign(_src=0), uniform.assign(_src=1)], ignore_index=True)
    both = both.sort_values(["group", "_src"], kind="stable").drop_duplicates(["group", "item_id"])
    both = both[both.groupby("group").cumcount() < ratio]
    return both[["group", "item_id"]].reset_index(drop=True)


def sampled_groups(settings: Settings, options) -> pa.Table:
    """The training rows of sampled groups, in the column order and row order the dataset build
    expects (groups by time, then id; a group's rows in a seeded random order)."""
    ratio = int(getattr(options, "negatives", 0))
    seed = int(getattr(options, "negatives_seed", 0))
    pos = positives(settings, options)
    if pos.empty:
        raise SamplingError(
            f"no {options.surface} engagement events between {options.start or 'the first event'} and "
            f"{options.end or 'the last event'}: nothing to sample groups around"
        )
    listings = schema.read_table(settings.raw_dir, schema.LISTINGS)
    popular = float(getattr(options, "negatives_popular", 0.0) or 0.0)
    if popular > 0:
        neg = mixed_negatives(pos, listings, _engagements(settings), ratio=ratio, popular=popular, seed=seed)
    else:
        neg = sample_negatives(pos, listings, ratio=ratio, seed=seed)
    request_id = ("sg:" + pos.event_id.astype(str)).to_numpy()
    pos_rows = pd.DataFrame(
        {
            "group": np.arange(len(pos)),
            "item_id": pos.item_id.astype(str).to_numpy(),
            "label": pos.label.to_numpy(),
            "_neg": 0,
        }
    )
    neg_rows = neg.assign(label=0, _neg=1)
    rows = pd.concat([pos_rows, neg_rows], ignore_index=True).sort_values(["group", "_neg", "item_id"], kind="stable")
    # Rows of a group in a seeded random order, never positive first: with the positive always on
    # top, a constant model scores NDCG 1 on tied scores (stable sort), so early stopping would keep
    # the first tree and every offline metric of an untrained model would look perfect.
    rows["_slot"] = np.random.default_rng([seed, 0x5EED]).random(len(rows))
    rows = rows.sort_values(["group", "_slot"], kind="stable")
    g = rows.group.to_numpy()
    attrs = listings.set_index("item_id")[list(LISTING_KEYS)]
    out = pd.DataFrame(
        {
            "request_id": request_id[g],
            "event_timestamp": pos.timestamp.to_numpy()[g],
            "user_id": pos.user_id.astype(str).to_numpy()[g],
            "item_id": rows.item_id.to_numpy(),
            "position": np.zeros(len(rows), dtype=np.int32),
            "query": pos["query"].astype(str).to_numpy()[g],
            **{key: rows.item_id.map(attrs[key]).to_numpy() for key in LISTING_KEYS},
            "label": rows.label.to_numpy().astype(np.int32),
        }
    )
    out["event_timestamp"] = pd.to_datetime(out.event_timestamp, utc=True)
    out = out.sort_values(["event_timestamp", "request_id"], kind="stable").reset_index(drop=True)
    return pa.Table.from_pandas(out, preserve_index=False)


def describe(options) -> dict:
    """What the dataset manifest and the model card say about sampled groups."""
    return {
        "sampled": True,
        "negatives_per_positive": int(options.negatives),
        "seed": int(options.negatives_seed),
        "label": "the positive's grade (best engagement of that user, listing and moment: "
        + ", ".join(f"{k}={v}" for k, v in sorted(schema.EVENT_GRADE.items(), key=lambda kv: kv[1]) if v > 0)
        + "); sampled negatives 0",
        "how": "each engagement event is a group: the positive (its grade) plus negatives drawn uniformly "
        "without replacement from listings available at that moment (created before, not yet sold); "
        "the groups were not shown to anyone, so position is 0 and no logged order exists",
        "popular_share": float(getattr(options, "negatives_popular", 0.0) or 0.0),
        "popular_how": f"that share of each group's negatives drawn in proportion to the listing's engagements "
        f"on the {POPULAR_DAYS} days before the positive's day (hard negatives), the rest uniform",
    }

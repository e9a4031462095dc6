"""Co-engagement tables (issue 17, item 2): what is engaged together, as of each daily snapshot.

From the engagement events (click, save, add_to_bag, purchase; impressions never count) strictly
before each snapshot S (a UTC midnight, the same snapshots as :mod:`ranker.features.build`), per
level ``k`` (listing, brand, category x brand, seller):

* the user's profile over k: engagements with each value in the ``WINDOW_DAYS`` days before S,
  as counts and as shares of the user's engagements;
* the similarity of two values: the cosine of their user sets (binary user x value incidence over
  the same window): ``|U(a) & U(b)| / sqrt(|U(a)| |U(b)|)``, 0 on the diagonal;
* the co-engagement score of a candidate value c for the user: ``sum_a profile(a) * sim(a, c)`` —
  "how much the values this user engaged with are engaged by the same people as c". On listings the
  profile is binary (item-kNN over the user's listings); on brand, category x brand and seller it is
  the share (so it lies in [0, 1]).

Every listing is unique and sells once, so the listing level is sparse (3-4 users per listing on
the example log); brand, category x brand and seller generalise to listings nobody engaged with yet.

Rows are sparse: per (S, user) the values the user engaged with in the window, plus the
``top_k`` best co-engagement scores among the other values (listings: only those live at S and not
engaged by the user before S); an absent row means 0. All-time and 7-day popularity of each live
listing (engagements before S, and its percentile among the live listings) go into their own table.

The computation is numpy/scipy sparse algebra per snapshot (a few seconds for ~100k engagements);
:func:`reference_user_scores` is the brute-force definition the tests compare it with.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ranker.data import schema

WINDOW_DAYS = 30
RECENT_DAYS = 7
# Rows kept per (snapshot, user) beyond the values the user engaged with, by co-engagement score.
TOP_K = {"item": 50, "brand": 60, "category_brand": 40, "seller": 40}
# Each value's most similar values kept (item-kNN's usual pruning; bounds the work). Brands are few.
NEIGHBOURS = {"item": 30, "brand": None, "category_brand": 40, "seller": 30}


@dataclass(frozen=True)
class Level:
    """One co-engagement level: the table, its join keys (after user_id) and the column prefix."""

    name: str
    table: str
    keys: tuple[str, ...]
    prefix: str


LEVELS = (
    Level("item", "coeng_user_item", ("item_id",), "ui"),
    Level("brand", "coeng_user_brand", ("brand",), "ubc"),
    Level("category_brand", "coeng_user_category_brand", ("category", "brand"), "ucb"),
    Level("seller", "coeng_user_seller", ("seller_id",), "us"),
)
POPULARITY_TABLE = "coeng_item_popularity"
TABLES = (POPULARITY_TABLE, *(level.table for level in LEVELS))


def engagement_log(raw_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Engagements (user_id, item_id, timestamp) joined with the listing keys, and the listings."""
    events = pd.read_parquet(raw_dir / schema.EVENTS.file, columns=["event_type", "timestamp", "user_id", "item_id"])
    events = events[events.event_type.astype(str) != "impression"]
    listings = schema.read_table(raw_dir, schema.LISTINGS)
    listings = listings.assign(item_id=listings.item_id.astype(str))
    eng = pd.DataFrame(
        {
            "user_id": events.user_id.astype(str).to_numpy(),
            "item_id": events.item_id.astype(str).to_numpy(),
            "timestamp": pd.to_datetime(events.timestamp, utc=True).to_numpy(),
        }
    )
    eng["timestamp"] = pd.to_datetime(eng.timestamp, utc=True)
    attrs = listings.set_index("item_id")[["category", "brand", "seller_id"]]
    for column in ("category", "brand", "seller_id"):
        eng[column] = eng.item_id.map(attrs[column]).astype(object)
    return eng, listings


def snapshot_times(eng: pd.DataFrame) -> list[pd.Timestamp]:
    """UTC midnights from the first event's day to the day after the last (as the batch tables)."""
    first = eng.timestamp.min().floor("D")
    last = eng.timestamp.max().floor("D") + pd.Timedelta(days=1)
    return list(pd.date_range(first, last, freq="D", tz="UTC"))


def _key_series(frame: pd.DataFrame, level: Level) -> pd.Series:
    """The level's value per row as one string (category x brand joined by a tab); None if unknown."""
    if len(level.keys) == 1:
        values = frame[level.keys[0]]
        ok = values.notna() & (values.astype(str) != "") & (values.astype(str) != "unknown")
        return values.astype(str).where(ok, None)
    cat, brand = frame["category"], frame["brand"]
    ok = cat.notna() & brand.notna() & (brand.astype(str) != "") & (cat.astype(str) != "unknown")
    return (cat.astype(str) + "\t" + brand.astype(str)).where(ok, None)


def user_scores(
    hist: pd.DataFrame,
    level: Level,
    *,
    top_k: int,
    candidates: np.ndarray | None = None,
    neighbours: int | None = None,
) -> pd.DataFrame:
    """Profile and co-engagement scores of one window of engagements (``hist``: user_id and the
    level's key columns), sparse as the module docstring says.

    ``candidates``: for the listing level, the values that may get a co-engagement row (live
    listings); None = every value seen in the window. ``neighbours``: keep only each value's this
    many most similar values (item-kNN's usual pruning; ties: the lower key index); None = all.
    Returns user_id, key, count, share, score."""
    from scipy import sparse

    key = _key_series(hist, level)
    hist = pd.DataFrame({"user_id": hist.user_id.to_numpy(), "key": key.to_numpy()}).dropna()
    columns = ["user_id", "key", "count", "share", "score"]
    if hist.empty:
        return pd.DataFrame({c: [] for c in columns})
    users, u = np.unique(hist.user_id.to_numpy().astype(str), return_inverse=True)
    keys, k = np.unique(hist.key.to_numpy().astype(str), return_inverse=True)
    counts = sparse.coo_matrix((np.ones(len(u)), (u, k)), shape=(len(users), len(keys))).tocsr()
    counts.sum_duplicates()
    binary = counts.copy()
    binary.data[:] = 1.0
    co = (binary.T @ binary).tocsr()  # |U(a) & U(b)|
    norm = np.sqrt(co.diagonal())
    inv = sparse.diags(1.0 / norm)
    sim = (inv @ co @ inv).tocsr()
    sim.setdiag(0.0)
    sim.eliminate_zeros()
    totals = np.asarray(counts.sum(axis=1)).ravel()
    if level.name == "item":
        profile = binary
    else:
        profile = (sparse.diags(1.0 / totals) @ counts).tocsr()
    if neighbours is not None:
        sim = _top_per_column(sim, neighbours)
    score = (profile @ sim).tocsr()
    cc = counts.tocoo()
    own_score = np.asarray(score[cc.row, cc.col]).ravel() if candidates is None else np.zeros(len(cc.row))
    # co-engagement rows: positive scores off the user's own values (for listings: live ones only),
    # the top_k per user by score (ties: the lower key index)
    other = (score - score.multiply(binary)).tocsr()
    if candidates is not None:
        other = (other @ sparse.diags(np.isin(keys, candidates).astype(np.float64))).tocsr()
    other.eliminate_zeros()
    oc = other.tocoo()
    keep = oc.data > 0
    r, c, v = oc.row[keep], oc.col[keep], oc.data[keep]
    top = _top_in_groups(r, v, top_k)
    r, c, v = r[top], c[top], v[top]
    other_rows = pd.DataFrame({"u": r, "k": c, "score": v, "count": 0.0})
    own_rows = pd.DataFrame({"u": cc.row, "k": cc.col, "count": cc.data, "score": own_score})
    if candidates is not None:  # listings: only the candidates' rows (a user's own are not candidates)
        own_rows = own_rows.iloc[:0]
    both = pd.concat([own_rows, other_rows], ignore_index=True)
    both["share"] = both["count"] / totals[both.u.to_numpy()]
    return pd.DataFrame(
        {
            "user_id": users[both.u.to_numpy()],
            "key": keys[both.k.to_numpy()],
            "count": both["count"].to_numpy(),
            "share": both["share"].to_numpy(),
            "score": both["score"].to_numpy(),
        }
    )


def _top_in_groups(group: np.ndarray, value: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` largest positive ``value`` per ``group`` (ties at the n-th value: the
    earlier entry). One stable argsort of a float key: group + a fraction that falls with value."""
    if not len(group):
        return np.zeros(0, dtype=np.int64)
    fraction = 0.5 * (1.0 - value / (float(value.max()) * (1.0 + 1e-9)))
    order = np.argsort(group.astype(np.float64) + fraction, kind="stable")
    g = group[order]
    rank = np.arange(len(g)) - np.searchsorted(g, g, side="left")
    return np.sort(order[rank < n])


def _top_per_column(sim, n: int):
    """``sim`` with only the ``n`` largest entries of each column kept."""
    from scipy import sparse

    cc = sim.tocoo()
    keep = _top_in_groups(cc.col, cc.data, n)
    return sparse.csr_matrix((cc.data[keep], (cc.row[keep], cc.col[keep])), shape=sim.shape)


def reference_user_scores(hist: pd.DataFrame, level: Level, *, candidates=None) -> dict:
    """Brute force of :func:`user_scores` without the top-k cut: {(user, key): (count, share, score)}
    for every pair with a count or a positive score (candidates only for co-engagement rows)."""
    key = _key_series(hist, level)
    pairs = [(u, k) for u, k in zip(hist.user_id.astype(str), key, strict=True) if k is not None]
    users_of: dict = {}
    count: dict = {}
    for u, k in pairs:
        users_of.setdefault(k, set()).add(u)
        count[(u, k)] = count.get((u, k), 0) + 1
    total: dict = {}
    for (u, _), c in count.items():
        total[u] = total.get(u, 0) + c
    allowed = set(candidates) if candidates is not None else None

    def sim(a, b):
        if a == b:
            return 0.0
        return len(users_of[a] & users_of[b]) / np.sqrt(len(users_of[a]) * len(users_of[b]))

    keys_of: dict = {}
    for uu, k in count:
        keys_of.setdefault(uu, set()).add(k)
    out = {}
    for u in sorted(total):
        mine = {k: count[(u, k)] for k in keys_of[u]}
        # values sharing no user with the user's values have similarity 0 to all of them
        reachable = {c for a in mine for v in users_of[a] for c in keys_of[v]}
        for c in sorted(reachable):
            if level.name == "item":
                s = sum(sim(a, c) for a in mine)
            else:
                s = sum(n / total[u] * sim(a, c) for a, n in mine.items())
            n = mine.get(c, 0)
            if n > 0:
                out[(u, c)] = (float(n), n / total[u], s)
            elif s > 0 and (allowed is None or c in allowed):
                out[(u, c)] = (0.0, 0.0, s)
    return out


def _live(listings: pd.DataFrame, at: pd.Timestamp) -> np.ndarray:
    created = pd.to_datetime(listings.created_at, utc=True)
    sold = pd.to_datetime(listings.sold_at, utc=True)
    live = (created < at) & (sold.isna() | (sold >= at))
    return listings.item_id.to_numpy()[live.to_numpy()].astype(str)


def popularity_rows(eng: pd.DataFrame, listings: pd.DataFrame, at: pd.Timestamp) -> pd.DataFrame:
    """All-time and 7-day popularity of the listings live at ``at`` with an engagement before it."""
    before = eng[eng.timestamp < at]
    live = _live(listings, at)
    all_time = before.groupby("item_id").size().reindex(live).fillna(0.0)
    users = before.groupby("item_id").user_id.nunique().reindex(live).fillna(0.0)
    recent = before[before.timestamp >= at - pd.Timedelta(days=RECENT_DAYS)].groupby("item_id").size()
    recent = recent.reindex(live).fillna(0.0)
    frame = pd.DataFrame(
        {
            "item_id": live,
            "item_interactions_all": all_time.to_numpy().astype(np.int64),
            "item_interaction_users_all": users.to_numpy().astype(np.int64),
            "item_interactions_7d_exact": recent.to_numpy().astype(np.int64),
            # share of the live listings with strictly fewer engagements (0 = least, ->1 = most engaged)
            "item_popularity_pct_all": (all_time.rank(method="min").to_numpy() - 1) / max(len(live), 1),
            "item_popularity_pct_7d": (recent.rank(method="min").to_numpy() - 1) / max(len(live), 1),
        }
    )
    frame = frame[frame.item_interactions_all > 0]
    return frame.assign(event_timestamp=at)


def level_rows(
    eng: pd.DataFrame, listings: pd.DataFrame, level: Level, at: pd.Timestamp, *, top_k: int
) -> pd.DataFrame:
    """The level's rows at snapshot ``at`` (window ``[at - WINDOW_DAYS, at)``), in the table's columns."""
    window = eng[(eng.timestamp < at) & (eng.timestamp >= at - pd.Timedelta(days=WINDOW_DAYS))]
    candidates = _live(listings, at) if level.name == "item" else None
    got = user_scores(window, level, top_k=top_k, candidates=candidates, neighbours=NEIGHBOURS[level.name])
    out = pd.DataFrame({"user_id": got.user_id.astype(str).to_numpy()})
    if len(level.keys) == 1:
        out[level.keys[0]] = got.key.astype(str).to_numpy()
    else:
        split = got.key.astype(str).str.split("\t", n=1, expand=True)
        out["category"] = split[0].to_numpy() if len(got) else []
        out["brand"] = split[1].to_numpy() if len(got) else []
    p = level.prefix
    if level.name != "item":
        out[f"{p}_engagements_30d"] = got["count"].to_numpy().astype(np.int64)
        out[f"{p}_share_30d"] = got["share"].to_numpy().astype(np.float32)
    out[f"{p}_coeng_30d"] = got["score"].to_numpy().astype(np.float32)
    return out.assign(event_timestamp=at)


def build_coengagement(raw_dir: Path, out_dir: Path, *, top_k: dict | None = None, progress=None) -> dict:
    """Write every co-engagement table (one parquet each, replaced atomically); returns rows and seconds."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    started = time.perf_counter()
    top = {**TOP_K, **(top_k or {})}
    eng, listings = engagement_log(raw_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict = {"tables": {}}
    if eng.empty:
        snapshots: list = []
    else:
        snapshots = snapshot_times(eng)
    jobs = [(POPULARITY_TABLE, None), *((level.table, level) for level in LEVELS)]
    for table, level in jobs:
        t0 = time.perf_counter()
        frames = []
        for at in snapshots:
            if level is None:
                frames.append(popularity_rows(eng, listings, at))
            else:
                frames.append(level_rows(eng, listings, level, at, top_k=top[level.name]))
        frame = pd.concat(frames, ignore_index=True) if frames else _empty(table, level)
        frame["event_timestamp"] = pd.to_datetime(frame.event_timestamp, utc=True)
        for column in frame.columns:
            if column.endswith(("_pct_all", "_pct_7d")):
                frame[column] = frame[column].astype(np.float32)
        path = out_dir / f"{table}.parquet"
        tmp = out_dir / f".{table}.parquet.tmp"
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp, compression="zstd")
        tmp.replace(path)
        summary["tables"][table] = {
            "rows": int(len(frame)),
            "path": str(path),
            "seconds": round(time.perf_counter() - t0, 2),
        }
        if progress is not None:
            progress(table)
    summary["seconds"] = round(time.perf_counter() - started, 2)
    return summary


def _empty(table: str, level: Level | None) -> pd.DataFrame:
    if level is None:
        cols = {
            "item_id": pd.Series([], dtype=object),
            "item_interactions_all": pd.Series([], dtype=np.int64),
            "item_interaction_users_all": pd.Series([], dtype=np.int64),
            "item_interactions_7d_exact": pd.Series([], dtype=np.int64),
            "item_popularity_pct_all": pd.Series([], dtype=np.float32),
            "item_popularity_pct_7d": pd.Series([], dtype=np.float32),
        }
    else:
        p = level.prefix
        cols = {"user_id": pd.Series([], dtype=object), **{k: pd.Series([], dtype=object) for k in level.keys}}
        if level.name != "item":
            cols[f"{p}_engagements_30d"] = pd.Series([], dtype=np.int64)
            cols[f"{p}_share_30d"] = pd.Series([], dtype=np.float32)
        cols[f"{p}_coeng_30d"] = pd.Series([], dtype=np.float32)
    return pd.DataFrame({**cols, "event_timestamp": pd.Series([], dtype="datetime64[us, UTC]")})

"""Batch scoring: precomputed top-k lists per user, from the same feature path and model as the
scorer, for surfaces where a list can be prepared ahead (recs emails, a feed's first page).

Candidates: the ``candidates`` live listings with the most engagement in the latest item
snapshot (``item_stats`` 7-day clicks + saves + add-to-bags), excluding sold ones. Each user's
candidates are fetched with :class:`ranker.serving.features.OnlineFeatures` (the scorer's fast
path: exactly Feast's online values) and scored by the production model of the surface.

Output: ``artifacts/batch/{surface}/topk.parquet`` (user_id, rank, item_id, score, model_name,
model_version, generated_at) written atomically; with ``to_online`` each user's list also goes to
the online store for cheap lookups: Redis key ``ranker:topk:{surface}:{user_id}`` (JSON), or the
``ranker_topk`` table of the sqlite online store.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from ranker.config import Settings
from ranker.data import schema
from ranker.errors import RankerError


class BatchScoreError(RankerError):
    """Batch scoring cannot run as asked."""


@dataclass(frozen=True)
class BatchOptions:
    surface: str
    k: int = 50
    candidates: int = 500
    users_file: Path | None = None  # one user id per line, or a parquet/CSV with a user_id column
    all_users: bool = False
    to_online: bool = False

    def __post_init__(self) -> None:
        if self.k < 1 or self.candidates < self.k:
            raise BatchScoreError(f"need 1 <= --k <= --candidates (got k={self.k}, candidates={self.candidates})")
        if bool(self.users_file) == bool(self.all_users):
            raise BatchScoreError("give exactly one of --users FILE or --all")


def read_users(path: Path) -> list[str]:
    """User ids from a text file (one per line), a CSV or a parquet file with a user_id column."""
    path = Path(path)
    if not path.exists():
        raise BatchScoreError(f"{path} not found")
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    elif path.suffix == ".csv":
        frame = pd.read_csv(path, dtype=str)
    else:
        lines = [line.strip() for line in path.read_text().splitlines()]
        return list(dict.fromkeys(line for line in lines if line))
    if "user_id" not in frame.columns:
        raise BatchScoreError(f"{path} has no user_id column (columns: {', '.join(map(str, frame.columns))})")
    return list(dict.fromkeys(frame.user_id.dropna().astype(str)))


def candidate_items(settings: Settings, n: int) -> list[str]:
    """The n most engaged live listings of the latest item snapshot."""
    import duckdb

    stats = settings.features_dir / "item_stats.parquet"
    listings = settings.raw_dir / schema.LISTINGS.file
    for path in (stats, listings):
        if not path.exists():
            raise BatchScoreError(f"{path} not found: run `ranker features build` first")
    con = duckdb.connect()
    try:
        rows = con.execute(
            f"""
            WITH latest AS (SELECT * FROM read_parquet('{stats}')
                            WHERE event_timestamp = (SELECT max(event_timestamp) FROM read_parquet('{stats}')))
            SELECT latest.item_id FROM latest JOIN read_parquet('{listings}') l USING (item_id)
            WHERE l.sold_at IS NULL
            ORDER BY item_clicks_7d + item_saves_7d + item_add_to_bag_7d DESC, latest.item_id
            LIMIT {int(n)}"""
        ).fetchall()
    finally:
        con.close()
    return [r[0] for r in rows]


def batch_score(settings: Settings, options: BatchOptions, *, progress=None) -> dict:
    """Score every requested user's candidates; returns a summary (rows, users, seconds, path)."""
    from ranker.registry import Registry
    from ranker.serving.features import OnlineFeatures
    from ranker.surfaces import MODEL_NAMES

    users = read_users(options.users_file) if options.users_file else _all_users(settings)
    if not users:
        raise BatchScoreError("no users to score")
    name = MODEL_NAMES[options.surface]
    model = Registry.from_settings(settings).fetch(name, stage="production")
    booster = model.booster()
    items = candidate_items(settings, options.candidates)
    if len(items) < options.k:
        raise BatchScoreError(f"only {len(items)} live listings to rank, fewer than --k {options.k}")
    started = time.perf_counter()
    now = datetime.now(timezone.utc)
    request_ts = int(now.timestamp())
    out_users: list[str] = []
    out_items: list[str] = []
    out_scores: list[float] = []
    out_ranks: list[int] = []
    # Item-level values are the same for every user of the run: cache them for the duration of the job.
    with OnlineFeatures(
        settings, service=model.card["feature_service"], timeout_s=5.0, item_cache_ttl_s=3600.0
    ) as features:
        for user in users:
            rows = features.fetch(user_id=user, item_ids=items, query=None, request_ts=request_ts)
            if tuple(rows.feature_names) != tuple(model.card["features"]):
                raise BatchScoreError(
                    f"{name} {model.version} was trained on other features than {model.card['feature_service']} "
                    "serves now"
                )
            scores = booster.predict(rows.matrix, num_threads=2)
            scores = np.where(rows.sold, -np.inf, scores)
            top = np.argsort(-scores, kind="stable")[: options.k]
            top = top[np.isfinite(scores[top])]
            out_users.extend([user] * len(top))
            out_items.extend(items[i] for i in top)
            out_scores.extend(scores[top].tolist())
            out_ranks.extend(range(1, len(top) + 1))
            if progress is not None:
                progress.update(1)
    frame = pd.DataFrame(
        {
            "user_id": out_users,
            "rank": np.asarray(out_ranks, dtype=np.int32),
            "item_id": out_items,
            "score": np.asarray(out_scores, dtype=np.float64),
            "model_name": name,
            "model_version": model.version,
            "generated_at": pd.Timestamp(now),
        }
    )
    out_dir = settings.artifacts_dir / "batch" / options.surface
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "topk.parquet"
    tmp = out_dir / ".topk.parquet.tmp"
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)
    if options.to_online:
        _write_online(settings, options.surface, frame)
    seconds = time.perf_counter() - started
    return {
        "users": len(users),
        "rows": len(frame),
        "candidates": len(items),
        "model": f"{name} {model.version}",
        "path": str(path),
        "seconds": round(seconds, 2),
        "users_per_s": round(len(users) / seconds, 1) if seconds else None,
        "to_online": options.to_online,
    }


def _all_users(settings: Settings) -> list[str]:
    return schema.read_table(settings.raw_dir, schema.USERS).user_id.astype(str).tolist()


def _lists(frame: pd.DataFrame) -> dict[str, str]:
    out = {}
    for user, group in frame.groupby("user_id", sort=False):
        out[user] = json.dumps(
            {
                "model_version": str(group.model_version.iloc[0]),
                "generated_at": group.generated_at.iloc[0].isoformat(),
                "items": [{"item_id": i, "score": float(s)} for i, s in zip(group.item_id, group.score, strict=False)],
            }
        )
    return out


def _write_online(settings: Settings, surface: str, frame: pd.DataFrame) -> None:
    lists = _lists(frame)
    if settings.online_store == "redis":
        import redis

        client = redis.Redis.from_url(settings.redis_url, socket_timeout=30)
        try:
            pipe = client.pipeline(transaction=False)
            for user, payload in lists.items():
                pipe.set(f"ranker:topk:{surface}:{user}", payload)
            pipe.execute()
        except redis.RedisError as exc:
            raise BatchScoreError(f"could not write top-k lists to Redis at {settings.redis_url}: {exc}") from None
        return
    db = settings.feast_dir / "online.db"
    with sqlite3.connect(db) as con:
        con.execute(
            "CREATE TABLE IF NOT EXISTS ranker_topk (surface TEXT, user_id TEXT, payload TEXT, PRIMARY KEY "
            "(surface, user_id))"
        )
        con.executemany(
            "INSERT OR REPLACE INTO ranker_topk VALUES (?, ?, ?)", [(surface, u, p) for u, p in lists.items()]
        )


def read_online_topk(settings: Settings, surface: str, user_id: str) -> dict | None:
    """The precomputed list of a user, from the online store (None when there is none)."""
    if settings.online_store == "redis":
        import redis

        raw: bytes | None = redis.Redis.from_url(settings.redis_url, socket_timeout=1).get(  # type: ignore[assignment]
            f"ranker:topk:{surface}:{user_id}"
        )  # the sync client answers bytes; its stubs also allow an Awaitable
        return json.loads(raw) if raw else None
    db = settings.feast_dir / "online.db"
    with sqlite3.connect(db) as con:
        try:
            row = con.execute(
                "SELECT payload FROM ranker_topk WHERE surface = ? AND user_id = ?", (surface, user_id)
            ).fetchone()
        except sqlite3.OperationalError:
            return None
    return json.loads(row[0]) if row else None

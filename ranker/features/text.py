"""Title embeddings: TF-IDF on word and character n-grams reduced by truncated SVD (issue 17).

Fitted in the batch build on the titles of the listings created before the first snapshot (moved to
the first snapshot that has ``FIT_MIN_TITLES`` titles before it), so no table row uses a title from
after its own timestamp; nothing is saved but the tables (no model file). Three tables, all dense
float32 components ``*_c0 .. *_c{TEXT_DIM-1}``:

* ``listing_text``: a listing's title embedding (unit length), one row per listing at
  max(created_at, fit time);
* ``query_text``: the embedding of every search text in the log, at the fit time (a search text the
  log has never seen has no row: its similarity is missing, as for an unknown listing);
* ``user_text``: per user and daily snapshot, the mean embedding of the listings the user engaged with
  in the 30 days before it (click 1, save 2, add-to-bag 3, purchase 4, as for sizes); an empty row
  once that window has emptied, so the online store forgets it.

The request path runs no model: on-demand views take cosines of stored components
(:func:`ranker.features.transforms.query_title_similarity`, :func:`~ranker.features.transforms.user_title_similarity`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

TEXT_DIM = 16
FIT_MIN_TITLES = 64
TEXT_SEED = 0
TEXT_TABLES = ("listing_text", "query_text", "user_text")
PREFIX = {"listing_text": "title", "query_text": "query", "user_text": "user_title"}
ENGAGEMENT_WEIGHTS = {"click": 1, "save": 2, "add_to_bag": 3, "purchase": 4}


def component_names(table: str) -> list[str]:
    """The component columns of a text table (``title_c0`` ...)."""
    return [f"{PREFIX[table]}_c{k}" for k in range(TEXT_DIM)]


class TitleEncoder:
    """TF-IDF (word 1-2-grams and character 3-5-grams within words, sublinear tf) -> truncated SVD
    -> unit length, padded with zeros to ``TEXT_DIM`` when the vocabulary is smaller."""

    def __init__(self, *, seed: int = TEXT_SEED) -> None:
        self.seed = seed
        self._pipeline = None

    def fit(self, texts: list[str]) -> TitleEncoder:
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.pipeline import FeatureUnion, make_pipeline

        union = FeatureUnion(
            [
                ("words", TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True, dtype=np.float64)),
                ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True, dtype=np.float64)),
            ]
        )
        x = union.fit_transform(texts)
        dim = max(1, min(TEXT_DIM, x.shape[1] - 1, x.shape[0] - 1))
        svd = TruncatedSVD(n_components=dim, algorithm="randomized", n_iter=7, random_state=self.seed)
        svd.fit(x)
        self._pipeline = make_pipeline(union, svd)
        return self

    def transform(self, texts: list[str]) -> np.ndarray:
        """Unit-length float32 embeddings (n, TEXT_DIM); an all-zero row for a text with no known n-gram."""
        if self._pipeline is None:
            raise RuntimeError("TitleEncoder.transform before fit")
        if not texts:
            return np.zeros((0, TEXT_DIM), dtype=np.float32)
        z = np.asarray(self._pipeline.transform(texts), dtype=np.float64)
        norm = np.linalg.norm(z, axis=1, keepdims=True)
        z = np.divide(z, norm, out=np.zeros_like(z), where=norm > 0)
        out = np.zeros((len(texts), TEXT_DIM), dtype=np.float64)
        out[:, : z.shape[1]] = z
        return out.astype(np.float32)


def _write(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table.sort_by("event_timestamp"), tmp, compression="zstd")
    tmp.replace(path)


def _frame(keys: dict, ts, vectors: np.ndarray, table: str) -> pa.Table:
    cols = {**keys, "event_timestamp": ts}
    for k, name in enumerate(component_names(table)):
        cols[name] = pa.array(vectors[:, k], pa.float32())
    return pa.table(cols)


def build_text_tables(con, out_dir: Path, *, retention_days: int) -> dict:
    """Fit the encoder and write the three tables (see the module doc) from the build's DuckDB
    connection (``listings``, ``events``, ``ev`` and ``snapshots``). Returns rows per table and the fit time."""
    snapshots = [r[0] for r in con.execute("SELECT snapshot_ts FROM snapshots ORDER BY 1").fetchall()]
    fit_ts, fit_titles = snapshots[0], []
    for snap in snapshots:
        fit_titles = [
            r[0]
            for r in con.execute(
                "SELECT title FROM listings WHERE created_at < $s AND title IS NOT NULL AND title <> '' "
                "ORDER BY item_id",
                {"s": snap},
            ).fetchall()
        ]
        fit_ts = snap
        if len(fit_titles) >= FIT_MIN_TITLES:
            break
    ts_type = pa.timestamp("us", tz="UTC")
    listings = con.execute(
        "SELECT item_id, greatest(created_at, $f) AS ts, title FROM listings "
        "WHERE title IS NOT NULL AND title <> '' ORDER BY item_id",
        {"f": fit_ts},
    ).fetchall()
    queries = [
        r[0]
        for r in con.execute(
            "SELECT DISTINCT query FROM events "
            "WHERE surface = 'search' AND query IS NOT NULL AND query <> '' ORDER BY 1"
        ).fetchall()
    ]
    # Too few titles to fit on (an imported log without titles or listing times): empty tables.
    encoder = TitleEncoder().fit(fit_titles) if len(set(fit_titles)) >= 2 else None

    def encode(texts: list[str]) -> np.ndarray:
        return encoder.transform(texts) if encoder is not None else np.zeros((0, TEXT_DIM), np.float32)

    rows = listings if encoder is not None else []
    listing_table = _frame(
        {"item_id": pa.array([r[0] for r in rows], pa.string())},
        pa.array([r[1] for r in rows], ts_type),
        encode([r[2] for r in rows]),
        "listing_text",
    )
    qs = queries if encoder is not None else []
    query_table = _frame(
        {"query": pa.array(qs, pa.string())}, pa.array([fit_ts] * len(qs), ts_type), encode(qs), "query_text"
    )
    _write(listing_table, out_dir / "listing_text.parquet")
    _write(query_table, out_dir / "query_text.parquet")
    con.register("listing_text_in", listing_table)
    try:
        user_sql = _user_text_sql(retention_days)
        tmp = out_dir / ".user_text.parquet.tmp"
        con.execute(f"COPY ({user_sql} ORDER BY event_timestamp) TO '{tmp}' (FORMAT parquet, COMPRESSION zstd)")
        tmp.replace(out_dir / "user_text.parquet")
    finally:
        con.unregister("listing_text_in")
    (n_users,) = con.execute(f"SELECT count(*) FROM read_parquet('{out_dir / 'user_text.parquet'}')").fetchall()[0]
    return {
        "fit_time": str(fit_ts),
        "fit_titles": len(fit_titles),
        "rows": {"listing_text": listing_table.num_rows, "query_text": query_table.num_rows, "user_text": int(n_users)},
    }


def _user_text_sql(retention_days: int) -> str:
    """Per user and snapshot, the weighted mean title embedding of the 30 days before it. An
    engagement counts only if the listing's embedding row is at or before the event."""
    title, user = component_names("listing_text"), component_names("user_text")
    weight = " ".join(f"WHEN '{k}' THEN {w}" for k, w in ENGAGEMENT_WEIGHTS.items())
    daily = ", ".join(f"sum(w * t.{c}) AS s{k}" for k, c in enumerate(title))
    window = ", ".join(
        f"sum(s{k}) FILTER (WHERE d.day >= s.snapshot_ts - INTERVAL 30 DAY) AS s{k}" for k in range(TEXT_DIM)
    )
    out = ", ".join(f"(s{k} / nullif(wsum, 0))::FLOAT AS {c}" for k, c in enumerate(user))
    return f"""
        WITH engaged AS (
            SELECT user_id, item_id, day, timestamp, CASE event_type {weight} END AS w
            FROM ev WHERE event_type IN ({", ".join(f"'{k}'" for k in ENGAGEMENT_WEIGHTS)})),
        daily AS (
            SELECT e.user_id, e.day, sum(w) AS wsum, {daily}
            FROM engaged e JOIN listing_text_in t ON t.item_id = e.item_id AND t.event_timestamp <= e.timestamp
            GROUP BY ALL),
        win AS (
            SELECT d.user_id, s.snapshot_ts,
                   sum(wsum) FILTER (WHERE d.day >= s.snapshot_ts - INTERVAL 30 DAY) AS wsum, {window}
            FROM daily d JOIN snapshots s
              ON d.day < s.snapshot_ts AND d.day >= s.snapshot_ts - INTERVAL {int(retention_days)} DAY
            GROUP BY ALL)
        SELECT user_id, snapshot_ts AS event_timestamp, {out}
        FROM win
    """

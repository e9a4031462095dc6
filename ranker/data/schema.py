"""The canonical raw tables every pipeline reads: the contract between data sources (the simulator,
imports of real logs) and the feature pipelines.

All timestamps are timezone-aware UTC (``datetime64[us, UTC]``). Ids are strings so that any
marketplace's ids (numeric, UUIDs, slugs) fit without a mapping table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ranker.errors import RankerError

EVENT_TYPES = ("impression", "click", "save", "add_to_bag", "purchase")
SURFACES = ("search", "recs")
# Graded relevance of an engagement; the label of an impression is the best grade seen later.
EVENT_GRADE = {"impression": 0, "click": 1, "save": 2, "add_to_bag": 3, "purchase": 4}

TS = "datetime64[us, UTC]"


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str  # pandas dtype name after normalisation
    nullable: bool = False
    doc: str = ""


@dataclass(frozen=True)
class TableSchema:
    name: str
    file: str  # file name under data/raw/
    key: tuple[str, ...]
    columns: tuple[Column, ...]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]


EVENTS = TableSchema(
    name="events",
    file="events.parquet",
    key=("event_id",),
    columns=(
        Column("event_id", "string[pyarrow]", doc="unique id of the event"),
        Column("event_type", "string[pyarrow]", doc="impression | click | save | add_to_bag | purchase"),
        Column("timestamp", TS, doc="when it happened (UTC)"),
        Column("user_id", "string[pyarrow]"),
        Column("item_id", "string[pyarrow]"),
        Column("surface", "string[pyarrow]", doc="search | recs"),
        Column("request_id", "string[pyarrow]", doc="the ranked list the event belongs to"),
        Column("position", "int32", doc="1-based slot of the item in that list"),
        Column("query", "string[pyarrow]", nullable=True, doc="normalised search text; null on recs"),
    ),
)

LISTINGS = TableSchema(
    name="listings",
    file="listings.parquet",
    key=("item_id",),
    columns=(
        Column("item_id", "string[pyarrow]"),
        Column("seller_id", "string[pyarrow]"),
        Column("title", "string[pyarrow]", doc="seller's title, lower-case words"),
        Column("category", "string[pyarrow]"),
        Column("brand", "string[pyarrow]"),
        Column("size", "string[pyarrow]"),
        Column("condition", "string[pyarrow]", doc="new_with_tags | very_good | good | fair"),
        Column("colour", "string[pyarrow]"),
        Column("price", "float64", doc="asking price, EUR"),
        Column("original_price", "float64", doc="retail price when new, EUR"),
        Column("created_at", TS, doc="when the listing went live"),
        Column("sold_at", TS, nullable=True, doc="when it sold; null while active"),
    ),
)

USERS = TableSchema(
    name="users",
    file="users.parquet",
    key=("user_id",),
    columns=(
        Column("user_id", "string[pyarrow]"),
        Column("signup_at", TS),
        Column("size", "string[pyarrow]", nullable=True, doc="clothing size from the profile"),
    ),
)

SELLERS = TableSchema(
    name="sellers",
    file="sellers.parquet",
    key=("seller_id",),
    columns=(
        Column("seller_id", "string[pyarrow]"),
        Column("joined_at", TS),
    ),
)

TABLES = {t.name: t for t in (EVENTS, LISTINGS, USERS, SELLERS)}

CONDITION_SCORE = {"fair": 1, "good": 2, "very_good": 3, "new_with_tags": 4}


class SchemaError(RankerError, ValueError):
    """A table does not match its contract; the message names the table, the column and the fix."""


def normalise(schema: TableSchema, df: pd.DataFrame) -> pd.DataFrame:
    """Return ``df`` with exactly the schema's columns, in order, cast to the contract's dtypes.

    Raises :class:`SchemaError` naming every missing column, or the first column that cannot be
    cast, or nulls in a non-nullable column.
    """
    missing = [c for c in schema.names if c not in df.columns]
    if missing:
        raise SchemaError(f"{schema.name}: missing column(s) {', '.join(missing)}; expected {', '.join(schema.names)}")
    out = {}
    for col in schema.columns:
        s = df[col.name]
        try:
            if col.dtype == TS:
                s = pd.to_datetime(s, utc=True, errors="raise").astype(TS)
            else:
                s = s.astype(col.dtype)
        except (ValueError, TypeError) as exc:
            raise SchemaError(f"{schema.name}.{col.name}: cannot be read as {col.dtype} ({exc})") from None
        if not col.nullable and s.isna().any():
            raise SchemaError(f"{schema.name}.{col.name}: {int(s.isna().sum())} null value(s) in a required column")
        out[col.name] = s
    return pd.DataFrame(out, index=df.index).reset_index(drop=True)


def read_table(raw_dir: Path, schema: TableSchema) -> pd.DataFrame:
    """Read one raw table and check it against its contract."""
    path = Path(raw_dir) / schema.file
    if not path.exists():
        raise SchemaError(f"{path} not found: run `ranker data simulate` or `ranker data import` first")
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise SchemaError(f"{path} is not a readable parquet file ({exc.__class__.__name__}: {exc})") from None
    return normalise(schema, df)


def write_table(raw_dir: Path, schema: TableSchema, df: pd.DataFrame) -> Path:
    """Validate and write one raw table atomically (a rerun never leaves a half-written file)."""
    df = normalise(schema, df)
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    path = raw_dir / schema.file
    tmp = path.with_suffix(".parquet.tmp")
    df.to_parquet(tmp, index=False)
    tmp.replace(path)
    return path

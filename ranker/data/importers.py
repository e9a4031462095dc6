"""Import external interaction logs into the canonical raw tables (``ranker.data.schema``), so
every pipeline after it (features, Feast, training sets, training, evaluation, scorer) runs on
them unchanged.

Formats:

* ``events``: our own schema, impressions with positions and later engagement (``event_id`` may be
  absent: it is then derived from the row).
* ``interactions``: the minimal form most apps export, ``user_id, item_id, timestamp`` plus
  optional ``event_type`` (default ``click``; synonyms such as view, like, cart, order are
  mapped), ``value`` (e.g. a rating, see ``min_value``), ``session_id`` and ``query``. There are
  no impressions: train on sampled groups (``ranker dataset build --negatives K``).
* ``open-bandit``: the real ZOZOTOWN logs, see :mod:`ranker.data.open_bandit`.

Validation never drops a row silently: every rejected row is counted under its reason (missing
value, unparsable timestamp, duplicate, unknown id, ...) and the report says so; ``strict`` turns
any rejection into an error. Missing required *columns* are always an error. Listings, users and
sellers come from optional ``items``/``users`` files; anything absent is derived from the log
(a listing goes live at its first event, a user signs up at theirs) and text attributes the log
does not have are ``"unknown"`` (prices 0), which the generic feature service does not use.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ranker.config import Settings
from ranker.data import schema
from ranker.data.log_io import LogImportError, parse_timestamps, read_any
from ranker.data.log_io import clean_text as _text

FORMATS = ("events", "interactions", "open-bandit")
UNKNOWN = "unknown"
# Engagement names found in app exports, mapped to the canonical event types.
EVENT_SYNONYMS = {
    "click": "click",
    "view": "click",
    "detail_view": "click",
    "pageview": "click",
    "page_view": "click",
    "interaction": "click",
    "play": "click",
    "rating": "click",
    "rate": "click",
    "save": "save",
    "like": "save",
    "favorite": "save",
    "favourite": "save",
    "wishlist": "save",
    "bookmark": "save",
    "add_to_bag": "add_to_bag",
    "add_to_cart": "add_to_bag",
    "addtocart": "add_to_bag",
    "cart": "add_to_bag",
    "purchase": "purchase",
    "buy": "purchase",
    "order": "purchase",
    "transaction": "purchase",
    "checkout": "purchase",
}
INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp")
OPTIONAL_INTERACTION_COLUMNS = ("event_type", "value", "session_id", "query")
EVENT_REQUIRED = ("event_type", "timestamp", "user_id", "item_id", "surface", "request_id", "position")
MANIFEST = "import_manifest.json"


@dataclass
class Rejections:
    """Rows rejected per reason, in the order reasons were first seen."""

    counts: dict = field(default_factory=dict)

    def reject(self, df: pd.DataFrame, mask, reason: str) -> pd.DataFrame:
        mask = np.asarray(mask, dtype=bool)
        n = int(mask.sum())
        if n:
            self.counts[reason] = self.counts.get(reason, 0) + n
        return df[~mask]

    @property
    def total(self) -> int:
        return int(sum(self.counts.values()))


@dataclass(frozen=True)
class ImportOptions:
    fmt: str
    path: Path
    items: Path | None = None  # optional listing attributes (item_id + any listings column)
    users: Path | None = None  # optional user profiles (user_id [, signup_at, size])
    strict: bool = False  # fail on any rejected row
    min_value: float | None = None  # interactions: rows with value below this are rejected (counted)
    sold_on_purchase: bool = False  # a purchase sells the listing (unique second-hand items)
    # open-bandit only
    campaign: str = "all"
    policies: tuple[str, ...] = ("random", "bts")
    sample_rows: int | None = None  # per policy file, seeded, for fast tests
    seed: int = 0

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            raise LogImportError(f"unknown format {self.fmt!r}; use one of {', '.join(FORMATS)}")


def _require_columns(df: pd.DataFrame, needed, path: Path, fmt: str) -> None:
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise LogImportError(
            f"{path}: missing column(s) {', '.join(missing)} for the {fmt} format "
            f"(found: {', '.join(map(str, df.columns)) or 'none'})"
        )


def _event_ids(df: pd.DataFrame, cols: list[str]) -> pd.Series:
    """Stable ids from the row's content (rerunning the import gives the same ids)."""
    if df.empty:
        return pd.Series([], index=df.index, dtype="string")
    key = df[cols].astype(str).agg("\x1f".join, axis=1)
    return key.map(lambda k: "ev" + hashlib.sha1(k.encode()).hexdigest()[:16]).astype("string")


def _check_required(df: pd.DataFrame, cols, rej: Rejections) -> pd.DataFrame:
    for c in cols:
        df = rej.reject(df, df[c].isna().to_numpy(), f"missing {c}")
    return df


def _read_attributes(
    path: Path | None, rej: Rejections, *, what: str, key: str, timestamps: tuple = (), numbers: tuple = ()
) -> pd.DataFrame | None:
    """An optional items/users file: ``key`` required and unique; the listed timestamp and number
    columns parsed where present; every rejected row counted under ``"{what}: <reason>"``."""
    if path is None:
        return None
    table = read_any(path, what=what)
    _require_columns(table, [key], path, what)
    table = table.copy()
    table[key] = _text(table[key])
    table = rej.reject(table, table[key].isna(), f"{what}: missing {key}")
    table = rej.reject(table, table[key].duplicated(keep="first"), f"{what}: duplicate {key}")
    parsers = [(c, parse_timestamps) for c in timestamps] + [
        (c, lambda col: pd.to_numeric(_text(col), errors="coerce")) for c in numbers
    ]
    for c, parse in parsers:
        if c in table.columns:
            raw = _text(table[c])
            parsed = parse(table[c])
            table = rej.reject(table, (raw.notna() & parsed.isna()).to_numpy(), f"{what}: unparsable {c}")
            table[c] = parsed[table.index]
    return table


def _read_items(path: Path | None, rej: Rejections) -> pd.DataFrame | None:
    return _read_attributes(
        path,
        rej,
        what="items",
        key="item_id",
        timestamps=("created_at", "sold_at"),
        numbers=("price", "original_price"),
    )


def _read_users(path: Path | None, rej: Rejections) -> pd.DataFrame | None:
    return _read_attributes(path, rej, what="users", key="user_id", timestamps=("signup_at",))


def _check_known_ids(ev: pd.DataFrame, items, users, rej: Rejections) -> pd.DataFrame:
    if items is not None:
        ev = rej.reject(ev, ~ev.item_id.isin(items.item_id).to_numpy(), "unknown item_id")
        created = ev.item_id.map(items.set_index("item_id").created_at) if "created_at" in items.columns else None
        if created is not None:
            ev = rej.reject(
                ev, (created.notna() & (ev.timestamp < created)).to_numpy(), "before the listing's created_at"
            )
    if users is not None:
        ev = rej.reject(ev, ~ev.user_id.isin(users.user_id).to_numpy(), "unknown user_id")
    return ev


def interactions_to_events(raw: pd.DataFrame, options: ImportOptions, rej: Rejections) -> pd.DataFrame:
    """Validate an interactions log and map it to canonical events (no impressions)."""
    _require_columns(raw, INTERACTION_COLUMNS, options.path, "interactions")
    df = pd.DataFrame(index=raw.index)
    for c in ("user_id", "item_id"):
        df[c] = _text(raw[c])
    ts_text = _text(raw.timestamp)
    df["timestamp"] = parse_timestamps(raw.timestamp)
    if "event_type" in raw.columns:
        et = _text(raw.event_type).str.lower().str.replace(r"[\s-]+", "_", regex=True)
        df["event_type"] = et.map(EVENT_SYNONYMS).astype("string")
        df["_et_raw"] = et
    else:
        df["event_type"] = pd.Series("click", index=raw.index, dtype="string")
        df["_et_raw"] = df.event_type
    df["query"] = _text(raw["query"]).str.lower().str.split().str.join(" ") if "query" in raw.columns else pd.NA
    df["session_id"] = _text(raw["session_id"]) if "session_id" in raw.columns else pd.NA
    df = _check_required(df, ["user_id", "item_id"], rej)
    df = rej.reject(df, ts_text[df.index].isna().to_numpy(), "missing timestamp")
    df = rej.reject(df, df.timestamp.isna().to_numpy(), "unparsable timestamp")
    df = rej.reject(df, (df._et_raw.notna() & df.event_type.isna()).to_numpy(), "unknown event_type")
    df = rej.reject(df, df.event_type.isna().to_numpy(), "missing event_type")
    if "value" in raw.columns:
        raw_value = _text(raw.value)[df.index]
        value = pd.to_numeric(raw_value, errors="coerce")
        df = rej.reject(df, (raw_value.notna() & value.isna()).to_numpy(), "unparsable value")
        if options.min_value is not None:
            value = value[df.index]
            df = rej.reject(
                df,
                (value.isna() | (value < options.min_value)).to_numpy(),
                f"value below --min-value {options.min_value:g}",
            )
    df = rej.reject(df, df.duplicated(["user_id", "item_id", "timestamp", "event_type"]).to_numpy(), "duplicate")
    df["surface"] = np.where(df["query"].notna(), "search", "recs")
    # No logged list: each interaction is its own request unless the log names a session.
    own = "u:" + df.user_id.astype(str) + ":" + (df.timestamp.astype("int64") // 1000).astype(str)
    df["request_id"] = df.session_id.fillna(own).astype("string")
    df["position"] = 0  # 0 = not from a logged, positioned list
    df["event_id"] = _event_ids(df, ["user_id", "item_id", "timestamp", "event_type"])
    return df


def events_to_events(raw: pd.DataFrame, options: ImportOptions, rej: Rejections) -> pd.DataFrame:
    """Validate a log in our own events schema."""
    _require_columns(raw, EVENT_REQUIRED, options.path, "events")
    df = pd.DataFrame(index=raw.index)
    for c in ("user_id", "item_id", "request_id"):
        df[c] = _text(raw[c])
    df["event_type"] = _text(raw.event_type).str.lower()
    df["surface"] = _text(raw.surface).str.lower()
    df["query"] = _text(raw["query"]).str.lower().str.split().str.join(" ") if "query" in raw.columns else pd.NA
    ts_text = _text(raw.timestamp)
    df["timestamp"] = parse_timestamps(raw.timestamp)
    pos_text = _text(raw.position)
    pos = pd.to_numeric(pos_text, errors="coerce")
    df["event_id"] = _text(raw.event_id) if "event_id" in raw.columns else pd.NA
    df = _check_required(df, ["event_type", "user_id", "item_id", "surface", "request_id"], rej)
    df = rej.reject(df, ts_text[df.index].isna().to_numpy(), "missing timestamp")
    df = rej.reject(df, df.timestamp.isna().to_numpy(), "unparsable timestamp")
    df = rej.reject(df, ~df.event_type.isin(schema.EVENT_TYPES).to_numpy(), "unknown event_type")
    df = rej.reject(df, ~df.surface.isin(schema.SURFACES).to_numpy(), "unknown surface")
    pos = pos[df.index]
    df = rej.reject(df, (pos.isna() | (pos < 1) | (pos != pos.round())).to_numpy(), "position not a positive integer")
    df["position"] = pos[df.index].astype("int64")
    if df.event_id.notna().any():
        df = rej.reject(
            df, df.event_id.notna().to_numpy() & df.event_id.duplicated(keep="first").to_numpy(), "duplicate event_id"
        )
    content = ["event_type", "timestamp", "user_id", "item_id", "surface", "request_id", "position"]
    df = rej.reject(df, df.duplicated(content).to_numpy(), "duplicate")
    # Engagement belongs to a shown item: it needs an earlier impression of the same (request, item).
    imp = df[df.event_type == "impression"].groupby(["request_id", "item_id"]).timestamp.min()
    first_shown = pd.Series(
        imp.reindex(pd.MultiIndex.from_frame(df[["request_id", "item_id"]])).to_numpy(), index=df.index
    )
    orphan = (df.event_type != "impression") & (first_shown.isna() | (df.timestamp <= first_shown))
    df = rej.reject(df, orphan.to_numpy(), "engagement without an earlier impression of the same (request, item)")
    missing_id = df.event_id.isna()
    if missing_id.any():
        df.loc[missing_id, "event_id"] = _event_ids(df[missing_id], content)
    return df


def _entities(
    events: pd.DataFrame, given: pd.DataFrame | None, key: str
) -> tuple[pd.DataFrame, pd.Series, pd.DataFrame]:
    """For one entity (``item_id`` or ``user_id``): a frame of every id in the log or the given
    file, each id's first event time, and the given file indexed by id (empty without one)."""
    first = events.groupby(key).timestamp.min()
    ids = pd.Index(first.index)
    if given is not None:
        ids = ids.union(pd.Index(given[key].dropna()))
    indexed = given.set_index(key) if given is not None else pd.DataFrame(index=pd.Index([], name=key))
    return pd.DataFrame({key: ids.astype(str)}), first, indexed


def derive_tables(
    events: pd.DataFrame, items: pd.DataFrame | None, users: pd.DataFrame | None, *, sold_on_purchase: bool = False
) -> dict[str, pd.DataFrame]:
    """Listings, users and sellers for the imported events: from the given files where present,
    else derived from the log (first event = listing creation / signup)."""
    lst, first_item, given = _entities(events, items, "item_id")

    def given_col(col: str) -> pd.Series:
        if col in given.columns:
            return lst.item_id.map(given[col])
        return pd.Series(pd.NA, index=lst.index, dtype="object")

    for col in ("seller_id", "category", "brand", "size", "condition", "colour"):
        lst[col] = given_col(col).astype("string").fillna(UNKNOWN)
    lst["title"] = given_col("title").astype("string").fillna("")
    lst["price"] = pd.to_numeric(given_col("price"), errors="coerce").astype("float64").fillna(0.0)
    lst["original_price"] = (
        pd.to_numeric(given_col("original_price"), errors="coerce").astype("float64").fillna(lst.price)
    )
    created = pd.to_datetime(given_col("created_at"), utc=True)
    lst["created_at"] = created.fillna(lst.item_id.map(first_item))
    sold = pd.to_datetime(given_col("sold_at"), utc=True)
    if sold_on_purchase:
        bought = events[events.event_type == "purchase"].groupby("item_id").timestamp.min()
        sold = sold.fillna(lst.item_id.map(bought))
    lst["sold_at"] = sold
    lst = lst[lst.created_at.notna()]  # a listing from the items file with neither created_at nor events
    usr, first_user, ug = _entities(events, users, "user_id")
    signup = usr.user_id.map(ug.signup_at) if "signup_at" in ug.columns else pd.Series(pd.NaT, index=usr.index)
    usr["signup_at"] = pd.to_datetime(signup, utc=True).fillna(usr.user_id.map(first_user))
    usr["size"] = usr.user_id.map(ug["size"]).astype("string") if "size" in ug.columns else pd.NA
    usr = usr[usr.signup_at.notna()]
    sellers = lst.groupby("seller_id", as_index=False).created_at.min().rename(columns={"created_at": "joined_at"})
    return {"listings": lst, "users": usr, "sellers": sellers}


def import_log(settings: Settings, options: ImportOptions, *, extra_tables: dict | None = None) -> dict:
    """Import ``options.path`` into ``settings.raw_dir``; returns the report (also written to
    ``data/raw/import_manifest.json``). Rerunning replaces the raw tables whole."""
    started = time.perf_counter()
    rej = Rejections()
    items = _read_items(options.items, rej)
    users = _read_users(options.users, rej)
    if options.fmt == "open-bandit":
        from ranker.data.open_bandit import read_open_bandit

        raw_rows, events, items, extra = read_open_bandit(options, rej)
        extra_tables = {**(extra_tables or {}), **extra}
    else:
        raw = read_any(options.path)
        raw_rows = len(raw)
        convert = interactions_to_events if options.fmt == "interactions" else events_to_events
        events = convert(raw, options, rej)
        events = _check_known_ids(events, items, users, rej)
    report = {
        "format": options.fmt,
        "source": str(Path(options.path).resolve()),
        "rows_read": int(raw_rows),
        "rows_imported": int(
            len(events) if options.fmt != "open-bandit" else (events.event_type == "impression").sum()
        ),
        "rejected": dict(rej.counts),
        "rejected_total": rej.total,
    }
    if options.strict and rej.total:
        reasons = ", ".join(f"{k}: {v}" for k, v in rej.counts.items())
        raise LogImportError(f"--strict: {rej.total} row(s) rejected ({reasons}); nothing was written")
    if events.empty:
        raise LogImportError(f"{options.path}: no valid rows to import (rejected: {rej.counts or 'none'})")
    events = events.sort_values(["timestamp", "request_id", "position", "event_id"], kind="stable")
    tables = derive_tables(events, items, users, sold_on_purchase=options.sold_on_purchase)
    raw_dir = settings.raw_dir
    schema.write_table(raw_dir, schema.EVENTS, events)
    schema.write_table(raw_dir, schema.LISTINGS, tables["listings"])
    schema.write_table(raw_dir, schema.USERS, tables["users"])
    schema.write_table(raw_dir, schema.SELLERS, tables["sellers"])
    # A side table of an earlier import (e.g. Open Bandit propensities) does not describe this log.
    from ranker.data.open_bandit import PROPENSITIES

    stale = raw_dir / f"{PROPENSITIES}.parquet"
    if PROPENSITIES not in (extra_tables or {}) and stale.exists():
        stale.unlink()
    for name, frame in (extra_tables or {}).items():
        tmp = raw_dir / f".{name}.parquet.tmp"
        frame.to_parquet(tmp, index=False)
        tmp.replace(raw_dir / f"{name}.parquet")
    counts = events.event_type.value_counts()
    report.update(
        {
            "events": {k: int(counts.get(k, 0)) for k in schema.EVENT_TYPES},
            "surfaces": {k: int(v) for k, v in events.surface.value_counts().items()},
            "has_impressions": bool(counts.get("impression", 0) > 0),
            "listings": int(len(tables["listings"])),
            "users": int(len(tables["users"])),
            "sellers": int(len(tables["sellers"])),
            "item_attributes": sorted(c for c in (items.columns if items is not None else []) if c != "item_id"),
            "window": {"first": events.timestamp.min().isoformat(), "last": events.timestamp.max().isoformat()},
            "extra_tables": sorted(extra_tables or {}),
            "raw_dir": str(raw_dir),
            "seconds": round(time.perf_counter() - started, 2),
        }
    )
    (raw_dir / MANIFEST).write_text(json.dumps(report, indent=2))
    return report


def describe(report: dict) -> str:
    """One paragraph for the CLI."""
    rejected = ", ".join(f"{k}: {v:,}" for k, v in report["rejected"].items()) or "none"
    ev = ", ".join(f"{v:,} {k}" for k, v in report["events"].items() if v)
    hint = (
        ""
        if report["has_impressions"]
        else " No impressions in this log: build training sets with `ranker dataset build --negatives K "
        "--feature-service generic_ranker_v1`."
    )
    return (
        f"Imported {report['rows_imported']:,} of {report['rows_read']:,} rows ({report['format']}) "
        f"from {report['source']}: {ev}; {report['listings']:,} listings, {report['users']:,} users, "
        f"{report['sellers']:,} sellers; {report['window']['first']} .. {report['window']['last']}.\n"
        f"Rejected {report['rejected_total']:,} row(s): {rejected}.\n"
        f"Wrote {report['raw_dir']}/ (events, listings, users, sellers"
        + "".join(f", {t}" for t in report["extra_tables"])
        + f", {MANIFEST}) in {report['seconds']} s."
        + hint
    )

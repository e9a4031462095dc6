"""The Open Bandit Dataset (ZOZOTOWN, Saito et al. 2020) as canonical events.

Each logged row is one round: an item shown in one of three slots of a fashion recommendation
widget, to a user described only by hashed attributes, with the click and the logging policy's
propensity of showing that item in that slot. Mapping:

* ``user_id``: ``obu_`` + a hash of ``user_feature_0..3`` (the log has no user id: a "user" is the
  combination of the hashed attributes, a segment rather than a person);
* ``item_id``: ``ob_{campaign}_{item_id}``; listings from ``item_context.csv``: ``item_feature_1``,
  ``_2``, ``_3`` (hashed categoricals) become category, brand and colour, ``item_feature_0`` (a
  standardised price-like number) the price; a listing goes live at its first appearance in the
  log and never sells (the catalogue is fixed for the week);
* each round is a request on the ``recs`` surface with one impression at its ``position``; a click
  becomes a click event one second after it (the log has no click time);
* the propensities go to ``data/raw/propensities.parquet`` (request, item, position, policy,
  campaign, propensity, click) for inverse-propensity evaluation (:mod:`ranker.training.ips`).
  The ``user-item_affinity_*`` columns are not imported.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from ranker.data import schema

CAMPAIGNS = ("all", "men", "women")
POLICIES = ("random", "bts")
CLICK_DELAY = pd.Timedelta(seconds=1)
PROPENSITIES = "propensities"


def _user_key(frame: pd.DataFrame) -> pd.Series:
    cols = [c for c in frame.columns if c.startswith("user_feature_")]
    key = frame[cols].astype(str).agg("|".join, axis=1)
    return key.map(lambda k: "obu_" + hashlib.sha1(k.encode()).hexdigest()[:12])


def read_open_bandit(options, rej) -> tuple[int, pd.DataFrame, pd.DataFrame, dict]:
    """Read the campaign's logs of the chosen policies under ``options.path``; returns
    (rows read, events, item attributes, extra raw tables)."""
    from ranker.data.log_io import LogImportError, parse_timestamps, read_any

    root = Path(options.path)
    if options.campaign not in CAMPAIGNS:
        raise LogImportError(f"unknown campaign {options.campaign!r}; use one of {', '.join(CAMPAIGNS)}")
    bad = [p for p in options.policies if p not in POLICIES]
    if bad or not options.policies:
        raise LogImportError(f"unknown policy {', '.join(bad) or '(none)'}; use one or more of {', '.join(POLICIES)}")
    if not root.is_dir():
        raise LogImportError(f"{root} is not the Open Bandit folder (expected random/ and bts/ inside, see its README)")
    frames, items = [], None
    rows_read = 0
    for policy in options.policies:
        folder = root / policy / options.campaign
        log_path = folder / f"{options.campaign}.csv"
        if not log_path.exists():
            raise LogImportError(
                f"{log_path} not found: is {root} the Open Bandit folder with {policy}/{options.campaign}/?"
            )
        raw = read_any(log_path, what="open bandit log")
        needed = ["timestamp", "item_id", "position", "click", "propensity_score", "user_feature_0"]
        missing = [c for c in needed if c not in raw.columns]
        if missing:
            raise LogImportError(f"{log_path}: missing column(s) {', '.join(missing)}")
        if options.sample_rows is not None and options.sample_rows < len(raw):
            raw = raw.sample(n=options.sample_rows, random_state=options.seed).sort_index()
        rows_read += len(raw)
        round_col = raw.columns[0] if raw.columns[0] not in needed else None
        df = pd.DataFrame(
            {
                "round": raw[round_col].astype(str) if round_col is not None else raw.index.astype(str),
                "timestamp": parse_timestamps(raw.timestamp),
                "item": pd.to_numeric(raw.item_id, errors="coerce"),
                "position": pd.to_numeric(raw.position, errors="coerce"),
                "click": pd.to_numeric(raw.click, errors="coerce"),
                "propensity": pd.to_numeric(raw.propensity_score, errors="coerce"),
                "user_id": _user_key(raw),
            },
            index=raw.index,
        )
        df = rej.reject(df, df.timestamp.isna().to_numpy(), "unparsable timestamp")
        df = rej.reject(df, (df.item.isna() | (df.item < 0) | (df.item != df.item.round())).to_numpy(), "bad item_id")
        df = rej.reject(
            df,
            (df.position.isna() | (df.position < 1) | (df.position != df.position.round())).to_numpy(),
            "position not a positive integer",
        )
        df = rej.reject(df, ~df.click.isin([0, 1]).to_numpy(), "click not 0/1")
        df = rej.reject(
            df,
            (df.propensity.isna() | (df.propensity <= 0) | (df.propensity > 1)).to_numpy(),
            "propensity not in (0, 1]",
        )
        df = rej.reject(df, df.duplicated(["timestamp", "item", "position", "user_id"]).to_numpy(), "duplicate")
        df["policy"] = policy
        frames.append(df)
        ctx_path = folder / "item_context.csv"
        if items is None and ctx_path.exists():
            ctx = read_any(ctx_path, what="open bandit item context")
            items = pd.DataFrame(
                {
                    "item_id": "ob_" + options.campaign + "_" + pd.to_numeric(ctx.item_id).astype(int).astype(str),
                    "price": pd.to_numeric(ctx.get("item_feature_0"), errors="coerce"),
                    "category": ctx.get("item_feature_1"),
                    "brand": ctx.get("item_feature_2"),
                    "colour": ctx.get("item_feature_3"),
                    "seller_id": "zozotown",
                }
            )
    log = pd.concat(frames, ignore_index=True)
    log["item_id"] = "ob_" + options.campaign + "_" + log.item.astype(int).astype(str)
    if items is not None:
        unknown = ~log.item_id.isin(items.item_id)
        log = rej.reject(log, unknown.to_numpy(), "unknown item_id")
    log["request_id"] = "ob_" + log.policy + "_" + options.campaign + "_" + log["round"]
    log["position"] = log.position.astype("int64")
    log["campaign"] = options.campaign
    base = {
        "user_id": log.user_id,
        "item_id": log.item_id,
        "surface": "recs",
        "request_id": log.request_id,
        "position": log.position,
        "query": pd.NA,
    }
    impressions = pd.DataFrame(
        {**base, "event_type": "impression", "timestamp": log.timestamp, "event_id": log.request_id + ":imp"}
    )
    clicked = log.click.to_numpy() == 1
    clicks = pd.DataFrame({k: (v[clicked] if isinstance(v, pd.Series) else v) for k, v in base.items()})
    clicks["event_type"] = "click"
    clicks["timestamp"] = log.timestamp[clicked] + CLICK_DELAY
    clicks["event_id"] = log.request_id[clicked] + ":click"
    events = pd.concat([impressions, clicks], ignore_index=True)
    propensities = (
        pd.DataFrame(
            {
                "request_id": log.request_id.astype(str),
                "timestamp": log.timestamp.astype(schema.TS),
                "user_id": log.user_id.astype(str),
                "item_id": log.item_id.astype(str),
                "position": log.position.astype("int32"),
                "click": log.click.astype("int8"),
                "propensity": log.propensity.astype("float64"),
                "policy": log.policy.astype(str),
                "campaign": log.campaign.astype(str),
            }
        )
        .sort_values(["timestamp", "request_id"], kind="stable")
        .reset_index(drop=True)
    )
    if items is not None:
        items = items[items.item_id.isin(log.item_id)].reset_index(drop=True) if len(log) else items
        items["original_price"] = items.price
    return rows_read, events, items, {PROPENSITIES: propensities}


def catalogue(listings: pd.DataFrame, campaign: str) -> np.ndarray:
    """The campaign's item ids (the candidates a policy chooses from)."""
    prefix = f"ob_{campaign}_"
    return np.sort(listings.item_id[listings.item_id.str.startswith(prefix)].astype(str).to_numpy())

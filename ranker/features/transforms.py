"""Request-time feature transformations, written once and used everywhere.

Feast's on-demand feature views in ``feature_repo/on_demand.py`` wrap these functions, so the same
code computes the features for point-in-time training sets (``get_historical_features``), for
Feast's online path (``get_online_features``) and for the scorer's fast path. Each function takes a
DataFrame with the named input columns and returns a DataFrame with the output columns only.

Inputs may arrive as float64 with NaN (offline) or as Python objects with None (online); every
function normalises first and computes in float64, then returns float32, so both paths round the
same way.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SECONDS_PER_HOUR = 3600.0


def _num(series: pd.Series) -> np.ndarray:
    return pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _text(series: pd.Series) -> list:
    return [v if isinstance(v, str) else None for v in series.tolist()]


def listing_request_features(inputs: pd.DataFrame) -> pd.DataFrame:
    """listing_age_hours: hours between the listing going live and the request (empty if unknown)."""
    age = (_num(inputs["request_ts"]) - _num(inputs["listing_created_epoch"])) / SECONDS_PER_HOUR
    return pd.DataFrame({"listing_age_hours": age.astype(np.float32)})


def user_listing_features(inputs: pd.DataFrame) -> pd.DataFrame:
    """How a listing fits this user.

    price_vs_user_median: price / the user's median clicked price (empty without history);
    price_index: price / the category's median asking price;
    price_fit: |log(price_index / the user's price index)|, 0 when the listing sits at the user's
    usual price level for its category (empty without history);
    size_match: 1 when the listing's size is the user's profile size (or "one size"), 0 when both
    are known and differ, empty otherwise.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        price = _num(inputs["price"])
        median = _num(inputs["user_median_click_price_30d"])
        ratio = np.where(median > 0, price / median, np.nan)
        category_median = _num(inputs["category_median_price"])
        index = np.where(category_median > 0, price / category_median, np.nan)
        user_index = _num(inputs["user_price_index_30d"])
        fit = np.where((user_index > 0) & (index > 0), np.abs(np.log(index / user_index)), np.nan)
    match = [
        np.nan if s is None else 1.0 if s == "one size" else np.nan if u is None else float(s == u)
        for s, u in zip(_text(inputs["size"]), _text(inputs["user_size"]))
    ]
    return pd.DataFrame(
        {
            "price_vs_user_median": ratio.astype(np.float32),
            "price_index": index.astype(np.float32),
            "price_fit": fit.astype(np.float32),
            "size_match": np.asarray(match, dtype=np.float64).astype(np.float32),
        }
    )


def query_listing_features(inputs: pd.DataFrame) -> pd.DataFrame:
    """query_title_match: share of the query's words found in the listing title (empty without a
    query or a known listing)."""
    scores = []
    for q, t in zip(_text(inputs["query_text"]), _text(inputs["title"])):
        words = set(q.split()) if q else set()
        if not words or t is None:
            scores.append(np.nan)
        else:
            scores.append(len(words.intersection(t.split())) / len(words))
    return pd.DataFrame({"query_title_match": np.asarray(scores, dtype=np.float64).astype(np.float32)})

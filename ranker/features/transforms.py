"""Request-time feature transformations, written once and used everywhere.

Feast's on-demand feature views in ``feature_repo/on_demand.py`` wrap these functions, so the same
code computes the features for point-in-time training sets (``get_historical_features``), for
Feast's online path (``get_online_features``) and for the scorer's fast path. Each function takes a
DataFrame with the named input columns and returns a DataFrame with the output columns only.

Inputs may arrive as float64 with NaN (offline) or as Python objects with None (online); every
function normalises first and computes in float64, then returns float32, so both paths round the
same way.

``inputs`` is a DataFrame (Feast) or any mapping of column name to array or list (the scorer's hot
path passes a dict of float64 arrays and lists of str/None, and skips pandas altogether); the
result is a DataFrame for a DataFrame and a dict of float32 arrays otherwise, with the same values.
"""

from __future__ import annotations

import math
import operator
from itertools import repeat

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

SECONDS_PER_HOUR = 3600.0
# Text columns up to this length are factorised with a dict in Python (cheaper than Arrow's setup
# for a request's few hundred rows); longer ones by Arrow. Both give the same codes.
SMALL_COLUMN = 4096
WORDS_MEMO_SIZE = 200_000  # distinct texts whose word sets are remembered (query_title_match)
# A request's query of up to this many words is looked for one word at a time in all its titles; a
# longer one intersects word sets instead (measured: about the cost of three single-word passes).
WORD_PASSES = 3


def _num(series) -> np.ndarray:
    if isinstance(series, np.ndarray) and series.dtype == np.float64:
        return series
    return pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _output(inputs, columns: dict) -> "pd.DataFrame | dict":
    """The result in the caller's form: a DataFrame for a DataFrame, else the dict itself."""
    return pd.DataFrame(columns) if isinstance(inputs, pd.DataFrame) else columns


def _text(series: pd.Series) -> list:
    return [v if isinstance(v, str) else None for v in series.tolist()]


def _values(column) -> list:
    """The column's values as a Python list (a list is used as it is)."""
    if isinstance(column, list):
        return column
    return column.tolist() if hasattr(column, "tolist") else list(column)


def _one_value(values: list) -> bool:
    """Whether every value equals the first: a request repeats one user size and one query object,
    so this is one C-level pass of identity checks. False for an empty list, and when a comparison
    has no truth value (``pd.NA == "m"``): the caller then takes its general path."""
    try:
        return bool(values) and values.count(values[0]) == len(values)
    except (TypeError, ValueError):
        return False


def _text_codes(*columns) -> tuple[list[np.ndarray], list[str]]:
    """Factorise text columns jointly, without a Python step per row: per column, int64 codes into
    one list of distinct strings, and -1 where the value is not a string (None, NaN, pd.NA, a
    number...), exactly the values :func:`_text` turns into None. Equal strings share a code."""
    ids: dict[str, int] = {}
    out = []
    for column in columns:
        codes, uniques = _factorize_text(column)
        lut = np.array(
            [ids.setdefault(u, len(ids)) if isinstance(u, str) else -1 for u in uniques] + [-1], dtype=np.int64
        )
        out.append(lut[codes])  # code -1 picks the trailing -1
    return out, list(ids)


def _factorize_text(column) -> tuple[np.ndarray, list]:
    """(codes, distinct values): -1 for missing values; distinct values that are not strings are
    left for the caller to reject. Short columns are hashed by a dict (non-strings get -1 right
    away); otherwise Arrow does the hashing when the column is (or converts cleanly to) strings and
    nulls, and anything else goes through pandas."""
    if len(column) <= SMALL_COLUMN:
        values = _values(column)
        if values and isinstance(values[0], str) and _one_value(values):
            return np.zeros(len(values), dtype=np.int64), [values[0]]  # one text (a request's user or query)
        seen: dict = {}
        codes = [seen.setdefault(v, len(seen)) if isinstance(v, str) else -1 for v in values]
        return np.array(codes, dtype=np.int64), list(seen)
    return _factorize_text_general(column)


def _factorize_text_general(column) -> tuple[np.ndarray, list]:
    try:
        arr = pa.array(column, from_pandas=True)
    except (pa.ArrowException, TypeError, ValueError, UnicodeError):
        arr = None
    if arr is not None and pa.types.is_null(arr.type):
        return np.full(len(column), -1, dtype=np.int64), []
    if arr is not None and (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        chunks = arr.chunks if isinstance(arr, pa.ChunkedArray) else [arr]
        encoded = [pc.dictionary_encode(c) for c in chunks]
        if not encoded:
            return np.zeros(0, dtype=np.int64), []
        first = encoded[0].dictionary
        if all(e.dictionary.equals(first) for e in encoded[1:]):
            codes = [e.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64) for e in encoded]
            return np.concatenate(codes), first.to_pylist()
        pieces: list[np.ndarray] = []
        uniques: list = []
        for e in encoded:  # a dictionary per chunk: offset each chunk's codes
            idx = e.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
            pieces.append(np.where(idx >= 0, idx + len(uniques), -1))
            uniques.extend(e.dictionary.to_pylist())
        return np.concatenate(pieces), uniques
    codes, uniques = pd.factorize(np.asarray(column, dtype=object) if isinstance(column, list) else column)
    return np.asarray(codes, dtype=np.int64), list(uniques)


def listing_request_features(inputs):
    """listing_age_hours: hours between the listing going live and the request (empty if unknown)."""
    age = (_num(inputs["request_ts"]) - _num(inputs["listing_created_epoch"])) / SECONDS_PER_HOUR
    return _output(inputs, {"listing_age_hours": age.astype(np.float32)})


def user_listing_features(inputs):
    """How a listing fits this user.

    price_vs_user_median: price / the user's median clicked price (empty without history);
    price_index: price / the category's median asking price;
    price_fit: |log(price_index / the user's price index)|, 0 when the listing sits at the user's
    usual price level for its category (empty without history);
    size_match: 1 when the listing's size is the user's profile size (or "one size"), 0 when both
    are known and differ, empty otherwise.
    """
    price = _num(inputs["price"])
    median = _num(inputs["user_median_click_price_30d"])
    category_median = _num(inputs["category_median_price"])
    user_index = _num(inputs["user_price_index_30d"])
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(median > 0, price / median, np.nan)
        index = np.where(category_median > 0, price / category_median, np.nan)
        both_positive = np.minimum(user_index, index) > 0  # = (user_index > 0) & (index > 0): False with a NaN
        fit = np.where(both_positive, np.abs(np.log(index / user_index)), np.nan)
    return _output(
        inputs,
        {
            "price_vs_user_median": ratio.astype(np.float32),
            "price_index": index.astype(np.float32),
            "price_fit": fit.astype(np.float32),
            "size_match": _size_match(inputs["size"], inputs["user_size"]).astype(np.float32),
        },
    )


_SIZE_VALUES = np.array([0.0, 1.0, np.nan])  # size_match by code: 0 differ, 1 match, 2 unknown


def _size_match(size, user_size) -> np.ndarray:
    """Per row: NaN without the listing's size, 1.0 for "one size", NaN without the user's size,
    else 1.0 if they are equal, 0.0 if not (float64).

    A request's rows (up to ``SMALL_COLUMN``) look their value up in a table of the few distinct
    sizes (a request has one user, so one user size), or of the distinct (size, user size) pairs
    when the user column varies. Longer columns, and values a dict cannot hold, are factorised."""
    if len(size) <= SMALL_COLUMN:
        sizes, users = _values(size), _values(user_size)
        if len(sizes) == len(users):
            try:
                if _one_value(users):
                    keys, user = sizes, users[0]
                    table = {s: _size_code(s, user) for s in set(sizes)}
                else:
                    keys = list(zip(sizes, users, strict=False))
                    table = {k: _size_code(*k) for k in set(keys)}
                codes = bytes(map(table.__getitem__, keys))
            except (TypeError, ValueError):  # an unhashable value, or one with no truth in ==
                pass
            else:
                return _SIZE_VALUES.take(np.frombuffer(codes, dtype=np.uint8))
    (s, u), strings = _text_codes(size, user_size)
    one_size = np.array([v == "one size" for v in strings] + [False], dtype=bool)
    equal = (s == u).astype(np.float64)
    return np.where(s < 0, np.nan, np.where(one_size[s], 1.0, np.where(u < 0, np.nan, equal)))


def _size_code(size, user_size) -> int:
    """One row of :func:`_size_match` as an index into ``_SIZE_VALUES`` (non-strings are missing)."""
    if not isinstance(size, str):
        return 2
    if size == "one size":
        return 1
    if not isinstance(user_size, str):
        return 2
    return 1 if size == user_size else 0


def query_listing_features(inputs):
    """query_title_match: share of the query's words found in the listing title (empty without a
    query or a known listing)."""
    return _output(
        inputs, {"query_title_match": _query_title_match(inputs["query_text"], inputs["title"]).astype(np.float32)}
    )


def _query_title_match(query, title) -> np.ndarray:
    """len(set(q.split()) & set(t.split())) / len(set(q.split())) per row (float64), NaN without a
    query (or one with no words) or without a title.

    A request's rows (up to ``SMALL_COLUMN``) are counted in Python, by C-level passes when one
    query is repeated over all rows (:func:`_query_title_match_rows`). A training set's rows are
    vectorised instead: words split once per distinct query and title, the per-row counting in
    numpy. All give the same numbers (tests/test_features.py, tests/test_dataset_speed_invariants.py)."""
    n = len(query)
    if n <= SMALL_COLUMN:
        return _query_title_match_rows(query, title)
    (q,), queries = _text_codes(query)
    (t,), titles = _text_codes(title)
    vocab: dict[str, int] = {}
    q_words = [sorted({vocab.setdefault(w, len(vocab)) for w in set(v.split())}) for v in queries]
    q_len = np.array([len(w) for w in q_words] + [0], dtype=np.int64)  # index -1: no query
    q_ptr = np.concatenate([[0], np.cumsum(q_len[:-1])]).astype(np.int64)
    q_ids = np.fromiter((i for w in q_words for i in w), dtype=np.int64, count=int(q_len[:-1].sum()))
    # For each distinct title, the ids of the query words it contains (other words never count).
    n_vocab = max(len(vocab), 1)
    keys = [c * n_vocab + vocab[w] for c, v in enumerate(titles) for w in set(v.split()) if w in vocab]
    title_keys = pd.Index(np.array(keys, dtype=np.int64))  # distinct by construction
    rows = np.flatnonzero((q_len[q] > 0) & (t >= 0))
    reps = q_len[q[rows]]
    row_of = np.repeat(rows, reps)
    start = np.repeat(q_ptr[q[rows]] - (np.cumsum(reps) - reps), reps)
    word = q_ids[start + np.arange(len(row_of))] if len(row_of) else np.zeros(0, dtype=np.int64)
    wanted = t[row_of] * n_vocab + word
    found = (title_keys.get_indexer(wanted) >= 0).astype(np.float64)
    hits = np.bincount(row_of, weights=found, minlength=n)
    scores = np.full(n, np.nan)
    scores[rows] = hits[rows] / q_len[q[rows]]
    return scores


def _query_title_match_rows(query, title) -> np.ndarray:
    """The small path of :func:`_query_title_match`. A request repeats one query: its words are
    taken once, and each is looked for in all the titles by one C-level ``map``: in the titles
    themselves when they are ASCII (:func:`_spaced_titles`), else in their word sets, remembered
    across calls (``_WORDS``). A query of more than ``WORD_PASSES`` words intersects the word sets
    instead. Rows whose title is not a string, and queries that vary per row, go through the
    per-row loop."""
    queries, titles = _values(query), _values(title)
    n = len(queries)
    if len(titles) == n and _one_value(queries):
        q = queries[0]
        q_set = _WORDS[q] if isinstance(q, str) else None
        if not q_set:  # no query, or one without words
            return np.full(n, np.nan)
        if len(q_set) <= WORD_PASSES:
            spaced = _spaced_titles(titles)
            if spaced is not None:
                return _word_passes([f" {w} " for w in q_set], spaced)
        try:
            title_sets = list(map(_WORDS.__getitem__, titles))  # TypeError for a title that is not a string
        except TypeError:
            pass
        else:
            if len(q_set) <= WORD_PASSES:
                return _word_passes(list(q_set), title_sets)
            hits = np.fromiter(map(len, map(q_set.intersection, title_sets)), dtype=np.int64, count=n)
            return np.true_divide(hits, len(q_set), dtype=np.float64)
    return _query_title_match_loop(queries, titles)


def _word_passes(needles: list, haystacks: list) -> np.ndarray:
    """The share of the query's words found per title (float64), one ``map`` per word: ``needles``
    are the query's distinct words as looked for in the titles' ``haystacks`` (``in``). The counts
    are exact integers, so the division rounds as Python's ``int / int`` does."""
    hits = None
    for needle in needles:
        found = np.frombuffer(bytes(map(operator.contains, haystacks, repeat(needle))), dtype=np.uint8)
        hits = found if hits is None else hits + found  # at most WORD_PASSES: no uint8 overflow
    assert hits is not None, "a query has at least one word here"
    return np.true_divide(hits, len(needles), dtype=np.float64)


# ASCII whitespace (what str.split splits on below 128) other than the newline, to a space.
_ASCII_SPACES = {c: " " for c in range(128) if chr(c).isspace() and chr(c) not in " \n"}


def _spaced_titles(titles: list) -> "list[str] | None":
    """Each title as " " + title + " " with every whitespace character turned into a space: its
    words (``str.split``) are exactly the w for which " w " is in it. Made by one join, translate
    and split over the request's titles, which are fresh in the CPU cache; the word-set memo, spread
    over the heap, is not, and in the scorer looking 200 titles up in it costs about twice all of
    this. None unless every title is an ASCII string without a newline (the separator)."""
    try:
        joined = " \n ".join(titles)
    except TypeError:  # a title that is not a string
        return None
    if not joined.isascii() or joined.count("\n") != len(titles) - 1:
        return None
    return f" {joined} ".translate(_ASCII_SPACES).split("\n")


def _query_title_match_loop(queries: list, titles: list) -> np.ndarray:
    """Row by row, for queries that vary and titles that are not all strings."""
    out = [math.nan] * len(queries)
    last, q_set, q_n = None, None, 0
    for i, (q, t) in enumerate(zip(queries, titles, strict=False)):
        if q is not last:  # consecutive rows often share one query object: its words once
            last = q
            q_set = _WORDS[q] if isinstance(q, str) else None
            q_n = len(q_set) if q_set else 0
        if q_n and isinstance(t, str):
            out[i] = len(q_set & _WORDS[t]) / q_n
    return np.array(out, dtype=np.float64)


class _WordSets(dict):
    """text -> the frozenset of its distinct words (``str.split``). A text missing from the memo is
    split on lookup and remembered for the next ``WORDS_MEMO_SIZE`` distinct texts (then all are
    forgotten at once); looking up anything but a string raises TypeError."""

    def __missing__(self, text):
        if not isinstance(text, str):
            raise TypeError(f"not a text: {type(text).__name__}")
        if len(self) >= WORDS_MEMO_SIZE:
            self.clear()
        words = self[text] = frozenset(text.split())
        return words


_WORDS = _WordSets()


# Letter sizes on one scale of steps; the batch table user_size_stats (ranker/features/build.py) uses
# the same scale and the same rule for numeric (shoe) sizes.
CLOTHING_STEPS = {"XXS": -1, "XS": 0, "S": 1, "M": 2, "L": 3, "XL": 4, "XXL": 5}
NUMERIC_SIZE_RANGE = (15.0, 55.0)
_NO_SIZE = (0, math.nan)


def size_scale(label) -> tuple[int, float]:
    """A size label as (kind, value): (1, steps) for a letter size, (2, number) for a numeric size in
    ``NUMERIC_SIZE_RANGE`` (shoes), (0, NaN) for anything else ("one size", empty, not a string)."""
    if not isinstance(label, str):
        return _NO_SIZE
    step = CLOTHING_STEPS.get(label.upper())
    if step is not None:
        return 1, float(step)
    try:
        value = float(label)
    except ValueError:
        return _NO_SIZE
    low, high = NUMERIC_SIZE_RANGE
    return (2, value) if low <= value <= high else _NO_SIZE


class _SizeScales(dict):
    """label -> :func:`size_scale`, remembered (a marketplace has a few dozen size labels)."""

    def __missing__(self, label):
        try:
            scale = self[label] = size_scale(label)
        except TypeError:  # unhashable: computed, not remembered
            return size_scale(label)
        return scale


_SIZES = _SizeScales()


def user_size_features(inputs):
    """How a listing's size fits the sizes this user wears.

    size_gap_profile: |steps between a letter-sized listing and the user's profile size| (empty for
    other listings or without a letter profile size);
    size_gap_engaged: |the listing's size - the user's mean engaged size of that kind| over 30 days,
    in letter steps or numeric sizes (empty without such engagement or for unsized listings);
    size_engaged_n: the user's engagements with listings sized like this one (letters or numbers),
    30 days (0 for unsized listings).
    """
    scales = [_SIZES[v] for v in _values(inputs["size"])]
    n = len(scales)
    kind = np.fromiter((k for k, _ in scales), dtype=np.int8, count=n)
    value = np.fromiter((v for _, v in scales), dtype=np.float64, count=n)
    profile = np.fromiter(
        (v if k == 1 else math.nan for k, v in (_SIZES[p] for p in _values(inputs["user_size"]))),
        dtype=np.float64,
        count=n,
    )
    clothing, shoe = kind == 1, kind == 2
    engaged = np.where(
        clothing, _num(inputs["user_clothing_size_30d"]), np.where(shoe, _num(inputs["user_shoe_size_30d"]), np.nan)
    )
    count = np.where(
        clothing,
        _num(inputs["user_clothing_engaged_30d"]),
        np.where(shoe, _num(inputs["user_shoe_engaged_30d"]), 0.0),
    )
    return _output(
        inputs,
        {
            "size_gap_profile": np.where(clothing, np.abs(value - profile), np.nan).astype(np.float32),
            "size_gap_engaged": np.abs(value - engaged).astype(np.float32),
            "size_engaged_n": np.nan_to_num(count, nan=0.0).astype(np.float32),
        },
    )


def price_band(price, category_median) -> np.ndarray:
    """The band of price / the category's median price (``ranker.features.taste.PRICE_BAND_EDGES``) as
    float64 0..N_PRICE_BANDS-1, NaN without a price or a positive median (the batch table bands the
    same way: ``x < edge`` picks the first band whose edge is above x)."""
    from ranker.features.taste import PRICE_BAND_EDGES

    price, median = _num(price), _num(category_median)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(median > 0, price / median, np.nan)
    band = np.searchsorted(np.array(PRICE_BAND_EDGES), ratio, side="right").astype(np.float64)
    return np.where(np.isnan(ratio), np.nan, band)


def user_price_band_features(inputs):
    """The user's taste for the candidate's price level (bands of price / category median, 30 days).

    price_band_clicks: the user's clicks on listings of the candidate's band (0 without any; empty
    for a listing without a price band);
    price_band_click_share: those clicks over all the user's clicks (empty without clicks);
    price_band_ctr_lift: the user's click-through rate in the band, smoothed towards the user's own
    rate with ``BAND_PRIOR_WEIGHT`` pseudo-impressions, over that rate (1 = no preference; empty
    without impressions or clicks).
    """
    from ranker.features.taste import BAND_PRIOR_WEIGHT, N_PRICE_BANDS

    band = price_band(inputs["price"], inputs["category_median_price"])
    n = len(band)
    imp = np.zeros((n, N_PRICE_BANDS))
    clk = np.zeros((n, N_PRICE_BANDS))
    for b in range(N_PRICE_BANDS):
        imp[:, b] = np.nan_to_num(_num(inputs[f"upb_impressions_{b}_30d"]), nan=0.0)
        clk[:, b] = np.nan_to_num(_num(inputs[f"upb_clicks_{b}_30d"]), nan=0.0)
    known = ~np.isnan(band)
    pick = np.where(known, band, 0).astype(np.int64)[:, None]
    imp_b = np.take_along_axis(imp, pick, axis=1)[:, 0]
    clk_b = np.take_along_axis(clk, pick, axis=1)[:, 0]
    total_imp, total_clk = imp.sum(axis=1), clk.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(known & (total_clk > 0), clk_b / total_clk, np.nan)
        ctr = np.where(total_imp > 0, total_clk / total_imp, 0.0)
        lift = np.where(
            known & (ctr > 0), ((clk_b + BAND_PRIOR_WEIGHT * ctr) / (imp_b + BAND_PRIOR_WEIGHT)) / ctr, np.nan
        )
    return _output(
        inputs,
        {
            "price_band_clicks": np.where(known, clk_b, np.nan).astype(np.float32),
            "price_band_click_share": share.astype(np.float32),
            "price_band_ctr_lift": lift.astype(np.float32),
        },
    )


def _cosine(inputs, left: list[str], right: list[str]) -> np.ndarray:
    """Row-wise cosine of two stored embeddings (float64), NaN when either is missing or zero. Summed
    component by component (elementwise numpy only), so every path rounds the same way."""
    dot = aa = bb = 0.0
    for lc, rc in zip(left, right, strict=True):
        a, b = _num(inputs[lc]), _num(inputs[rc])
        dot, aa, bb = dot + a * b, aa + a * a, bb + b * b
    norms = np.sqrt(aa) * np.sqrt(bb)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(norms > 0, dot / norms, np.nan)


def query_title_similarity(inputs):
    """query_title_similarity: cosine of the search text's and the listing title's embeddings
    (``ranker.features.text``; empty for a search text or a listing the store has no embedding of)."""
    from ranker.features.text import component_names

    sim = _cosine(inputs, component_names("query_text"), component_names("listing_text"))
    return _output(inputs, {"query_title_similarity": sim.astype(np.float32)})


def user_title_similarity(inputs):
    """user_title_similarity: cosine of the listing title's embedding and the mean embedding of the
    titles the user engaged with in the last 30 days (empty without such engagement)."""
    from ranker.features.text import component_names

    sim = _cosine(inputs, component_names("user_text"), component_names("listing_text"))
    return _output(inputs, {"user_title_similarity": sim.astype(np.float32)})

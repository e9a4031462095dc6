"""The fast training-set path changes nothing but speed: vectorised request-time transforms are bit
for bit the per-row originals (on messy inputs: None, NaN, pd.NA, numbers, bytes, odd whitespace,
every string dtype), and the Arrow-based build writes exactly the rows of the original pandas
algorithm (Feast ``to_df`` per chunk, rows put back in order, ``feature_matrix``), with a
fingerprint that is a pure function of those rows."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from ranker.features import transforms
from ranker.features.store import feature_store, in_feature_repo, service_spec
from ranker.training import dataset as ds


# -- the per-row reference implementations the vectorised code replaced --------------------------
def _ref_text(series):
    return [v if isinstance(v, str) else None for v in series.tolist()]


def _ref_size_match(size, user_size):
    match = [
        np.nan if s is None else 1.0 if s == "one size" else np.nan if u is None else float(s == u)
        for s, u in zip(_ref_text(size), _ref_text(user_size), strict=False)
    ]
    return np.asarray(match, dtype=np.float64).astype(np.float32)


def _ref_query_title_match(query_text, title):
    scores = []
    for q, t in zip(_ref_text(query_text), _ref_text(title), strict=False):
        words = set(q.split()) if q else set()
        if not words or t is None:
            scores.append(np.nan)
        else:
            scores.append(len(words.intersection(t.split())) / len(words))
    return np.asarray(scores, dtype=np.float64).astype(np.float32)


def _bits(a) -> list:
    a = np.asarray(a)
    assert a.dtype == np.float32
    return a.view(np.uint32).tolist()


WORDS = ["red", "silk", "dress", "zara", "boots", "one", "size", "M", "m", "é", "日本", "a", "\u00a0", "x\ty", "\x1c"]
ODD = [None, np.nan, pd.NA, "", " ", "  \t ", "one size", "One Size", "M", "m", 3, 2.5, b"M", True]


def _texts(rng, n, max_words, odd_share=0.15, allow_odd_types=True):
    out = []
    for _ in range(n):
        if rng.random() < odd_share:
            v = ODD[rng.integers(len(ODD))]
            if not allow_odd_types and not (v is None or isinstance(v, str)):
                v = None
            out.append(v)
        else:
            out.append(" ".join(rng.choice(WORDS, rng.integers(0, max_words + 1))))
    return out


def _as_dtype(values, kind):
    """The same values as the column types Feast and the scorer hand over."""
    if kind == "object":
        return pd.Series(values, dtype=object)
    clean = [v if isinstance(v, str) else None for v in values]
    if kind == "str":  # pandas' Arrow-backed str (what the fast path gets from to_pandas)
        return pd.Series(clean, dtype=pd.StringDtype("pyarrow", na_value=np.nan))
    if kind == "string":
        return pd.Series(clean, dtype="string")
    if kind == "arrow":
        return pd.Series(clean, dtype=pd.ArrowDtype(pa.string()))
    if kind == "chunked":  # several Arrow chunks
        half = len(clean) // 2
        parts = [
            pd.Series(clean[:half], dtype=pd.StringDtype("pyarrow", na_value=np.nan)),
            pd.Series(clean[half:], dtype=pd.StringDtype("pyarrow", na_value=np.nan)),
        ]
        return pd.concat(parts, ignore_index=True)
    raise AssertionError(kind)


KINDS = ["object", "str", "string", "arrow", "chunked"]


@pytest.fixture(params=["dict", "arrow"])
def factorizer(request, monkeypatch):
    """Both ways of factorising text: a dict for short columns (the scorer's requests) and Arrow
    for long ones (training sets) must give the same features."""
    if request.param == "arrow":
        monkeypatch.setattr(transforms, "SMALL_COLUMN", -1)
    else:
        monkeypatch.setattr(transforms, "SMALL_COLUMN", 10**9)
    return request.param


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_size_match_bit_identical(kind, seed, factorizer):
    rng = np.random.default_rng(seed)
    n = 3000
    size = _as_dtype(_texts(rng, n, 2), kind)
    user = _as_dtype(_texts(rng, n, 2), kind)
    want = _ref_size_match(size, user)
    got = transforms._size_match(size, user).astype(np.float32)
    assert _bits(got) == _bits(want)
    # and through the public transform (whatever other inputs it reads are given as missing)
    frame = pd.DataFrame({"size": size, "user_size": user, "price": rng.uniform(1, 100, n)})
    for _ in range(20):
        try:
            out = transforms.user_listing_features(frame)
            break
        except KeyError as missing:
            frame[missing.args[0]] = np.nan
    assert _bits(out["size_match"].to_numpy()) == _bits(want)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_query_title_match_bit_identical(kind, seed, factorizer):
    rng = np.random.default_rng(seed)
    n = 4000
    query = _as_dtype(_texts(rng, n, 4), kind)
    title = _as_dtype(_texts(rng, n, 9), kind)
    out = transforms.query_listing_features(pd.DataFrame({"query_text": query, "title": title}))
    assert list(out.columns) == ["query_title_match"]
    assert _bits(out["query_title_match"].to_numpy()) == _bits(_ref_query_title_match(query, title))


@pytest.mark.parametrize("seed", [0, 1])
def test_transforms_take_a_dict_of_arrays_and_lists(seed):
    """The scorer's hot path hands the transforms a dict (float64 arrays, lists of str/None) and
    gets a dict back: the values must be those of the DataFrame call, bit for bit."""
    rng = np.random.default_rng(seed)
    n = 300

    def nums(missing=0.2):
        x = rng.uniform(0, 200, n)
        x[rng.random(n) < missing] = np.nan
        return x

    cols = {
        "request_ts": np.full(n, 1_790_000_000.0),
        "listing_created_epoch": 1_789_000_000.0 + nums() * 1000,
        "price": nums(),
        "user_median_click_price_30d": nums(0.5),
        "category_median_price": nums(),
        "user_price_index_30d": nums(0.5) / 100,
        "size": _texts(rng, n, 2),
        "user_size": [None if rng.random() < 0.3 else "m"] * n,
        "query_text": [" ".join(rng.choice(WORDS, 2))] * n,
        "title": _texts(rng, n, 9),
    }
    frame = pd.DataFrame({k: (pd.Series(v, dtype=object) if isinstance(v, list) else v) for k, v in cols.items()})
    for fn in (
        transforms.listing_request_features,
        transforms.user_listing_features,
        transforms.query_listing_features,
    ):
        want = fn(frame)
        got = fn(dict(cols))
        assert isinstance(got, dict) and list(got) == list(want.columns)
        for name in want.columns:
            assert got[name].dtype == np.float32
            assert _bits(got[name]) == _bits(want[name].to_numpy()), (fn.__name__, name)


def test_transforms_on_edge_inputs():
    empty = pd.Series([], dtype=object)
    out = transforms.query_listing_features(pd.DataFrame({"query_text": empty, "title": empty}))
    assert len(out) == 0 and out["query_title_match"].dtype == np.float32
    assert transforms._size_match(empty, empty).shape == (0,)
    nothing = pd.Series([None, None], dtype=object)
    assert np.isnan(
        transforms.query_listing_features(pd.DataFrame({"query_text": nothing, "title": nothing})).query_title_match
    ).all()
    floats = pd.Series([np.nan, np.nan])  # an all-missing column arrives as float64 offline
    assert np.isnan(transforms._size_match(floats, floats)).all()
    # repeated words count once; a title word matching several query words counts for each
    q = pd.Series(["red red dress", "a b c", "x", "\ud800 red"], dtype=object)  # a lone surrogate too
    t = pd.Series(["red", "c b a a", "", "red \ud800"], dtype=object)
    got = transforms.query_listing_features(pd.DataFrame({"query_text": q, "title": t})).query_title_match
    assert _bits(got.to_numpy()) == _bits(_ref_query_title_match(q, t))


# -- the request-time fast paths (a dict of lists, ~200 rows) against the same references --------
QUERIES = [
    None,
    np.nan,
    pd.NA,
    "",
    "   ",
    "red",
    "red red",
    "\u00a0",
    "é 日本",
    "re dres",
    "red, |",
    "red dress",
    "red silk dress",
    "red silk dress zara",
    "red silk dress zara boots one size",
    "x\ty M m a",
]
ASCII_WORDS = ["red", "silk", "dress", "zara", "boots", "one", "size", "M", "m", "a", "x", "y", "red,", "|", "dresses"]
ASCII_SPACES = [" ", " ", " ", "  ", "\t", "\x0b", "\x0c", "\r", "\x1c", "\x1d", "\x1e", "\x1f", " \t "]
TITLES = ["ascii", "ascii_newline", "non_ascii", "some_none", "odd", "unhashable"]


def _ascii_titles(rng, n):
    """Titles of ASCII words between runs of any ASCII whitespace (str.split's), some leading or
    trailing, some with no words at all."""

    def space():
        return ASCII_SPACES[rng.integers(len(ASCII_SPACES))]

    out = []
    for _ in range(n):
        words = [ASCII_WORDS[i] for i in rng.integers(0, len(ASCII_WORDS), rng.integers(0, 7))]
        text = "".join(w + space() for w in words)[:-1] if words else ""
        out.append((space() if rng.random() < 0.2 else "") + text + (space() if rng.random() < 0.2 else ""))
    return out


def _other_object(text):
    """An equal string that is not the same object (Feast hands over one object per row)."""
    return "".join(list(text)) if len(text) > 1 else text


@pytest.mark.parametrize("query", QUERIES, ids=repr)
@pytest.mark.parametrize("titles", TITLES)
@pytest.mark.parametrize("form", ["one_object", "equal_objects", "varies", "array"])
def test_request_query_title_match_bit_identical(query, titles, form):
    """The scorer's paths equal the per-row reference: one query repeated over ASCII titles (words
    found as " w " in the titles spaced out by one join, translate and split), over other titles
    (words found in the memo's word sets), a query of more than WORD_PASSES words (intersections),
    and the per-row loop for titles that are not all strings and for queries that vary per row."""
    rng = np.random.default_rng(TITLES.index(titles))
    n = 200
    title = _ascii_titles(rng, n)
    title[:3] = ["", "  \t ", "\x1f"]  # no words
    if titles == "ascii_newline":
        title[20] = "red\ndress"  # the separator of the spaced titles: not that path
    elif titles == "non_ascii":
        title = _texts(rng, n, 9, odd_share=0.0)
        title[:4] = ["", "  \t ", "日本 é \u00a0 red", "red\u00a0dress\u3000zara\x85m\u2029a"]  # Unicode whitespace
    elif titles == "some_none":
        title[5] = title[77] = None
    elif titles == "odd":
        title = [ODD[i % len(ODD)] if i % 7 == 0 else t for i, t in enumerate(title)]
    elif titles == "unhashable":
        title[9] = ["red", "dress"]
    if form == "varies":
        queries = [query if i % 3 else QUERIES[i % len(QUERIES)] for i in range(n)]
    elif form == "equal_objects" and isinstance(query, str):
        queries = [_other_object(query) for _ in range(n)]
    else:
        queries = [query] * n
    if form == "array":
        queries, title = np.array(queries + [None], dtype=object)[:-1], np.array(title + [None], dtype=object)[:-1]
    want = _ref_query_title_match(pd.Series(list(queries), dtype=object), pd.Series(list(title), dtype=object))
    got = transforms.query_listing_features({"query_text": queries, "title": title})
    assert isinstance(got, dict) and _bits(got["query_title_match"]) == _bits(want)
    frame = pd.DataFrame(
        {"query_text": pd.Series(list(queries), dtype=object), "title": pd.Series(list(title), dtype=object)}
    )
    assert _bits(transforms.query_listing_features(frame)["query_title_match"].to_numpy()) == _bits(want)


def test_request_query_title_match_with_a_small_word_memo(monkeypatch):
    """The word-set memo forgets everything when full; the features do not change."""
    monkeypatch.setattr(transforms, "WORDS_MEMO_SIZE", 5)
    monkeypatch.setattr(transforms, "_WORDS", transforms._WordSets())
    rng = np.random.default_rng(7)
    for query in ["red dress", "red silk dress zara boots"]:
        title = _texts(rng, 200, 6, odd_share=0.0)
        got = transforms.query_listing_features({"query_text": [query] * 200, "title": title})["query_title_match"]
        assert _bits(got) == _bits(
            _ref_query_title_match(pd.Series([query] * 200, dtype=object), pd.Series(title, dtype=object))
        )
        assert len(transforms._WORDS) <= 5


@pytest.mark.parametrize("user", ["m", "M", "one size", "", " ", "é", None, np.nan, pd.NA, 3, "varies"], ids=repr)
@pytest.mark.parametrize("sizes", ["str", "odd", "unhashable"])
def test_request_size_match_bit_identical(user, sizes):
    """The scorer's path (one user size: a table of the distinct sizes; else of (size, user size)
    pairs) and its fallback (values a dict cannot hold: the joint factorisation) equal the per-row
    reference."""
    rng = np.random.default_rng(3)
    n = 200
    size = _texts(rng, n, 2, odd_share=0.3 if sizes == "odd" else 0.0)
    size[:4] = ["one size", "M", "m", "é"]
    if sizes == "unhashable":
        size[11] = ["M"]
    users = _texts(rng, n, 1, odd_share=0.3) if isinstance(user, str) and user == "varies" else [user] * n
    want = _ref_size_match(pd.Series(size, dtype=object), pd.Series(users, dtype=object))
    assert _bits(transforms._size_match(size, users).astype(np.float32)) == _bits(want)
    assert _bits(transforms._size_match(np.array(size + [None], dtype=object)[:-1], users).astype(np.float32)) == _bits(
        want
    )
    cols = {
        "price": np.ones(n),
        "user_median_click_price_30d": np.ones(n),
        "category_median_price": np.ones(n),
        "user_price_index_30d": np.ones(n),
        "size": size,
        "user_size": users,
    }
    assert _bits(transforms.user_listing_features(cols)["size_match"]) == _bits(want)


def _ref_price_features(price, median, category_median, user_index):
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(median > 0, price / median, np.nan)
        index = np.where(category_median > 0, price / category_median, np.nan)
        fit = np.where((user_index > 0) & (index > 0), np.abs(np.log(index / user_index)), np.nan)
    return ratio.astype(np.float32), index.astype(np.float32), fit.astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1])
def test_request_price_features_bit_identical(seed):
    """NaN (either sign), zero (either sign), negative, infinite, tiny and huge prices and medians:
    the same bits as the formulas written out one step at a time."""
    rng = np.random.default_rng(seed)
    n = 400
    odd = np.array(
        [np.nan, -np.nan, np.copysign(np.nan, -1.0), 0.0, -0.0, -3.0, np.inf, -np.inf, 5e-324, 1e-300, 1e300, 1.0]
    )

    def column():
        x = rng.uniform(0.01, 300, n)
        pick = rng.random(n) < 0.4
        x[pick] = rng.choice(odd, int(pick.sum()))
        return x

    price, median, category_median, user_index = column(), column(), column(), column()
    cols = {
        "price": price,
        "user_median_click_price_30d": median,
        "category_median_price": category_median,
        "user_price_index_30d": user_index,
        "size": ["M"] * n,
        "user_size": ["M"] * n,
    }
    with np.errstate(over="ignore", under="ignore"):
        got = transforms.user_listing_features(cols)
        want = _ref_price_features(price, median, category_median, user_index)
    for name, w in zip(["price_vs_user_median", "price_index", "price_fit"], want, strict=False):
        assert _bits(got[name]) == _bits(w), name


def test_row_hashes_equal_pandas_hashes():
    rng = np.random.default_rng(4)
    n = 2000
    frame = pd.DataFrame(
        {
            "request_id": pd.Series([f"r{i // 7}" for i in range(n)], dtype=object),
            "event_timestamp": pd.to_datetime(rng.integers(1.79e15, 1.80e15, n), unit="us", utc=True),
            "user_id": pd.Series(rng.choice(["u1", "u2", None, "ü"], n), dtype=object),
            "position": rng.integers(1, 30, n).astype("int32"),
            "f": np.where(rng.random(n) < 0.2, np.nan, rng.random(n)).astype(np.float32),
        }
    )
    table = pa.Table.from_pandas(frame, preserve_index=False)
    want = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    assert (ds._row_hashes(table) == want).all()
    assert (ds._row_hashes(pa.concat_tables([table.slice(0, 500), table.slice(500)])) == want).all()


def _reference_build(settings, options):
    """The original algorithm: labelled impressions in pandas, chunks on request boundaries,
    Feast ``to_df`` per chunk, rows put back in order with ``_row``, ``feature_matrix``."""
    store = feature_store(settings)
    spec = service_spec(store, options.service)
    service = store.get_feature_service(options.service)
    rows = ds.labelled_impressions(settings, options)
    first = rows.groupby("request_id", sort=False).event_timestamp.transform("min")
    rows = rows.assign(_req_ts=first).sort_values(["_req_ts", "request_id", "position"], kind="stable")
    rows = rows.drop(columns="_req_ts").reset_index(drop=True)
    frames = []
    for lo, hi in ds._chunk_bounds(rows.request_id.to_numpy(), options.chunk_rows):
        chunk = rows.iloc[lo:hi].reset_index(drop=True)
        ts = pd.to_datetime(chunk.event_timestamp, utc=True)
        entity = pd.DataFrame(
            {
                "user_id": chunk.user_id.astype(object),
                "item_id": chunk.item_id.astype(object),
                "seller_id": chunk.seller_id.astype(object).where(chunk.seller_id.notna(), ""),
                "category": chunk.category.astype(object).where(chunk.category.notna(), ""),
                "event_timestamp": ts,
                "request_ts": ts.dt.as_unit("us").astype("int64") // 10**6,
                "query": chunk["query"].astype(object).values,
                "query_text": chunk["query"].astype(object).values,
                "_row": np.arange(len(chunk)),
            }
        )
        with in_feature_repo(settings.feature_repo):
            feats = store.get_historical_features(entity_df=entity, features=service).to_df()
        feats = feats.sort_values("_row").reset_index(drop=True)
        from ranker.features.matrix import feature_matrix

        matrix = feature_matrix(feats, spec)
        out = pd.DataFrame(
            {
                "request_id": chunk.request_id.astype(str).values,
                "event_timestamp": ts.values,
                "user_id": chunk.user_id.astype(str).values,
                "item_id": chunk.item_id.astype(str).values,
                "position": chunk.position.astype("int32").values,
                "query": chunk["query"].astype(str).values,
                "label": chunk.label.astype("int32").values,
            }
        )
        out["event_timestamp"] = pd.to_datetime(out.event_timestamp, utc=True)
        for j, name in enumerate(spec.features):
            out[name] = matrix[:, j]
        frames.append(out)
    return pd.concat(frames, ignore_index=True)


def test_fast_build_equals_the_original_algorithm(world):
    options = ds.DatasetOptions(surface="search", chunk_rows=9_000)
    infer_string = pd.get_option("future.infer_string")
    manifest = ds.build_dataset(world, options)
    assert pd.get_option("future.infer_string") == infer_string, "a pandas option leaked out of the build"
    got, m = ds.load_dataset(world, "search")
    want = _reference_build(world, options)
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    hashes = pd.util.hash_pandas_object(got, index=False).to_numpy()
    assert manifest["fingerprint"] == m["fingerprint"] == hashlib.sha256(hashes.tobytes()).hexdigest()
    assert manifest["rows"] == len(want) and manifest["groups"] == want.request_id.nunique()
    assert manifest["positives"] == int((want.label > 0).sum())
    assert manifest["label_counts"] == {str(k): int(v) for k, v in want.label.value_counts().sort_index().items()}
    assert manifest["window"]["start"] == want.event_timestamp.min().isoformat()
    # request time is unix seconds: a listing is never older than the request that showed it
    age = got.listing_age_hours.dropna()
    assert len(age) > 0 and (age >= 0).all() and (age < 24 * 400).all()


def _reference_rows(settings, options):
    rows = ds.labelled_impressions(settings, options)
    first = rows.groupby("request_id", sort=False).event_timestamp.transform("min")
    rows = rows.assign(_req_ts=first).sort_values(["_req_ts", "request_id", "position"], kind="stable")
    return rows.drop(columns="_req_ts").reset_index(drop=True)


@pytest.mark.parametrize("surface", ["search", "recs"])
def test_labelled_table_equals_labelled_impressions(tmp_path, surface):
    """Same rows and order as the grouped query, on awkward data: exact duplicate impressions (one
    row, as GROUP BY ALL gives), a listing that is missing, null queries, engagement on the window
    edges and from the other surface, requests whose rows are not all at one time."""
    from ranker.data import schema
    from tests.conftest import make_home

    home = make_home(tmp_path / "labels")
    t0 = pd.Timestamp("2026-10-01T12:00:00", tz="UTC")
    listings = pd.DataFrame(
        {
            "item_id": ["i1", "i2", "i3", "i4"],
            "seller_id": ["s1", "s1", "s2", "s3"],
            "title": "red dress",
            "category": ["dresses", "dresses", "shoes", "bags"],
            "brand": "zara",
            "size": "M",
            "condition": "good",
            "colour": "red",
            "price": 10.0,
            "original_price": 20.0,
            "created_at": t0 - pd.Timedelta(days=1),
            "sold_at": pd.NaT,
        }
    )
    rows = []

    def ev(kind, seconds, request, item, position, surface="search", query="red dress", user="u1"):
        rows.append(
            dict(
                event_id=f"e{len(rows)}",
                event_type=kind,
                timestamp=t0 + pd.Timedelta(seconds=seconds),
                user_id=user,
                item_id=item,
                surface=surface,
                request_id=request,
                position=position,
                query=query,
            )
        )

    for r, (start, surf) in enumerate([(50, "search"), (0, "search"), (0, "recs"), (20, "search"), (20, "recs")]):
        q = None if surf == "recs" else "red dress"
        for p, item in enumerate(["i3", "i1", "i9", "i2"], start=1):  # i9 has no listing
            ev("impression", start + (p % 2), f"r{r}", item, p, surf, q, user=f"u{r % 2}")
    ev("impression", 51, "r0", "i3", 1, user="u0")  # exact duplicate of r0's first impression (another event id)
    ev("impression", 50, "r0", "i3", 1)  # same slot, another user and time: a row of its own
    ev("impression", 1, "r1", "i4", 5)
    ev("impression", 1, "r1", "i4", 5)  # duplicate again
    ev("click", 3600 + 50, "r0", "i3", 1)  # exactly on the 1 h edge: counts
    ev("purchase", 3602, "r1", "i1", 2)  # past the edge of r1's i1 (shown at t=0): ignored
    ev("save", 30, "r1", "i1", 2)
    ev("add_to_bag", 30, "r2", "i3", 1, "recs", None)
    ev("click", 25, "r2", "i3", 1, "search")  # other surface, same request: counts (as before)
    ev("click", 1, "r3", "i3", 1)  # at the impression time of i3 in r3 (t=21): not after it
    ev("purchase", 40, "r4", "i2", 4, "recs", None)
    schema.write_table(home.raw_dir, schema.LISTINGS, listings)
    schema.write_table(home.raw_dir, schema.EVENTS, pd.DataFrame(rows))
    options = ds.DatasetOptions(surface=surface, attribution_hours=1.0)
    want = _reference_rows(home, options)
    got = ds._labelled_table(home, options).to_pandas()
    assert (
        len(got) < sum(1 for r in rows if r["event_type"] == "impression" and r["surface"] == surface)
        or surface == "recs"
    )
    pd.testing.assert_frame_equal(got, want.astype(got.dtypes.to_dict()), check_exact=True)
    assert got.label.max() > 0

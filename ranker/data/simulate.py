"""A simulated second-hand fashion marketplace with a hidden true utility.

The simulator produces the four raw tables of :mod:`ranker.data.schema` (events, listings, users,
sellers) plus, separately, the utility the simulated users actually felt for every impression
(``ground_truth/utility.parquet``). Rankers are trained on the raw tables only and scored against
that oracle, so the world is built to be learnable but not trivially so:

* every user has a hidden taste: category preferences (Dirichlet), a small brand affinity, a budget
  level (price fit = -|log(price / budget)|, the budget scaled by the category's typical price), a
  clothing and a shoe size (only the clothing size, and not always, is in the profile);
* every listing has a latent quality nobody observes, plus observable attributes (category, brand,
  colour, size, condition, price, age, title);
* the true utility of (user, listing, request) is a weighted sum of taste, brand affinity, price
  fit, size match, condition, quality, freshness and, on search, query-title token match, plus an
  idiosyncratic noise term. Features a platform can compute (user x category engagement, price vs
  the user's median clicked price, item CTR, listing age, query-title overlap, condition) recover
  a good part of it, never all of it;
* lists are ordered by a *legacy* policy that never sees the utility (past clicks + recency +
  a large noise), and clicks follow P(click) = examine(position) x sigmoid(utility - threshold)
  with examine(p) = p^-0.3, so logged clicks carry a real position bias;
* listings are unique: a purchase sets ``sold_at`` and the listing is never shown again;
* with ``within_day=True`` (opt-in, off by default: every default file stays byte-identical) the
  world also moves within the day, in ways a daily batch snapshot cannot see: a user's requests come
  in *sessions* (a few requests within ``SESSION_SPAN_MINUTES``), each with a session intent (a
  category, sometimes a brand) that raises the utility of matching listings for that session only
  (``W_SESSION_CATEGORY``, ``W_SESSION_BRAND``; the session's searches name the intent's category
  more often, and its clicks reveal it); and every listing has a hidden *hype* that adds to its
  utility while it is new and decays over hours (``W_HYPE x hype x exp(-age_h / HYPE_HOURS)``):
  it shows only in the listing's early engagement, and hot listings sell within hours.

Time advances in hourly steps; inside a step everything is vectorised with numpy. Randomness
comes only from ``numpy.random.Generator(PCG64)`` streams derived from the seed, nothing reads the
clock, so the same :class:`SimConfig` always produces byte-identical parquet files.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ranker.data import schema
from ranker.data.schema import Column, TableSchema
from ranker.errors import RankerError

# --- Catalogue ---------------------------------------------------------------------------------
CATEGORIES = (
    "tops",
    "dresses",
    "jeans",
    "trousers",
    "skirts",
    "jackets",
    "coats",
    "knitwear",
    "shoes",
    "sneakers",
    "bags",
    "accessories",
)
CATEGORY_SHARE = (0.16, 0.11, 0.09, 0.07, 0.06, 0.08, 0.05, 0.08, 0.08, 0.09, 0.07, 0.06)
# Typical second-hand asking price (EUR) of a mid-tier item in very good condition.
CATEGORY_BASE_PRICE = (12.0, 20.0, 20.0, 18.0, 15.0, 35.0, 50.0, 22.0, 30.0, 35.0, 30.0, 10.0)
CLOTHES = frozenset(range(8))  # tops .. knitwear: sized XS-XL
FOOTWEAR = frozenset((8, 9))  # shoes, sneakers: sized 36-45
# bags, accessories: "one size"

# Which categories a kind of brand sells (a sneaker brand does not make dresses).
_KIND_CATEGORIES = {
    "fashion": tuple(CATEGORIES),
    "sport": ("tops", "trousers", "jackets", "knitwear", "sneakers", "bags", "accessories"),
    "denim": ("jeans", "jackets", "tops", "skirts"),
    "outdoor": ("jackets", "coats", "knitwear", "tops", "trousers", "bags"),
    "footwear": ("shoes", "sneakers"),
    "luxury": ("bags", "accessories", "shoes", "sneakers", "coats", "dresses", "knitwear"),
    "leather": ("bags", "accessories"),
}
# (name, price tier 0=budget .. 4=luxury, kind). Names are lower-case words so titles tokenise.
BRANDS = (
    ("hm", 0, "fashion"),
    ("primark", 0, "fashion"),
    ("asos", 0, "fashion"),
    ("only", 0, "fashion"),
    ("vero moda", 0, "fashion"),
    ("zara", 1, "fashion"),
    ("mango", 1, "fashion"),
    ("uniqlo", 1, "fashion"),
    ("esprit", 1, "fashion"),
    ("gap", 1, "fashion"),
    ("bershka", 1, "fashion"),
    ("stradivarius", 1, "fashion"),
    ("cos", 2, "fashion"),
    ("arket", 2, "fashion"),
    ("massimo dutti", 2, "fashion"),
    ("tommy hilfiger", 2, "fashion"),
    ("ralph lauren", 2, "fashion"),
    ("calvin klein", 2, "fashion"),
    ("lacoste", 2, "fashion"),
    ("hugo boss", 2, "fashion"),
    ("ganni", 3, "fashion"),
    ("acne studios", 3, "fashion"),
    ("sandro", 3, "fashion"),
    ("maje", 3, "fashion"),
    ("nike", 1, "sport"),
    ("adidas", 1, "sport"),
    ("puma", 1, "sport"),
    ("vans", 1, "sport"),
    ("converse", 1, "sport"),
    ("asics", 1, "sport"),
    ("new balance", 2, "sport"),
    ("levis", 1, "denim"),
    ("wrangler", 1, "denim"),
    ("lee", 1, "denim"),
    ("the north face", 2, "outdoor"),
    ("patagonia", 2, "outdoor"),
    ("stone island", 3, "outdoor"),
    ("dr martens", 2, "footwear"),
    ("birkenstock", 2, "footwear"),
    ("michael kors", 2, "leather"),
    ("coach", 2, "leather"),
    ("longchamp", 2, "leather"),
    ("mulberry", 3, "leather"),
    ("gucci", 4, "luxury"),
    ("prada", 4, "luxury"),
    ("louis vuitton", 4, "luxury"),
)
_TIER_POPULARITY = (3.0, 2.5, 1.2, 0.5, 0.25)
_BLOCKBUSTERS = frozenset(("zara", "hm", "nike", "adidas", "levis"))
TIER_PRICE_FACTOR = (0.55, 1.0, 1.9, 3.5, 10.0)

COLOURS = ("black", "white", "grey", "blue", "navy", "red", "green", "beige", "brown", "pink")
COLOUR_SHARE = (0.22, 0.12, 0.10, 0.12, 0.08, 0.07, 0.07, 0.09, 0.07, 0.06)
CLOTHING_SIZES = ("XS", "S", "M", "L", "XL")
CLOTHING_SIZE_SHARE = (0.10, 0.27, 0.33, 0.20, 0.10)
SHOE_SIZES = tuple(range(36, 46))
# Condition codes follow schema.CONDITION_SCORE - 1 (fair=0 .. new_with_tags=3).
CONDITIONS = ("fair", "good", "very_good", "new_with_tags")
CONDITION_SHARE = (0.07, 0.30, 0.45, 0.18)
CONDITION_PRICE_FACTOR = (0.55, 0.80, 1.00, 1.35)

# Share of activity per hour of the day (UTC): quiet nights, busy evenings.
HOURLY_ACTIVITY = (
    0.30,
    0.20,
    0.15,
    0.10,
    0.10,
    0.15,
    0.30,
    0.60,
    0.80,
    0.90,
    0.90,
    1.00,
    1.10,
    1.00,
    0.90,
    0.90,
    1.00,
    1.10,
    1.30,
    1.60,
    1.80,
    1.70,
    1.30,
    0.70,
)

# --- Hidden utility and behaviour ----------------------------------------------------------------
# Weights of the true utility. Everything except QUALITY and NOISE (and partly the hidden shoe
# size) has an observable proxy, so a learned ranker can recover a good part of the signal.
W_BRAND = 0.35
W_PRICE_FIT = 0.8
W_CONDITION = 0.3
QUALITY_SD = 0.6
W_FRESHNESS = 0.5
FRESHNESS_DAYS = 3.0
W_QUERY_MATCH = 2.0
NOISE_SD = 0.6
CLICK_THRESHOLD = 2.4
EXAMINE_EXPONENT = 0.3
# Within-day dynamics (SimConfig.within_day): session intent and the hype of new listings.
SESSION_SPAN_MINUTES = 25  # a session's requests fall within this many minutes of its start
SESSION_CONTINUE = 0.6  # P(a user's next request of the day continues the current session)
SESSION_INTENT_FROM_TASTE = 0.5  # share of sessions whose intent category follows the user's taste
SESSION_INTENT_BRAND = 0.5  # share of sessions that also have a brand in mind
SESSION_QUERY_INTENT = 0.6  # share of a session's searches that name the intent's category
W_SESSION_CATEGORY = 1.2
W_SESSION_BRAND = 0.8
HYPE_SD = 1.0
W_HYPE = 1.0
HYPE_HOURS = 12.0
# Legacy logging policy: what the production ranker did before any learned model.
LEGACY_RECENCY = 0.8
LEGACY_TEXT_MATCH = 0.5
LEGACY_NOISE_SD = 1.6

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
NEVER = np.iinfo(np.int64).max  # sold_at of a listing that has not sold

GROUND_TRUTH = TableSchema(
    name="ground_truth",
    file="utility.parquet",
    key=("request_id", "item_id"),
    columns=(
        Column("request_id", "string[pyarrow]"),
        Column("item_id", "string[pyarrow]"),
        Column("user_id", "string[pyarrow]"),
        Column("true_utility", "float64", doc="hidden utility of the impression; evaluation only"),
        Column(
            "expected_utility",
            "float64",
            doc="true_utility without the per-impression noise: the ceiling any ranker can reach; evaluation only",
        ),
    ),
)

ID_PREFIX = {"user": "u", "item": "i", "seller": "s", "request": "r", "event": "e"}
_EVENT_CODES = {name: code for code, name in enumerate(schema.EVENT_TYPES)}


class SimConfigError(RankerError, ValueError):
    """A simulation option is out of range; the message names the option and the valid range."""


@dataclass(frozen=True)
class SimConfig:
    """Size and behaviour of the simulated marketplace.

    ``users``, ``items`` (initial stock) and ``new_items_per_day`` are multiplied by ``scale``;
    requests per user per day are not, so impressions grow linearly with ``scale``.
    """

    seed: int = 7
    users: int = 2_200
    items: int = 6_500
    new_items_per_day: int = 380
    days: int = 21
    start: date = date(2026, 10, 1)
    scale: float = 1.0
    requests_per_user_day: float = 0.6
    search_share: float = 0.5
    slate_size: int = 20
    within_day: bool = False  # session intent and listing hype (see the module docstring); off: as before

    def __post_init__(self) -> None:
        checks = (
            (self.seed >= 0, f"seed must be >= 0, got {self.seed}"),
            (self.users >= 1, f"users must be >= 1, got {self.users}"),
            (self.items >= 1, f"items must be >= 1, got {self.items}"),
            (self.new_items_per_day >= 0, f"new_items_per_day must be >= 0, got {self.new_items_per_day}"),
            (self.days >= 1, f"days must be >= 1, got {self.days}"),
            (isinstance(self.start, date), f"start must be a date, got {self.start!r}"),
            (0 < self.scale <= 1000, f"scale must be in (0, 1000], got {self.scale}"),
            (
                0 < self.requests_per_user_day <= 20,
                f"requests_per_user_day must be in (0, 20], got {self.requests_per_user_day}",
            ),
            (0 <= self.search_share <= 1, f"search_share must be in [0, 1], got {self.search_share}"),
            (1 <= self.slate_size <= 200, f"slate_size must be in [1, 200], got {self.slate_size}"),
        )
        for ok, message in checks:
            if not ok:
                raise SimConfigError(message)
        if self.n_users < 1 or self.n_items < 1:
            raise SimConfigError(
                f"scale {self.scale} leaves {self.n_users} user(s) and {self.n_items} listing(s); "
                "raise --scale, --users or --items"
            )

    @property
    def n_users(self) -> int:
        return int(round(self.users * self.scale))

    @property
    def n_items(self) -> int:
        """Initial stock after scaling."""
        return int(round(self.items * self.scale))

    @property
    def n_new_items_per_day(self) -> int:
        return int(round(self.new_items_per_day * self.scale))

    @property
    def n_sellers(self) -> int:
        # Roughly one seller per 2.5 buyers: most sellers list a few items, a few list many.
        return max(1, int(round(self.n_users * 0.4)))

    def to_dict(self) -> dict:
        """JSON-ready options (the date as ISO text)."""
        out = asdict(self)
        out["start"] = self.start.isoformat()
        if not self.within_day:  # absent when off: manifests of worlds without the dynamics are unchanged
            del out["within_day"]
        return out


def simulate(config: SimConfig, *, raw_dir: Path, ground_truth_dir: Path) -> dict:
    """Simulate the marketplace and write the raw tables, the ground truth and a manifest.

    Writes ``events``, ``listings``, ``users`` and ``sellers`` to ``raw_dir`` (validated against
    :mod:`ranker.data.schema`), ``utility.parquet`` to ``ground_truth_dir`` and
    ``raw_dir/manifest.json`` (options, counts and sha256 of every file; deterministic, so no
    wall-clock time). Returns a summary dict with the counts and the seconds taken.
    """
    return simulate_history(config, raw_dir=raw_dir, ground_truth_dir=ground_truth_dir)[0]


def simulate_history(
    config: SimConfig, *, raw_dir: Path, ground_truth_dir: Path, extra_days: int = 0
) -> tuple[dict, "_World"]:
    """:func:`simulate`, also returning the world as it stands at the end of the log, for running it
    forward (:mod:`ranker.data.closed_loop`). ``extra_days`` > 0 draws the listings of that many more
    days into the catalogue (they go live after the log ends; the listings table holds only those
    created before its end), so the world can go on; 0 gives exactly :func:`simulate`'s files."""
    started = time.perf_counter()
    raw_dir, ground_truth_dir = Path(raw_dir), Path(ground_truth_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    ground_truth_dir.mkdir(parents=True, exist_ok=True)

    root = np.random.SeedSequence(config.seed)
    catalogue_seed, users_seed, traffic_seed = root.spawn(3)
    start_ms = _epoch_ms(config.start)
    world = _World(config=config, start_ms=start_ms, catalogue_days=config.days + extra_days)
    world.build_users(rng=_rng(users_seed))
    world.build_listings(rng=_rng(catalogue_seed))

    events_path = raw_dir / schema.EVENTS.file
    utility_path = ground_truth_dir / GROUND_TRUTH.file
    counts = dict.fromkeys(schema.EVENT_TYPES, 0)
    requests_shown = 0
    with (
        _ChunkWriter(path=events_path, table=schema.EVENTS) as events_out,
        _ChunkWriter(path=utility_path, table=GROUND_TRUTH) as truth_out,
    ):
        carry = _EventBatch.empty()
        for day, day_seed in enumerate(traffic_seed.spawn(config.days)):
            day_rows, day_events = world.simulate_day(day=day, rng=_rng(day_seed))
            requests_shown += len(np.unique(day_rows["request"]))
            truth_out.write(world.ground_truth_frame(day_rows))
            # Engagement can fall after midnight: keep each chunk chronological by carrying
            # events past the day's end into the next chunk (the last chunk takes everything).
            batch = _EventBatch.concat(carry, day_events).sorted()
            is_last = day == config.days - 1
            cutoff = NEVER if is_last else start_ms + (day + 1) * DAY_MS
            now, carry = batch.split_before(cutoff)
            for code, n in zip(*np.unique(now.fields["type"], return_counts=True), strict=False):
                counts[schema.EVENT_TYPES[code]] += int(n)
            events_out.write(world.events_frame(now, first_event=events_out.rows + 1))

    end_ms = start_ms + config.days * DAY_MS
    listings, users, sellers = world.listings_frame(before_ms=end_ms), world.users_frame(), world.sellers_frame()
    paths = {
        "events": events_path,
        "listings": schema.write_table(raw_dir, schema.LISTINGS, listings),
        "users": schema.write_table(raw_dir, schema.USERS, users),
        "sellers": schema.write_table(raw_dir, schema.SELLERS, sellers),
        "ground_truth": utility_path,
    }
    impressions = counts["impression"]
    summary = {
        "seed": config.seed,
        "config": config.to_dict(),
        "effective": {
            "users": config.n_users,
            "initial_items": config.n_items,
            "new_items_per_day": config.n_new_items_per_day,
            "sellers": config.n_sellers,
            "start": config.start.isoformat(),
            "end": _iso(start_ms + config.days * DAY_MS),
        },
        "rows": {
            "events": sum(counts.values()),
            "listings": len(listings),
            "users": len(users),
            "sellers": len(sellers),
            "ground_truth": impressions,
        },
        "requests": requests_shown,
        "events": counts,
        "impressions": impressions,
        "clicks": counts["click"],
        "purchases": counts["purchase"],
        "ctr": round(counts["click"] / impressions, 6) if impressions else 0.0,
        "listings_sold": int(listings["sold_at"].notna().sum()),
        "files": {name: {"path": _relative(p, raw_dir.parent), "sha256": _sha256(p)} for name, p in paths.items()},
    }
    manifest_path = raw_dir / "manifest.json"
    tmp = manifest_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    tmp.replace(manifest_path)
    return {
        **summary,
        "raw_dir": str(raw_dir),
        "ground_truth": str(utility_path),
        "manifest": str(manifest_path),
        "seconds": round(time.perf_counter() - started, 2),
    }, world


# --- The world ---------------------------------------------------------------------------------
class _World:
    """Hidden state of users and listings plus the per-step traffic simulation."""

    def __init__(self, *, config: SimConfig, start_ms: int, catalogue_days: int | None = None) -> None:
        self.config = config
        self.catalogue_days = config.days if catalogue_days is None else catalogue_days
        self.start_ms = start_ms
        n_categories, n_brands = len(CATEGORIES), len(BRANDS)
        # P(brand | category): brand popularity restricted to the categories the brand sells.
        popularity = np.array(
            [_TIER_POPULARITY[tier] * (2.0 if name in _BLOCKBUSTERS else 1.0) for name, tier, _ in BRANDS]
        )
        sells = np.zeros((n_categories, n_brands))
        for b, (_, _, kind) in enumerate(BRANDS):
            for category in _KIND_CATEGORIES[kind]:
                sells[CATEGORIES.index(category), b] = 1.0
        brand_given_category = sells * popularity
        self.brand_given_category = brand_given_category / brand_given_category.sum(axis=1, keepdims=True)
        self.brand_tier = np.array([tier for _, tier, _ in BRANDS], dtype=np.int8)
        self.base_price = np.array(CATEGORY_BASE_PRICE)
        self.is_clothes = np.array([c in CLOTHES for c in range(n_categories)])
        self.is_footwear = np.array([c in FOOTWEAR for c in range(n_categories)])
        # Every possible query string, indexed by a query code (see _query_code).
        self.query_vocabulary = pa.array(
            [
                " ".join(
                    part
                    for part in (
                        COLOURS[colour] if colour >= 0 else "",
                        BRANDS[brand][0] if brand >= 0 else "",
                        CATEGORIES[cat],
                    )
                    if part
                )
                for brand in range(-1, n_brands)
                for colour in range(-1, len(COLOURS))
                for cat in range(n_categories)
            ],
            type=pa.large_string(),
        )
        days = self.catalogue_days
        bound_requests = config.n_users * days * 60  # Poisson(<=20/day) never gets near this
        self.width = {
            "user": max(6, len(str(config.n_users))),
            "item": max(7, len(str(config.n_items + config.n_new_items_per_day * days))),
            "seller": max(5, len(str(config.n_sellers))),
            "request": max(9, len(str(bound_requests))),
            "event": max(10, len(str(bound_requests * config.slate_size * 5))),
        }
        self.request_base = 0  # requests are numbered in time order across days

    # Users -------------------------------------------------------------------------------------
    def build_users(self, *, rng: np.random.Generator) -> None:
        """Draw each user's hidden taste, budget, sizes, activity and sign-up time."""
        cfg, n = self.config, self.config.n_users
        n_categories = len(CATEGORIES)
        # Concentration 3: most users care about a handful of categories.
        self.taste = rng.dirichlet(3.0 * np.array(CATEGORY_SHARE), size=n)
        self.taste_cum = np.cumsum(self.taste, axis=1)
        self.taste_term = np.clip(np.log(self.taste * n_categories + 1e-12), -2.5, 1.5)
        self.brand_affinity = rng.normal(0.0, 1.0, size=(n, len(BRANDS))).astype(np.float32)
        self.budget = rng.lognormal(0.0, 0.45, size=n)
        self.clothing_size = rng.choice(len(CLOTHING_SIZES), size=n, p=CLOTHING_SIZE_SHARE).astype(np.int16)
        shoe = 36 + 2 * self.clothing_size + np.rint(rng.normal(0.0, 1.0, size=n))
        self.shoe_size = np.clip(shoe, 36, 45).astype(np.int16)
        # A quarter of users never fill in their size: the platform must infer it from behaviour.
        self.profile_has_size = rng.random(n) < 0.75
        # Heavy-tailed activity (mean = requests_per_user_day), capped at 20 requests a day.
        sigma = 0.8
        self.activity = np.minimum(cfg.requests_per_user_day * rng.lognormal(-(sigma**2) / 2, sigma, size=n), 20.0)
        # Each user has their own habit around the configured search share (Beta with that mean).
        share = cfg.search_share
        self.user_search_share = (
            rng.beta(4.0 * share, 4.0 * (1.0 - share), size=n) if 0.0 < share < 1.0 else np.full(n, share)
        )
        # Most users signed up long before the window; 10% join during it (cold-start users).
        before = self.start_ms - (rng.random(n) * 730 * DAY_MS).astype(np.int64) - DAY_MS
        during = self.start_ms + (rng.random(n) * cfg.days * DAY_MS).astype(np.int64)
        self.signup_ms = np.where(rng.random(n) < 0.9, before, during)

    # Listings ----------------------------------------------------------------------------------
    def build_listings(self, *, rng: np.random.Generator) -> None:
        """Draw every listing of the window up front (attributes never depend on traffic)."""
        cfg = self.config
        n_initial, n_daily = cfg.n_items, cfg.n_new_items_per_day
        days = self.catalogue_days
        n = n_initial + n_daily * days
        # Initial stock: listed during the previous weeks, more of it recent (older stock sold).
        # Exponential ages (mean ~20 days) truncated at 120 days, by inverse CDF.
        u = rng.random(n_initial)
        initial_age = -20.0 * np.log1p(-u * (1.0 - np.exp(-120.0 / 20.0))) * DAY_MS
        initial = self.start_ms - 60_000 - initial_age.astype(np.int64)
        day_of = np.repeat(np.arange(days, dtype=np.int64), n_daily)
        new = self.start_ms + day_of * DAY_MS + _time_of_day(rng, len(day_of))
        created = np.concatenate([initial, new])
        # Ids follow listing time, like an auto-increment key would.
        self.created_ms = np.sort(created, kind="stable")

        n_categories = len(CATEGORIES)
        self.category = rng.choice(n_categories, size=n, p=CATEGORY_SHARE).astype(np.int16)
        self.brand = np.zeros(n, dtype=np.int16)
        for c in range(n_categories):  # one vectorised draw per category, not per listing
            idx = np.flatnonzero(self.category == c)
            self.brand[idx] = rng.choice(len(BRANDS), size=len(idx), p=self.brand_given_category[c])
        self.colour = rng.choice(len(COLOURS), size=n, p=COLOUR_SHARE).astype(np.int16)
        clothes = self.is_clothes[self.category]
        footwear = self.is_footwear[self.category]
        clothing_size = rng.choice(len(CLOTHING_SIZES), size=n, p=CLOTHING_SIZE_SHARE)
        shoe_size = np.clip(np.rint(rng.normal(40.0, 2.3, size=n)), 36, 45)
        # Size code: 0..4 clothing, 36..45 shoes, -1 one size.
        self.size = np.where(clothes, clothing_size, np.where(footwear, shoe_size, -1)).astype(np.int16)
        self.condition = rng.choice(len(CONDITIONS), size=n, p=CONDITION_SHARE).astype(np.int16)
        tier_factor = np.array(TIER_PRICE_FACTOR)[self.brand_tier[self.brand]]
        reference = self.base_price[self.category] * tier_factor
        price = reference * np.array(CONDITION_PRICE_FACTOR)[self.condition] * rng.lognormal(0.0, 0.35, size=n)
        self.price = np.maximum(np.rint(price), 2.0)
        retail = reference * 2.6 * rng.lognormal(0.0, 0.2, size=n)
        self.original_price = np.maximum(np.rint(retail), np.ceil(self.price * 1.15) + 1.0)
        self.quality = rng.normal(0.0, QUALITY_SD, size=n)
        self.title_has_colour = rng.random(n) < 0.85
        title_has_size = (clothes | footwear) & (rng.random(n) < 0.5)
        # Sellers: a few power sellers, a long tail of occasional ones.
        weights = 1.0 / np.arange(1, cfg.n_sellers + 1) ** 0.8
        weights = rng.permutation(weights / weights.sum())
        self.seller = rng.choice(cfg.n_sellers, size=n, p=weights).astype(np.int32)
        first_listing = np.full(cfg.n_sellers, NEVER, dtype=np.int64)
        np.minimum.at(first_listing, self.seller, self.created_ms)
        never_listed = self.start_ms - DAY_MS - (rng.random(cfg.n_sellers) * 730 * DAY_MS).astype(np.int64)
        head_start = (rng.exponential(120.0, size=cfg.n_sellers) * DAY_MS).astype(np.int64)
        self.seller_joined_ms = np.where(first_listing == NEVER, never_listed, first_listing - head_start)

        size_text = np.array(
            [CLOTHING_SIZES[s].lower() if 0 <= s < 5 else (str(s) if s >= 36 else "") for s in range(46)] + [""],
            dtype=object,
        )  # index -1 (one size) hits the trailing ""
        colour_word = np.where(self.title_has_colour, np.array(COLOURS, dtype=object)[self.colour] + " ", "")
        size_word = np.where(title_has_size, " " + size_text[self.size], "")
        brand_words = np.array([name for name, _, _ in BRANDS], dtype=object)
        category_word = np.array(CATEGORIES, dtype=object)[self.category]
        self.title = colour_word + brand_words[self.brand] + " " + category_word + size_word
        # Retrieval pools (category x brand, category x colour, category): the catalogue sorted
        # once by each key; every step filters these orderings down to the active listings.
        cat = self.category.astype(np.int64)
        self.pool_orders = []
        for key, size in (
            (cat * len(BRANDS) + self.brand, n_categories * len(BRANDS)),
            (cat * len(COLOURS) + self.colour, n_categories * len(COLOURS)),
            (cat, n_categories),
        ):
            self.pool_orders.append((key, np.argsort(key, kind="stable"), size))
        self.sold_ms = np.full(n, NEVER, dtype=np.int64)
        self.past_clicks = np.zeros(n, dtype=np.int64)
        # Drawn last, so the draws above (and every file of a world without the dynamics) are unchanged.
        self.hype = rng.normal(0.0, HYPE_SD, size=n) if cfg.within_day else None

    # Traffic -----------------------------------------------------------------------------------
    def simulate_day(self, *, day: int, rng: np.random.Generator) -> tuple[dict, "_EventBatch"]:
        """Simulate one day hour by hour; return the kept impression rows and all their events."""
        day_start = self.start_ms + day * DAY_MS
        requests = self.requests_of_day(day=day, rng=rng)
        t = requests["t"]
        rows, events = [], []
        bounds = np.searchsorted(t, day_start + np.arange(25, dtype=np.int64) * HOUR_MS)
        for hour in range(24):
            lo, hi = bounds[hour], bounds[hour + 1]
            step_requests = {k: v[lo:hi] for k, v in requests.items()}
            step_start = day_start + hour * HOUR_MS
            step_rows, step_events = self._simulate_step(
                rng=rng, requests=step_requests, step_start=step_start, step_end=step_start + HOUR_MS
            )
            rows.append(step_rows)
            events.append(step_events)
        day_rows = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
        return day_rows, _EventBatch.concat(*events)

    def requests_of_day(self, *, day: int, rng: np.random.Generator) -> dict:
        """The day's requests in time order (numbered after every earlier request): user, time,
        surface, query terms and, with the within-day dynamics, the session's intent."""
        cfg = self.config
        day_start = self.start_ms + day * DAY_MS
        counts = rng.poisson(self.activity)
        user = np.repeat(np.arange(cfg.n_users, dtype=np.int64), counts)
        if cfg.within_day:
            t, intent_cat, intent_brand = self._sessions(rng=rng, user=user, day_start=day_start)
        else:
            t = day_start + _time_of_day(rng, len(user))
            intent_cat = intent_brand = np.full(len(user), -1, dtype=np.int64)
        keep = t >= self.signup_ms[user]  # nobody browses before signing up
        user, t, intent_cat, intent_brand = user[keep], t[keep], intent_cat[keep], intent_brand[keep]
        order = np.lexsort((user, t))
        user, t, intent_cat, intent_brand = user[order], t[order], intent_cat[order], intent_brand[order]
        n = len(user)
        search = rng.random(n) < self.user_search_share[user]
        query_cat, query_colour, query_brand = self._draw_queries(rng=rng, user=user)
        if cfg.within_day:  # a session's searches often name what the user is after right now
            query_cat = np.where(rng.random(n) < SESSION_QUERY_INTENT, intent_cat, query_cat)
        query_cat = np.where(search, query_cat, -1)
        query_colour = np.where(search, query_colour, -1)
        query_brand = np.where(search, query_brand, -1)
        request = self.request_base + 1 + np.arange(n, dtype=np.int64)
        self.request_base += n
        requests = {
            "request": request,
            "user": user,
            "t": t,
            "search": search,
            "cat": query_cat,
            "colour": query_colour,
            "brand": query_brand,
            "intent_cat": intent_cat,
            "intent_brand": intent_brand,
        }
        return requests

    def _sessions(
        self, *, rng: np.random.Generator, user: np.ndarray, day_start: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Within-day dynamics: group each user's requests of the day (``user`` sorted, repeated per
        request) into sessions; return per request its time, the session's intent category and brand
        (-1: none). A session starts at a time drawn from the daily activity curve; its requests fall
        within SESSION_SPAN_MINUTES of the start (before midnight)."""
        n = len(user)
        first_of_user = np.ones(n, dtype=bool)
        first_of_user[1:] = user[1:] != user[:-1]
        new_session = first_of_user | (rng.random(n) >= SESSION_CONTINUE)
        session = np.cumsum(new_session) - 1
        n_sessions = int(new_session.sum())
        session_user = user[new_session]
        start = day_start + _time_of_day(rng, n_sessions)
        offset = (rng.random(n) * SESSION_SPAN_MINUTES * 60_000).astype(np.int64)
        t = np.minimum(start[session] + offset, day_start + DAY_MS - 1)
        from_taste = _draw_rows(rng, self.taste_cum[session_user]) if n_sessions else np.zeros(0, np.int64)
        anywhere = rng.choice(len(CATEGORIES), size=n_sessions, p=CATEGORY_SHARE)
        cat = np.where(rng.random(n_sessions) < SESSION_INTENT_FROM_TASTE, from_taste, anywhere).astype(np.int64)
        brand_cum = np.cumsum(self.brand_given_category[cat], axis=1)
        brand = _draw_rows(rng, brand_cum) if n_sessions else np.zeros(0, np.int64)
        brand = np.where(rng.random(n_sessions) < SESSION_INTENT_BRAND, brand, -1).astype(np.int64)
        return t, cat[session], brand[session]

    def _draw_queries(self, *, rng: np.random.Generator, user: np.ndarray) -> tuple[np.ndarray, ...]:
        """A normalised query per request from the user's taste: "dresses", "black dresses", "zara dresses"."""
        n = len(user)
        cat = _draw_rows(rng, self.taste_cum[user])
        kind = rng.random(n)
        with_colour = (kind >= 0.5) & (kind < 0.75)
        with_brand = kind >= 0.75
        colour = np.where(with_colour, rng.choice(len(COLOURS), size=n, p=COLOUR_SHARE), -1)
        # Brands users type are the ones they like among those selling the category.
        brand_weight = self.brand_given_category[cat] * np.exp(W_BRAND * 3 * self.brand_affinity[user])
        brand = np.where(with_brand, _draw_rows(rng, np.cumsum(brand_weight, axis=1)), -1)
        return cat, colour, brand

    def _simulate_step(
        self, *, rng: np.random.Generator, requests: dict, step_start: int, step_end: int
    ) -> tuple[dict, "_EventBatch"]:
        """One hour: retrieve, rank with the legacy policy, engage, then apply sales."""
        cfg = self.config
        n_requests = len(requests["request"])
        if n_requests == 0:
            return _empty_rows(), _EventBatch.empty()
        n_items = len(self.created_ms)
        req_local, item = self._retrieve(rng=rng, requests=requests, step_start=step_start, step_end=step_end)
        if len(item) == 0:
            return _empty_rows(), _EventBatch.empty()
        t_request = requests["t"][req_local]
        search = requests["search"][req_local]
        age_days = (t_request - self.created_ms[item]) / DAY_MS
        match = self._query_match(requests=requests, req_local=req_local, item=item)

        # Legacy policy: popularity + recency + (on search) text match + large noise. It never
        # sees the utility, so it is only weakly informative and a learned ranker can beat it.
        legacy = (
            np.log1p(self.past_clicks[item])
            + LEGACY_RECENCY * np.exp(-age_days / 2.0)
            + LEGACY_TEXT_MATCH * np.where(search, match, 0.0)
            + rng.normal(0.0, LEGACY_NOISE_SD, size=len(item))
        )
        order = np.lexsort((-legacy, req_local))
        req_local, item, t_request, search, age_days, match = (
            a[order] for a in (req_local, item, t_request, search, age_days, match)
        )
        rank = np.arange(len(item)) - np.searchsorted(req_local, req_local, side="left")
        shown = rank < cfg.slate_size
        req_local, item, t_request, search, age_days, match = (
            a[shown] for a in (req_local, item, t_request, search, age_days, match)
        )
        position = rank[shown] + 1
        user = requests["user"][req_local]
        utility, expected = self._utility(
            rng=rng,
            user=user,
            item=item,
            age_days=age_days,
            search=search,
            match=match,
            intent_cat=requests["intent_cat"][req_local],
            intent_brand=requests["intent_brand"][req_local],
        )

        # Engagement: clicks carry the position bias; deeper funnel steps need a click first.
        drawn = draw_engagement(rng, utility, position, t_request)
        click, save, bag, purchase = drawn.click, drawn.save, drawn.add_to_bag, drawn.purchase
        t_click, t_save, t_bag, t_purchase = drawn.t_click, drawn.t_save, drawn.t_add_to_bag, drawn.t_purchase

        # Sold-out dynamics: the first purchase of a listing wins (listings already sold in an
        # earlier step cannot be bought again), then every impression at or after the sale goes.
        buyers = np.flatnonzero(purchase & (self.sold_ms[item] == NEVER))
        purchase[:] = False
        if len(buyers):
            by_item_time = np.lexsort((t_purchase[buyers], item[buyers]))
            buyers = buyers[by_item_time]
            first = np.ones(len(buyers), dtype=bool)
            first[1:] = item[buyers][1:] != item[buyers][:-1]
            winners = buyers[first]
            purchase[winners] = True
            self.sold_ms[item[winners]] = t_purchase[winners]
        kept = t_request < self.sold_ms[item]

        rows = {
            "request": requests["request"][req_local],
            "user": user,
            "item": item,
            "position": position,
            "t": t_request,
            "utility": utility,
            "expected": expected,
            "search": search,
            "query": _query_code(requests["cat"], requests["colour"], requests["brand"])[req_local],
        }
        rows = {k: v[kept] for k, v in rows.items()}
        click, save, bag, purchase = click[kept], save[kept], bag[kept], purchase[kept]
        self.past_clicks += np.bincount(rows["item"][click], minlength=n_items)
        times = {
            "impression": rows["t"],
            "click": t_click[kept],
            "save": t_save[kept],
            "add_to_bag": t_bag[kept],
            "purchase": t_purchase[kept],
        }
        flags = {
            "impression": np.ones(len(click), dtype=bool),
            "click": click,
            "save": save,
            "add_to_bag": bag,
            "purchase": purchase,
        }
        batches = []
        for name, flag in flags.items():
            idx = np.flatnonzero(flag)
            batches.append(
                _EventBatch(
                    {
                        "t": times[name][idx],
                        "type": np.full(len(idx), _EVENT_CODES[name], dtype=np.int8),
                        "request": rows["request"][idx],
                        "user": rows["user"][idx],
                        "item": rows["item"][idx],
                        "position": rows["position"][idx],
                        "search": rows["search"][idx],
                        "query": rows["query"][idx],
                    }
                )
            )
        return rows, _EventBatch.concat(*batches)

    def _retrieve(
        self, *, rng: np.random.Generator, requests: dict, step_start: int, step_end: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Candidate (request, listing) pairs, unique, active at the request time.

        Search draws 60% from listings matching the query (category + colour or brand), 30% from
        the query's category and 10% at random; recs draws half from categories sampled from the
        user's taste and half at random. Draws are with replacement, then de-duplicated.
        """
        cfg = self.config
        n_brands, n_colours = len(BRANDS), len(COLOURS)
        is_active = (self.created_ms < step_end) & (self.sold_ms > step_start)
        active = np.flatnonzero(is_active)
        if len(active) == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        # One lookup array holding the active listings grouped four ways; each pool is a range.
        # Filtering the catalogue-wide orderings keeps them grouped, so no sort per step.
        pools, bounds, offset = [], [], 0
        for key, order, size in self.pool_orders:
            pool = order[is_active[order]]
            pools.append(pool)
            counts = np.bincount(key[pool], minlength=size)
            bounds.append(offset + np.concatenate([[0], np.cumsum(counts)]))
            offset += len(pool)
        pools.append(active)
        lookup = np.concatenate(pools)
        by_brand, by_colour, by_cat = bounds
        random_lo, random_hi = offset, offset + len(active)

        n_requests = len(requests["request"])
        draws = 3 * cfg.slate_size
        search = requests["search"]
        qcat, qcolour, qbrand = requests["cat"], requests["colour"], requests["brand"]
        # Category of each draw: the query's on search, a taste sample on recs.
        draw_cat = np.where(
            search[:, None],
            qcat[:, None],
            _draw_rows(rng, self.taste_cum[requests["user"]], n_draws=draws),
        )
        exact_key_brand = qcat * n_brands + np.maximum(qbrand, 0)
        exact_key_colour = qcat * n_colours + np.maximum(qcolour, 0)
        exact_lo = np.where(
            qbrand >= 0,
            by_brand[exact_key_brand],
            np.where(qcolour >= 0, by_colour[exact_key_colour], by_cat[np.maximum(qcat, 0)]),
        )
        exact_hi = np.where(
            qbrand >= 0,
            by_brand[exact_key_brand + 1],
            np.where(qcolour >= 0, by_colour[exact_key_colour + 1], by_cat[np.maximum(qcat, 0) + 1]),
        )
        j = np.arange(draws)[None, :]
        source = np.where(  # 0 exact match, 1 category, 2 random
            search[:, None],
            np.where(j < 0.6 * draws, 0, np.where(j < 0.9 * draws, 1, 2)),
            np.where(j < 0.5 * draws, 1, 2),
        )
        cat_lo, cat_hi = by_cat[draw_cat], by_cat[draw_cat + 1]
        lo = np.where(source == 0, exact_lo[:, None], np.where(source == 1, cat_lo, random_lo))
        hi = np.where(source == 0, exact_hi[:, None], np.where(source == 1, cat_hi, random_hi))
        # Empty pools fall back to the category, then to anything active.
        empty = hi <= lo
        lo, hi = np.where(empty, cat_lo, lo), np.where(empty, cat_hi, hi)
        empty = hi <= lo
        lo, hi = np.where(empty, random_lo, lo), np.where(empty, random_hi, hi)
        pick = lo + (rng.random((n_requests, draws)) * (hi - lo)).astype(np.int64)
        item = lookup[np.minimum(pick, hi - 1)].ravel()
        req_local = np.repeat(np.arange(n_requests, dtype=np.int64), draws)
        t = requests["t"][req_local]
        live = (self.created_ms[item] <= t) & (t < self.sold_ms[item])
        n_items = len(self.created_ms)
        pairs = np.unique(req_local[live] * n_items + item[live])
        return pairs // n_items, pairs % n_items

    def _query_match(self, *, requests: dict, req_local: np.ndarray, item: np.ndarray) -> np.ndarray:
        """Share of the query's terms (category, colour, brand) found in the listing's title."""
        qcat, qcolour, qbrand = (requests[k][req_local] for k in ("cat", "colour", "brand"))
        terms = 1 + (qcolour >= 0) + (qbrand >= 0)
        hits = (
            (self.category[item] == qcat).astype(np.int64)
            + ((qcolour >= 0) & (self.colour[item] == qcolour) & self.title_has_colour[item])
            + ((qbrand >= 0) & (self.brand[item] == qbrand))
        )
        return np.where(qcat >= 0, hits / terms, 0.0)

    def _utility(
        self,
        *,
        rng: np.random.Generator,
        user: np.ndarray,
        item: np.ndarray,
        age_days: np.ndarray,
        search: np.ndarray,
        match: np.ndarray,
        intent_cat: np.ndarray | None = None,
        intent_brand: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The hidden true utility of showing ``item`` to ``user`` in this request, and its expected
        value (everything but the per-impression noise: the best any ranker could know).

        With the within-day dynamics the expected value also holds the session terms
        (``W_SESSION_CATEGORY`` if the listing is in the session's intent category, ``W_SESSION_BRAND``
        if of its brand) and the listing's hype (``W_HYPE x hype x exp(-age_h / HYPE_HOURS)``)."""
        cat = self.category[item]
        budget = self.budget[user] * self.base_price[cat] * 1.15
        price_fit = -np.abs(np.log(self.price[item] / budget))
        size = self.size[item]
        clothes, footwear = self.is_clothes[cat], self.is_footwear[cat]
        own_size = np.where(clothes, self.clothing_size[user], self.shoe_size[user])
        gap = np.abs(size - own_size)
        size_fit = np.where(clothes | footwear, np.select([gap == 0, gap == 1], [0.4, -0.2], -1.0), 0.0)
        expected = (
            self.taste_term[user, cat]
            + W_BRAND * self.brand_affinity[user, self.brand[item]]
            + W_PRICE_FIT * price_fit
            + size_fit
            + W_CONDITION * (self.condition[item] - 1.5)
            + self.quality[item]
            + W_FRESHNESS * np.exp(-age_days / FRESHNESS_DAYS)
            + np.where(search, W_QUERY_MATCH * (match - 1.0), 0.0)
        )
        if self.config.within_day:
            expected = expected + self.within_day_term(
                item=item, age_days=age_days, intent_cat=intent_cat, intent_brand=intent_brand
            )
        return expected + rng.normal(0.0, NOISE_SD, size=len(item)), expected

    def within_day_term(
        self,
        *,
        item: np.ndarray,
        age_days: np.ndarray,
        intent_cat: np.ndarray | None,
        intent_brand: np.ndarray | None,
    ) -> np.ndarray:
        """The session-intent and hype part of the expected utility (0 without the dynamics)."""
        term = np.zeros(len(item))
        if self.hype is None:
            return term
        if intent_cat is not None:
            term += W_SESSION_CATEGORY * ((intent_cat >= 0) & (self.category[item] == intent_cat))
        if intent_brand is not None:
            term += W_SESSION_BRAND * ((intent_brand >= 0) & (self.brand[item] == intent_brand))
        age_hours = np.maximum(np.asarray(age_days, dtype=np.float64) * 24.0, 0.0)
        return term + W_HYPE * self.hype[item] * np.exp(-age_hours / HYPE_HOURS)

    # Output frames -----------------------------------------------------------------------------
    def _ids(self, kind: str, numbers: np.ndarray) -> pa.Array:
        return _format_ids(ID_PREFIX[kind], numbers, self.width[kind])

    def events_frame(self, batch: "_EventBatch", *, first_event: int) -> pd.DataFrame:
        f = batch.fields
        n = len(f["t"])
        user_ids = self._ids("user", f["user"] + 1)
        item_ids = self._ids("item", f["item"] + 1)
        query_code = f["query"]
        table = pa.table(
            {
                "event_id": self._ids("event", first_event + np.arange(n, dtype=np.int64)),
                "event_type": pa.array(schema.EVENT_TYPES, pa.large_string()).take(
                    pa.array(f["type"].astype(np.int64))
                ),
                "timestamp": pa.array(f["t"] * 1000, pa.timestamp("us", tz="UTC")),
                "user_id": user_ids,
                "item_id": item_ids,
                "surface": pa.array(schema.SURFACES, pa.large_string()).take(pa.array(np.where(f["search"], 0, 1))),
                "request_id": self._ids("request", f["request"]),
                "position": pa.array(f["position"].astype(np.int32)),
                "query": self.query_vocabulary.take(pa.array(np.maximum(query_code, 0), mask=query_code < 0)),
            }
        )
        return _to_pandas(table)

    def ground_truth_frame(self, rows: dict) -> pd.DataFrame:
        table = pa.table(
            {
                "request_id": self._ids("request", rows["request"]),
                "item_id": self._ids("item", rows["item"] + 1),
                "user_id": self._ids("user", rows["user"] + 1),
                "true_utility": pa.array(rows["utility"].astype(np.float64)),
                "expected_utility": pa.array(rows["expected"].astype(np.float64)),
            }
        )
        return _to_pandas(table)

    def listings_frame(self, before_ms: int | None = None) -> pd.DataFrame:
        """The listings table; with ``before_ms``, only the listings created before it (the ids follow
        the creation time, so they are the first ones)."""
        n = len(self.created_ms) if before_ms is None else int(np.searchsorted(self.created_ms, before_ms))
        return self._listings_frame(n)

    def _listings_frame(self, n: int) -> pd.DataFrame:
        sold = self.sold_ms[:n] != NEVER
        sizes = np.array(
            [CLOTHING_SIZES[s] if 0 <= s < 5 else (str(s) if s >= 36 else "one size") for s in range(46)]
            + ["one size"],
            dtype=object,
        )
        return pd.DataFrame(
            {
                "item_id": _to_pandas_strings(self._ids("item", np.arange(1, n + 1))),
                "seller_id": _to_pandas_strings(self._ids("seller", self.seller[:n].astype(np.int64) + 1)),
                "title": self.title[:n],
                "category": np.array(CATEGORIES, dtype=object)[self.category[:n]],
                "brand": np.array([name for name, _, _ in BRANDS], dtype=object)[self.brand[:n]],
                "size": sizes[self.size[:n]],
                "condition": np.array(CONDITIONS, dtype=object)[self.condition[:n]],
                "colour": np.array(COLOURS, dtype=object)[self.colour[:n]],
                "price": self.price[:n],
                "original_price": self.original_price[:n],
                "created_at": _timestamps(self.created_ms[:n]),
                "sold_at": _timestamps(np.where(sold, self.sold_ms[:n], 0), missing=~sold),
            }
        )

    def users_frame(self) -> pd.DataFrame:
        n = self.config.n_users
        size = np.array(CLOTHING_SIZES, dtype=object)[self.clothing_size]
        return pd.DataFrame(
            {
                "user_id": _to_pandas_strings(self._ids("user", np.arange(1, n + 1))),
                "signup_at": _timestamps(self.signup_ms),
                "size": pd.array(
                    np.where(self.profile_has_size, size, np.full(n, None, dtype=object)), dtype="string[pyarrow]"
                ),
            }
        )

    def sellers_frame(self) -> pd.DataFrame:
        n = self.config.n_sellers
        return pd.DataFrame(
            {
                "seller_id": _to_pandas_strings(self._ids("seller", np.arange(1, n + 1))),
                "joined_at": _timestamps(self.seller_joined_ms),
            }
        )


class _EventBatch:
    """Events as parallel numpy arrays (ids are formatted only when a chunk is written)."""

    FIELDS = ("t", "type", "request", "user", "item", "position", "search", "query")

    def __init__(self, fields: dict) -> None:
        self.fields = fields

    @classmethod
    def empty(cls) -> "_EventBatch":
        dtypes = (np.int64, np.int8, np.int64, np.int64, np.int64, np.int64, bool, np.int64)
        return cls({name: np.zeros(0, dtype=d) for name, d in zip(cls.FIELDS, dtypes, strict=False)})

    @classmethod
    def concat(cls, *batches: "_EventBatch") -> "_EventBatch":
        if not batches:
            return cls.empty()
        return cls({k: np.concatenate([b.fields[k] for b in batches]) for k in cls.FIELDS})

    def sorted(self) -> "_EventBatch":
        """Chronological; ties by request, position and funnel step so the order is total."""
        f = self.fields
        order = np.lexsort((f["type"], f["item"], f["position"], f["request"], f["t"]))
        return _EventBatch({k: v[order] for k, v in f.items()})

    def split_before(self, cutoff: int) -> tuple["_EventBatch", "_EventBatch"]:
        """(events strictly before ``cutoff``, the rest); the batch must be sorted."""
        i = int(np.searchsorted(self.fields["t"], cutoff, side="left"))
        return (
            _EventBatch({k: v[:i] for k, v in self.fields.items()}),
            _EventBatch({k: v[i:] for k, v in self.fields.items()}),
        )


class _ChunkWriter:
    """Append validated chunks of one table to a parquet file; the file appears only on success."""

    def __init__(self, *, path: Path, table: TableSchema) -> None:
        self.path = Path(path)
        self.table = table
        self.tmp = self.path.with_suffix(".parquet.tmp")
        self.writer: pq.ParquetWriter | None = None
        self.rows = 0

    def __enter__(self) -> "_ChunkWriter":
        return self

    def write(self, frame: pd.DataFrame) -> None:
        frame = schema.normalise(self.table, frame)
        if self.writer is not None and frame.empty:
            return
        arrow = pa.Table.from_pandas(frame, preserve_index=False)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.tmp, arrow.schema)
        self.writer.write_table(arrow)
        self.rows += len(frame)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            if self.writer is not None:
                self.writer.close()
            self.tmp.unlink(missing_ok=True)
            return
        if self.writer is None:  # nothing was written: still leave a valid, empty table
            self.write(pd.DataFrame({name: [] for name in self.table.names}))
        assert self.writer is not None  # write() opened it
        self.writer.close()
        self.tmp.replace(self.path)


# --- Helpers -----------------------------------------------------------------------------------
def _rng(seed: np.random.SeedSequence) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


def _epoch_ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp()) * 1000


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat()


def _time_of_day(rng: np.random.Generator, n: int) -> np.ndarray:
    """Milliseconds after midnight following the daily activity curve."""
    weights = np.array(HOURLY_ACTIVITY)
    hour = rng.choice(24, size=n, p=weights / weights.sum())
    return hour.astype(np.int64) * HOUR_MS + (rng.random(n) * HOUR_MS).astype(np.int64)


def _draw_rows(rng: np.random.Generator, cumulative: np.ndarray, n_draws: int | None = None) -> np.ndarray:
    """Categorical draws from rows of cumulative weights: one per row, or ``n_draws`` per row.

    Counting the cumulative weights <= u skips zero-weight categories even when u is exactly 0.
    """
    total = cumulative[:, -1:]
    if n_draws is None:
        u = rng.random((len(cumulative), 1)) * total
        index = (cumulative <= u).sum(axis=1)
    else:
        u = rng.random((len(cumulative), n_draws)) * total
        index = (cumulative[:, None, :] <= u[:, :, None]).sum(axis=2)
    return np.minimum(index, cumulative.shape[1] - 1)


def _query_code(cat: np.ndarray, colour: np.ndarray, brand: np.ndarray) -> np.ndarray:
    """Index into the query vocabulary; -1 for recs (no query)."""
    n_categories, n_colours = len(CATEGORIES), len(COLOURS)
    code = cat + n_categories * (colour + 1) + n_categories * (n_colours + 1) * (brand + 1)
    return np.where(cat >= 0, code, -1)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass(frozen=True)
class Engagement:
    """What users do with the listings they were shown: per impression, whether they clicked,
    saved, added to bag and bought, and when (epoch ms; only meaningful where the flag is set)."""

    click: np.ndarray
    save: np.ndarray
    add_to_bag: np.ndarray
    purchase: np.ndarray
    t_click: np.ndarray
    t_save: np.ndarray
    t_add_to_bag: np.ndarray
    t_purchase: np.ndarray


def click_probability(utility: np.ndarray, position: np.ndarray) -> np.ndarray:
    """``P(click) = examine(position) x sigmoid(utility - CLICK_THRESHOLD)``, ``examine(p) = p^-EXAMINE_EXPONENT``:
    the behaviour model's click term, shared by :func:`draw_engagement` and the A/B simulations."""
    examine = np.asarray(position, dtype=np.float64) ** -EXAMINE_EXPONENT
    return examine * _sigmoid(np.asarray(utility, dtype=np.float64) - CLICK_THRESHOLD)


def draw_engagement(
    rng: np.random.Generator, utility: np.ndarray, position: np.ndarray, t_request: np.ndarray | int
) -> Engagement:
    """The behaviour model: ``P(click) = examine(position) x sigmoid(utility - CLICK_THRESHOLD)``
    with ``examine(p) = p^-EXAMINE_EXPONENT``; saves, add-to-bags and purchases need a click first.
    Used by the simulator and by the live environment (:mod:`ranker.monitoring.live`)."""
    n = len(utility)
    click = rng.random(n) < click_probability(utility, position)
    save = click & (rng.random(n) < 0.25 * _sigmoid(utility - CLICK_THRESHOLD + 0.5))
    bag = click & (rng.random(n) < 0.35 * _sigmoid(utility - CLICK_THRESHOLD + 0.5))
    purchase = bag & (rng.random(n) < 0.65 * _sigmoid(utility - CLICK_THRESHOLD))
    t_click = t_request + 1_500 + position * 800 + rng.exponential(12_000, size=n).astype(np.int64)
    t_save = t_click + 2_000 + rng.exponential(40_000, size=n).astype(np.int64)
    t_bag = t_click + 4_000 + rng.exponential(60_000, size=n).astype(np.int64)
    t_purchase = t_bag + 20_000 + rng.exponential(360_000, size=n).astype(np.int64)
    return Engagement(click, save, bag, purchase, t_click, t_save, t_bag, t_purchase)


def _empty_rows() -> dict:
    return {
        "request": np.zeros(0, np.int64),
        "user": np.zeros(0, np.int64),
        "item": np.zeros(0, np.int64),
        "position": np.zeros(0, np.int64),
        "t": np.zeros(0, np.int64),
        "utility": np.zeros(0),
        "expected": np.zeros(0),
        "search": np.zeros(0, bool),
        "query": np.zeros(0, np.int64),
    }


def _format_ids(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    """ "u" + zero-padded number, formatted by Arrow (vectorised, no Python loop)."""
    digits = pc.utf8_lpad(
        pc.cast(pa.array(np.asarray(numbers, dtype=np.int64)), pa.large_string()), width=width, padding="0"
    )
    no_separator = pa.scalar("", pa.large_string())
    return pc.binary_join_element_wise(pa.scalar(prefix, pa.large_string()), digits, no_separator)


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    # Arrow-backed strings avoid materialising millions of Python str objects per chunk.
    mapping = {pa.large_string(): pd.StringDtype("pyarrow"), pa.string(): pd.StringDtype("pyarrow")}
    return table.to_pandas(types_mapper=mapping.get)


def _to_pandas_strings(array: pa.Array) -> pd.Series:
    return pd.Series(pd.arrays.ArrowStringArray(array))


def _timestamps(ms: np.ndarray, missing: np.ndarray | None = None) -> pd.Series:
    values = np.asarray(ms, dtype=np.int64).astype("datetime64[ms]").astype("datetime64[us]")
    if missing is not None:
        values[missing] = np.datetime64("NaT")
    return pd.Series(values).dt.tz_localize("UTC")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _relative(path: Path, base: Path) -> str:
    try:
        return str(Path(path).relative_to(base))
    except ValueError:
        return str(path)

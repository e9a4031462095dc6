"""Batch feature tables: windowed aggregates of the raw events, one row per entity per daily
snapshot, each computed only from events strictly before its ``event_timestamp``.

All work is done in DuckDB (vectorised, spills to disk, memory bounded); tables are written
atomically, so a rerun replaces them whole. The table and column names are the ones declared in
``feature_repo/`` — that folder is the contract, this module fills it.

Snapshot times are UTC midnights. A feature "over the last 7 days" at snapshot S aggregates the
days [S-7d, S): because events are bucketed by their UTC day and day d < S, no event at or after S
can leak in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ranker.config import Settings
from ranker.data import schema
from ranker.errors import RankerError
from ranker.features import taste

# Smoothing strengths (pseudo-impressions) for rates: a listing with 3 impressions and 1 click is
# not a 33% CTR listing.
ITEM_PRIOR_WEIGHT = 50.0
USER_PRIOR_WEIGHT = 20.0
QUERY_PRIOR_WEIGHT = 20.0
# COEC smoothing: a listing with no history has appeal 1 (exactly as expected for its slots).
COEC_PRIOR_CLICKS = 2.0
# A user's click-through rate on a brand is smoothed towards the user's own rate with this many
# pseudo-impressions, so the brand lift of a pair seen twice stays near 1.
BRAND_PRIOR_WEIGHT = 10.0
# Sparse pair tables keep a row this long after the last engagement, so the online store receives
# the zero row once a pair's 30-day window has emptied.
PAIR_RETENTION_DAYS = 32

TABLES: tuple[str, ...] = (
    "listings",
    "item_stats",
    "user_stats",
    "category_stats",
    "seller_stats",
    "user_category_stats",
    "query_category_stats",
    "user_brand_stats",
    "user_size_stats",
    "user_price_band_stats",
    "user_category_taste_stats",
)
# Generic tables (feature service generic_ranker_v1): built from any log, imported or simulated.
# "Interactions" are all non-impression events; sparse rows (entities with an interaction in the
# last PAIR_RETENTION_DAYS days), so an absent entity means "no interactions": counts default to 0.
GENERIC_TABLES = ("generic_item_stats", "generic_user_stats", "generic_user_category_stats")
TABLES = TABLES + GENERIC_TABLES


class FeatureBuildError(RankerError):
    """Feature tables cannot be built from the raw data as it is."""


@dataclass(frozen=True)
class BuildOptions:
    memory_limit: str = "4GB"
    threads: int = 2


def _connect(options: BuildOptions, tmp_dir: Path):
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET memory_limit='{options.memory_limit}'")
    con.execute(f"SET threads={int(options.threads)}")
    con.execute(f"SET temp_directory='{tmp_dir}'")
    con.execute("SET TimeZone='UTC'")
    con.execute("SET preserve_insertion_order=false")
    return con


def _load_raw(con, raw_dir: Path) -> None:
    for table in (schema.EVENTS, schema.LISTINGS, schema.USERS, schema.SELLERS):
        path = raw_dir / table.file
        if not path.exists():
            raise FeatureBuildError(f"{path} not found: run `ranker data simulate` or `ranker data import` first")
        try:
            cols = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet('{path}')").fetchall()}
        except Exception as exc:  # duckdb raises IOException/InvalidInputException for bad files
            raise FeatureBuildError(f"{path} is not a readable parquet file: {exc}") from None
        missing = [c for c in table.names if c not in cols]
        if missing:
            raise FeatureBuildError(f"{path}: missing column(s) {', '.join(missing)}")
        con.execute(f"CREATE VIEW {table.name} AS SELECT * FROM read_parquet('{path}')")
    (n,) = con.execute("SELECT count(*) FROM events").fetchall()[0]
    if n == 0:
        raise FeatureBuildError(f"{raw_dir / schema.EVENTS.file} holds no events: nothing to aggregate")


_SQL_SETUP = """
CREATE TABLE snapshots AS
SELECT unnest(generate_series(
    (SELECT date_trunc('day', min(timestamp)) FROM events),
    (SELECT date_trunc('day', max(timestamp)) + INTERVAL 1 DAY FROM events),
    INTERVAL 1 DAY)) AS snapshot_ts;

-- Engagement events enriched with the listing's attributes.
CREATE TABLE ev AS
SELECT e.event_type, e.timestamp, date_trunc('day', e.timestamp) AS day, e.user_id, e.item_id,
       e.surface, e.query, e.position, e.request_id, l.category, l.seller_id, l.price, l.brand,
       l.size AS listing_size
FROM events e LEFT JOIN listings l USING (item_id);

-- Click-through rate by slot and day: what a listing shown there would get on average. Clicks
-- over these expected clicks (COEC) measure a listing's appeal without the position it was shown at.
CREATE TABLE position_ctr AS
SELECT day, position,
       count(*) FILTER (WHERE event_type = 'click') / count(*) FILTER (WHERE event_type = 'impression') AS ctr
FROM ev WHERE event_type IN ('impression', 'click') GROUP BY ALL
HAVING count(*) FILTER (WHERE event_type = 'impression') > 0;

-- Median asking price of the listings live at each snapshot, per category: the price level that
-- makes prices comparable across categories.
CREATE TABLE category_price AS
SELECT l.category, s.snapshot_ts, median(l.price) AS median_price, count(*) AS live
FROM listings l JOIN snapshots s
  ON l.created_at < s.snapshot_ts AND (l.sold_at IS NULL OR l.sold_at >= s.snapshot_ts)
GROUP BY ALL;

CREATE TABLE item_daily AS
SELECT item_id, day,
       count(*) FILTER (WHERE event_type = 'impression') AS imp,
       coalesce(sum(p.ctr) FILTER (WHERE event_type = 'impression'), 0) AS exp_clk,
       count(*) FILTER (WHERE event_type = 'click') AS clk,
       count(*) FILTER (WHERE event_type = 'save') AS sav,
       count(*) FILTER (WHERE event_type = 'add_to_bag') AS atb
FROM ev LEFT JOIN position_ctr p USING (day, position) GROUP BY ALL;

CREATE TABLE user_daily AS
SELECT user_id, day,
       count(*) FILTER (WHERE event_type = 'impression') AS imp,
       count(*) FILTER (WHERE event_type = 'click') AS clk,
       count(*) FILTER (WHERE event_type = 'save') AS sav,
       count(*) FILTER (WHERE event_type = 'purchase') AS pur,
       coalesce(sum(price) FILTER (WHERE event_type = 'purchase'), 0) AS spend,
       max(timestamp) FILTER (WHERE event_type = 'click') AS last_click
FROM ev GROUP BY ALL;
"""

_SQL = {
    "listings": """
        SELECT item_id, created_at AS event_timestamp, {attrs}, CAST(0 AS BIGINT) AS is_sold FROM lst
        UNION ALL
        SELECT item_id, sold_at AS event_timestamp, {attrs}, CAST(1 AS BIGINT) AS is_sold
        FROM lst WHERE sold_at IS NOT NULL
    """,
    "item_stats": """
        WITH win AS (
            SELECT d.item_id, s.snapshot_ts,
                   sum(imp) FILTER (WHERE d.day >= s.snapshot_ts - INTERVAL 1 DAY) AS imp_1d,
                   sum(clk) FILTER (WHERE d.day >= s.snapshot_ts - INTERVAL 1 DAY) AS clk_1d,
                   sum(imp) AS imp_7d, sum(clk) AS clk_7d, sum(sav) AS sav_7d, sum(atb) AS atb_7d,
                   sum(exp_clk) AS exp_7d
            FROM item_daily d JOIN snapshots s
              ON d.day < s.snapshot_ts AND d.day >= s.snapshot_ts - INTERVAL 7 DAY
            GROUP BY ALL),
        prior AS (
            SELECT snapshot_ts,
                   sum(clk_1d) / nullif(sum(imp_1d), 0) AS ctr_1d,
                   sum(clk_7d) / nullif(sum(imp_7d), 0) AS ctr_7d,
                   sum(sav_7d) / nullif(sum(imp_7d), 0) AS sr_7d
            FROM win GROUP BY ALL),
        live AS (
            SELECT l.item_id, s.snapshot_ts FROM listings l JOIN snapshots s
              ON l.created_at < s.snapshot_ts AND (l.sold_at IS NULL OR l.sold_at >= s.snapshot_ts))
        SELECT live.item_id, live.snapshot_ts AS event_timestamp,
               coalesce(imp_1d, 0)::BIGINT AS item_impressions_1d,
               coalesce(clk_1d, 0)::BIGINT AS item_clicks_1d,
               coalesce(imp_7d, 0)::BIGINT AS item_impressions_7d,
               coalesce(clk_7d, 0)::BIGINT AS item_clicks_7d,
               coalesce(sav_7d, 0)::BIGINT AS item_saves_7d,
               coalesce(atb_7d, 0)::BIGINT AS item_add_to_bag_7d,
               ((coalesce(clk_1d, 0) + {w} * p.ctr_1d) / (coalesce(imp_1d, 0) + {w}))::FLOAT AS item_ctr_1d,
               ((coalesce(clk_7d, 0) + {w} * p.ctr_7d) / (coalesce(imp_7d, 0) + {w}))::FLOAT AS item_ctr_7d,
               ((coalesce(sav_7d, 0) + {w} * p.sr_7d) / (coalesce(imp_7d, 0) + {w}))::FLOAT AS item_save_rate_7d,
               ((coalesce(clk_7d, 0) + {coec}) / (coalesce(exp_7d, 0) + {coec}))::FLOAT AS item_coec_7d
        FROM live LEFT JOIN win USING (item_id, snapshot_ts) LEFT JOIN prior p USING (snapshot_ts)
    """,
    "user_stats": """
        WITH win AS (
            SELECT d.user_id, s.snapshot_ts,
                   sum(imp) FILTER (WHERE d.day >= s.snapshot_ts - INTERVAL 7 DAY) AS imp_7d,
                   sum(clk) FILTER (WHERE d.day >= s.snapshot_ts - INTERVAL 7 DAY) AS clk_7d,
                   sum(imp) AS imp_30d, sum(clk) AS clk_30d, sum(sav) AS sav_30d, sum(pur) AS pur_30d,
                   sum(spend) AS spend_30d, max(last_click) AS last_click
            FROM user_daily d JOIN snapshots s
              ON d.day < s.snapshot_ts AND d.day >= s.snapshot_ts - INTERVAL 30 DAY
            GROUP BY ALL),
        prior AS (SELECT snapshot_ts, sum(clk_30d) / nullif(sum(imp_30d), 0) AS ctr FROM win GROUP BY ALL),
        med AS (
            SELECT c.user_id, s.snapshot_ts, median(c.price) AS median_price,
                   median(c.price / cp.median_price) AS price_index
            FROM ev c JOIN snapshots s
              ON c.day < s.snapshot_ts AND c.day >= s.snapshot_ts - INTERVAL 30 DAY
            LEFT JOIN category_price cp ON cp.category = c.category AND cp.snapshot_ts = s.snapshot_ts
            WHERE c.event_type = 'click' GROUP BY ALL),
        live AS (
            SELECT u.user_id, u.size, s.snapshot_ts FROM users u JOIN snapshots s ON u.signup_at < s.snapshot_ts)
        SELECT live.user_id, live.snapshot_ts AS event_timestamp,
               live.size AS user_size,
               coalesce(imp_7d, 0)::BIGINT AS user_impressions_7d,
               coalesce(clk_7d, 0)::BIGINT AS user_clicks_7d,
               coalesce(clk_30d, 0)::BIGINT AS user_clicks_30d,
               coalesce(sav_30d, 0)::BIGINT AS user_saves_30d,
               coalesce(pur_30d, 0)::BIGINT AS user_purchases_30d,
               coalesce(spend_30d, 0)::FLOAT AS user_spend_30d,
               ((coalesce(clk_30d, 0) + {w} * p.ctr) / (coalesce(imp_30d, 0) + {w}))::FLOAT AS user_ctr_30d,
               med.median_price::FLOAT AS user_median_click_price_30d,
               med.price_index::FLOAT AS user_price_index_30d,
               ((epoch(live.snapshot_ts) - epoch(win.last_click)) / 3600.0)::FLOAT AS user_hours_since_last_click
        FROM live LEFT JOIN win USING (user_id, snapshot_ts) LEFT JOIN med USING (user_id, snapshot_ts)
             LEFT JOIN prior p USING (snapshot_ts)
    """,
    "category_stats": """
        WITH clicks AS (
            SELECT d.category, s.snapshot_ts,
                   count(*) FILTER (WHERE d.event_type = 'impression') AS imp,
                   count(*) FILTER (WHERE d.event_type = 'click') AS clk
            FROM ev d JOIN snapshots s ON d.day < s.snapshot_ts AND d.day >= s.snapshot_ts - INTERVAL 7 DAY
            WHERE d.category IS NOT NULL GROUP BY ALL)
        SELECT cp.category, cp.snapshot_ts AS event_timestamp,
               cp.median_price::FLOAT AS category_median_price,
               cp.live::BIGINT AS category_live_listings,
               (clicks.clk / nullif(clicks.imp, 0))::FLOAT AS category_ctr_7d
        FROM category_price cp LEFT JOIN clicks USING (category, snapshot_ts)
    """,
    "seller_stats": """
        WITH sales AS (
            SELECT l.seller_id, s.snapshot_ts, count(*) AS n FROM listings l JOIN snapshots s
              ON l.sold_at < s.snapshot_ts AND l.sold_at >= s.snapshot_ts - INTERVAL 30 DAY
            GROUP BY ALL),
        active AS (
            SELECT l.seller_id, s.snapshot_ts, count(*) AS n FROM listings l JOIN snapshots s
              ON l.created_at < s.snapshot_ts AND (l.sold_at IS NULL OR l.sold_at >= s.snapshot_ts)
            GROUP BY ALL),
        live AS (SELECT x.seller_id, s.snapshot_ts FROM sellers x JOIN snapshots s ON x.joined_at < s.snapshot_ts)
        SELECT live.seller_id, live.snapshot_ts AS event_timestamp,
               coalesce(sales.n, 0)::BIGINT AS seller_sales_30d,
               coalesce(active.n, 0)::BIGINT AS seller_active_listings,
               ((coalesce(sales.n, 0) + 1.0) / (coalesce(sales.n, 0) + coalesce(active.n, 0) + 2.0))::FLOAT
                   AS seller_sell_through_30d
        FROM live LEFT JOIN sales USING (seller_id, snapshot_ts) LEFT JOIN active USING (seller_id, snapshot_ts)
    """,
    "user_category_stats": """
        WITH daily AS (
            SELECT user_id, category, day,
                   count(*) FILTER (WHERE event_type = 'click') AS clk,
                   count(*) FILTER (WHERE event_type = 'save') AS sav,
                   count(*) FILTER (WHERE event_type = 'purchase') AS pur
            FROM ev WHERE event_type <> 'impression' AND category IS NOT NULL GROUP BY ALL),
        win AS (
            SELECT d.user_id, d.category, s.snapshot_ts,
                   sum(clk) FILTER (WHERE d.day >= s.snapshot_ts - INTERVAL 30 DAY) AS clk,
                   sum(sav) FILTER (WHERE d.day >= s.snapshot_ts - INTERVAL 30 DAY) AS sav,
                   sum(pur) FILTER (WHERE d.day >= s.snapshot_ts - INTERVAL 30 DAY) AS pur
            FROM daily d JOIN snapshots s
              ON d.day < s.snapshot_ts AND d.day >= s.snapshot_ts - INTERVAL {retention} DAY
            GROUP BY ALL),
        tot AS (SELECT user_id, snapshot_ts, sum(clk) AS user_clk FROM win GROUP BY ALL)
        SELECT user_id, category, snapshot_ts AS event_timestamp,
               coalesce(clk, 0)::BIGINT AS uc_clicks_30d,
               coalesce(sav, 0)::BIGINT AS uc_saves_30d,
               coalesce(pur, 0)::BIGINT AS uc_purchases_30d,
               coalesce(coalesce(clk, 0) / nullif(user_clk, 0), 0)::FLOAT AS uc_click_share_30d
        FROM win JOIN tot USING (user_id, snapshot_ts)
    """,
    "query_category_stats": """
        WITH daily AS (
            SELECT query, category, day,
                   count(*) FILTER (WHERE event_type = 'impression') AS imp,
                   count(*) FILTER (WHERE event_type = 'click') AS clk
            FROM ev WHERE surface = 'search' AND query IS NOT NULL AND query <> '' AND category IS NOT NULL
            GROUP BY ALL),
        win AS (
            SELECT d.query, d.category, s.snapshot_ts,
                   sum(imp) FILTER (WHERE d.day >= s.snapshot_ts - INTERVAL 30 DAY) AS imp,
                   sum(clk) FILTER (WHERE d.day >= s.snapshot_ts - INTERVAL 30 DAY) AS clk
            FROM daily d JOIN snapshots s
              ON d.day < s.snapshot_ts AND d.day >= s.snapshot_ts - INTERVAL {retention} DAY
            GROUP BY ALL),
        prior AS (SELECT snapshot_ts, sum(clk) / nullif(sum(imp), 0) AS ctr FROM win GROUP BY ALL)
        SELECT query, category, snapshot_ts AS event_timestamp,
               coalesce(imp, 0)::BIGINT AS qc_impressions_30d,
               coalesce(clk, 0)::BIGINT AS qc_clicks_30d,
               ((coalesce(clk, 0) + {wq} * p.ctr) / (coalesce(imp, 0) + {wq}))::FLOAT AS qc_ctr_30d
        FROM win LEFT JOIN prior p USING (snapshot_ts)
    """,
}

# Taste that generalises across unique listings: the user's brands and sizes (issue 17).
_SQL.update(
    {
        "user_brand_stats": """
        WITH engaged AS (
            SELECT user_id, brand, day,
                   count(*) FILTER (WHERE event_type = 'impression') AS imp,
                   count(*) FILTER (WHERE event_type = 'click') AS clk,
                   count(*) FILTER (WHERE event_type = 'save') AS sav,
                   count(*) FILTER (WHERE event_type IN ('add_to_bag', 'purchase')) AS buy,
                   0 AS srch
            FROM ev WHERE brand IS NOT NULL AND brand <> '' GROUP BY ALL),
        -- A search naming a brand (as whole words) says the user wants it, before any click.
        searches AS (
            SELECT DISTINCT user_id, day, request_id, query FROM ev
            WHERE surface = 'search' AND query IS NOT NULL AND query <> ''),
        brand_names AS (SELECT DISTINCT brand FROM listings WHERE brand IS NOT NULL AND brand <> ''),
        searched AS (
            SELECT s.user_id, b.brand, s.day, 0 AS imp, 0 AS clk, 0 AS sav, 0 AS buy, count(*) AS srch
            FROM searches s JOIN brand_names b ON contains(' ' || s.query || ' ', ' ' || b.brand || ' ')
            GROUP BY ALL),
        daily AS (
            SELECT user_id, brand, day, sum(imp) AS imp, sum(clk) AS clk, sum(sav) AS sav, sum(buy) AS buy,
                   sum(srch) AS srch
            FROM (SELECT * FROM engaged UNION ALL SELECT * FROM searched) GROUP BY ALL),
        win AS (
            SELECT d.user_id, d.brand, s.snapshot_ts,
                   sum(imp) FILTER (WHERE d.day >= s.snapshot_ts - INTERVAL 30 DAY) AS imp,
                   sum(clk) FILTER (WHERE d.day >= s.snapshot_ts - INTERVAL 30 DAY) AS clk,
                   sum(sav) FILTER (WHERE d.day >= s.snapshot_ts - INTERVAL 30 DAY) AS sav,
                   sum(buy) FILTER (WHERE d.day >= s.snapshot_ts - INTERVAL 30 DAY) AS buy,
                   sum(srch) FILTER (WHERE d.day >= s.snapshot_ts - INTERVAL 30 DAY) AS srch,
                   sum(clk + sav + buy + srch) AS engaged_retention
            FROM daily d JOIN snapshots s
              ON d.day < s.snapshot_ts AND d.day >= s.snapshot_ts - INTERVAL {retention} DAY
            GROUP BY ALL),
        tot AS (
            SELECT user_id, snapshot_ts, sum(clk) AS user_clk, sum(imp) AS user_imp, sum(srch) AS user_srch
            FROM win GROUP BY ALL),
        pairs AS (
            SELECT win.*, user_clk, user_imp, user_srch,
                   coalesce(user_clk / nullif(user_imp, 0), 0) AS user_ctr
            FROM win JOIN tot USING (user_id, snapshot_ts) WHERE engaged_retention > 0)
        SELECT user_id, brand, snapshot_ts AS event_timestamp,
               coalesce(imp, 0)::BIGINT AS ub_impressions_30d,
               coalesce(clk, 0)::BIGINT AS ub_clicks_30d,
               coalesce(sav, 0)::BIGINT AS ub_saves_30d,
               coalesce(buy, 0)::BIGINT AS ub_bag_or_buy_30d,
               coalesce(srch, 0)::BIGINT AS ub_searches_30d,
               coalesce(coalesce(clk, 0) / nullif(user_clk, 0), 0)::FLOAT AS ub_click_share_30d,
               coalesce(coalesce(srch, 0) / nullif(user_srch, 0), 0)::FLOAT AS ub_search_share_30d,
               (CASE WHEN user_ctr > 0 THEN
                   ((coalesce(clk, 0) + {wb} * user_ctr) / (coalesce(imp, 0) + {wb})) / user_ctr END)::FLOAT
                   AS ub_ctr_lift_30d
        FROM pairs
    """,
        "user_size_stats": """
        WITH sized AS (
            SELECT user_id, day,
                   CASE upper(listing_size) WHEN 'XXS' THEN -1 WHEN 'XS' THEN 0 WHEN 'S' THEN 1 WHEN 'M' THEN 2
                        WHEN 'L' THEN 3 WHEN 'XL' THEN 4 WHEN 'XXL' THEN 5 END AS clothing,
                   CASE WHEN try_cast(listing_size AS DOUBLE) BETWEEN 15 AND 55
                        THEN try_cast(listing_size AS DOUBLE) END AS shoe,
                   CASE event_type WHEN 'click' THEN 1 WHEN 'save' THEN 2 WHEN 'add_to_bag' THEN 3
                        WHEN 'purchase' THEN 4 END AS weight
            FROM ev WHERE event_type <> 'impression'),
        daily AS (
            SELECT user_id, day,
                   sum(weight) FILTER (WHERE clothing IS NOT NULL) AS cw,
                   sum(weight * clothing) FILTER (WHERE clothing IS NOT NULL) AS cws,
                   count(*) FILTER (WHERE clothing IS NOT NULL) AS cn,
                   sum(weight) FILTER (WHERE shoe IS NOT NULL) AS sw,
                   sum(weight * shoe) FILTER (WHERE shoe IS NOT NULL) AS sws,
                   count(*) FILTER (WHERE shoe IS NOT NULL) AS sn
            FROM sized WHERE clothing IS NOT NULL OR shoe IS NOT NULL GROUP BY ALL),
        win AS (
            SELECT d.user_id, s.snapshot_ts,
                   sum(cw) FILTER (WHERE d.day >= s.snapshot_ts - INTERVAL 30 DAY) AS cw,
                   sum(cws) FILTER (WHERE d.day >= s.snapshot_ts - INTERVAL 30 DAY) AS cws,
                   sum(cn) FILTER (WHERE d.day >= s.snapshot_ts - INTERVAL 30 DAY) AS cn,
                   sum(sw) FILTER (WHERE d.day >= s.snapshot_ts - INTERVAL 30 DAY) AS sw,
                   sum(sws) FILTER (WHERE d.day >= s.snapshot_ts - INTERVAL 30 DAY) AS sws,
                   sum(sn) FILTER (WHERE d.day >= s.snapshot_ts - INTERVAL 30 DAY) AS sn
            FROM daily d JOIN snapshots s
              ON d.day < s.snapshot_ts AND d.day >= s.snapshot_ts - INTERVAL {retention} DAY
            GROUP BY ALL)
        SELECT user_id, snapshot_ts AS event_timestamp,
               (cws / nullif(cw, 0))::FLOAT AS user_clothing_size_30d,
               coalesce(cn, 0)::BIGINT AS user_clothing_engaged_30d,
               (sws / nullif(sw, 0))::FLOAT AS user_shoe_size_30d,
               coalesce(sn, 0)::BIGINT AS user_shoe_engaged_30d
        FROM win
    """,
    }
)

_SQL["user_price_band_stats"] = taste.user_price_band_sql()  # the user's price level per band (issue 17)
_SQL["user_category_taste_stats"] = taste.user_category_taste_sql()  # category taste without exposure (issue 17)

_SQL.update(
    {
        "generic_item_stats": """
        WITH daily AS (
            SELECT item_id, day,
                   count(*) FILTER (WHERE event_type <> 'impression') AS act,
                   count(*) FILTER (WHERE event_type = 'impression') AS shown,
                   max(timestamp) FILTER (WHERE event_type <> 'impression') AS last_act
            FROM ev GROUP BY ALL),
        win AS (
            SELECT d.item_id, s.snapshot_ts,
                   sum(act) FILTER (WHERE d.day >= s.snapshot_ts - INTERVAL 1 DAY) AS act_1d,
                   sum(act) FILTER (WHERE d.day >= s.snapshot_ts - INTERVAL 7 DAY) AS act_7d,
                   sum(act) FILTER (WHERE d.day >= s.snapshot_ts - INTERVAL 30 DAY) AS act_30d,
                   sum(shown) FILTER (WHERE d.day >= s.snapshot_ts - INTERVAL 30 DAY) AS shown_30d,
                   max(last_act) AS last_act
            FROM daily d JOIN snapshots s
              ON d.day < s.snapshot_ts AND d.day >= s.snapshot_ts - INTERVAL {retention} DAY
            GROUP BY ALL HAVING sum(act) > 0),
        users AS (
            SELECT e.item_id, s.snapshot_ts, count(DISTINCT e.user_id) AS n
            FROM ev e JOIN snapshots s ON e.day < s.snapshot_ts AND e.day >= s.snapshot_ts - INTERVAL 30 DAY
            WHERE e.event_type <> 'impression' GROUP BY ALL),
        prior AS (SELECT snapshot_ts, sum(act_30d) / nullif(sum(shown_30d), 0) AS rate FROM win GROUP BY ALL)
        SELECT item_id, snapshot_ts AS event_timestamp,
               coalesce(act_1d, 0)::BIGINT AS item_interactions_1d,
               coalesce(act_7d, 0)::BIGINT AS item_interactions_7d,
               coalesce(act_30d, 0)::BIGINT AS item_interactions_30d,
               coalesce(users.n, 0)::BIGINT AS item_interaction_users_30d,
               ((coalesce(act_1d, 0) + 1.0) / (coalesce(act_7d, 0) / 7.0 + 1.0))::FLOAT AS item_interaction_trend,
               ((epoch(snapshot_ts) - epoch(last_act)) / 3600.0)::FLOAT AS item_hours_since_last_interaction,
               coalesce(shown_30d, 0)::BIGINT AS item_shown_30d,
               ((coalesce(act_30d, 0) + {w} * p.rate) / (coalesce(shown_30d, 0) + {w}))::FLOAT
                   AS item_interaction_rate_30d
        FROM win LEFT JOIN users USING (item_id, snapshot_ts) LEFT JOIN prior p USING (snapshot_ts)
    """,
        "generic_user_stats": """
        WITH daily AS (
            SELECT user_id, day,
                   count(*) FILTER (WHERE event_type <> 'impression') AS act,
                   count(*) FILTER (WHERE event_type = 'impression') AS shown,
                   max(timestamp) FILTER (WHERE event_type <> 'impression') AS last_act
            FROM ev GROUP BY ALL),
        win AS (
            SELECT d.user_id, s.snapshot_ts,
                   sum(act) FILTER (WHERE d.day >= s.snapshot_ts - INTERVAL 7 DAY) AS act_7d,
                   sum(act) FILTER (WHERE d.day >= s.snapshot_ts - INTERVAL 30 DAY) AS act_30d,
                   sum(shown) FILTER (WHERE d.day >= s.snapshot_ts - INTERVAL 30 DAY) AS shown_30d,
                   max(last_act) AS last_act
            FROM daily d JOIN snapshots s
              ON d.day < s.snapshot_ts AND d.day >= s.snapshot_ts - INTERVAL {retention} DAY
            GROUP BY ALL HAVING sum(act) > 0),
        items AS (
            SELECT e.user_id, s.snapshot_ts, count(DISTINCT e.item_id) AS n
            FROM ev e JOIN snapshots s ON e.day < s.snapshot_ts AND e.day >= s.snapshot_ts - INTERVAL 30 DAY
            WHERE e.event_type <> 'impression' GROUP BY ALL)
        SELECT user_id, snapshot_ts AS event_timestamp,
               coalesce(act_7d, 0)::BIGINT AS user_interactions_7d,
               coalesce(act_30d, 0)::BIGINT AS user_interactions_30d,
               coalesce(items.n, 0)::BIGINT AS user_interaction_items_30d,
               ((epoch(snapshot_ts) - epoch(last_act)) / 3600.0)::FLOAT AS user_hours_since_last_interaction,
               coalesce(shown_30d, 0)::BIGINT AS user_shown_30d
        FROM win LEFT JOIN items USING (user_id, snapshot_ts)
    """,
        "generic_user_category_stats": """
        WITH daily AS (
            SELECT user_id, category, day, count(*) AS act
            FROM ev WHERE event_type <> 'impression' AND category IS NOT NULL AND category <> 'unknown'
            GROUP BY ALL),
        win AS (
            SELECT d.user_id, d.category, s.snapshot_ts,
                   sum(act) FILTER (WHERE d.day >= s.snapshot_ts - INTERVAL 30 DAY) AS act
            FROM daily d JOIN snapshots s
              ON d.day < s.snapshot_ts AND d.day >= s.snapshot_ts - INTERVAL {retention} DAY
            GROUP BY ALL),
        tot AS (SELECT user_id, snapshot_ts, sum(act) AS user_act FROM win GROUP BY ALL)
        SELECT user_id, category, snapshot_ts AS event_timestamp,
               coalesce(act, 0)::BIGINT AS uc_interactions_30d,
               coalesce(coalesce(act, 0) / nullif(user_act, 0), 0)::FLOAT AS uc_interaction_share_30d
        FROM win JOIN tot USING (user_id, snapshot_ts)
    """,
    }
)

_LISTING_ATTRS = """seller_id, category, brand, size, title,
       price::FLOAT AS price,
       greatest(0.0, 1.0 - price / nullif(original_price, 0))::FLOAT AS discount_pct,
       (CASE condition WHEN 'fair' THEN 1 WHEN 'good' THEN 2 WHEN 'very_good' THEN 3
                       WHEN 'new_with_tags' THEN 4 END)::BIGINT AS condition_score,
       epoch(created_at)::BIGINT AS listing_created_epoch"""


def table_query(name: str) -> str:
    """The query of one feature table (DuckDB's dialect; the Spark engine translates it)."""
    if name == "listings":
        return _SQL[name].format(attrs=", ".join(_LISTING_COLUMNS))
    return _SQL[name].format(
        w=ITEM_PRIOR_WEIGHT if name == "item_stats" else USER_PRIOR_WEIGHT,
        wq=QUERY_PRIOR_WEIGHT,
        coec=COEC_PRIOR_CLICKS,
        retention=PAIR_RETENTION_DAYS,
        wb=BRAND_PRIOR_WEIGHT,
    )


def build_features(settings: Settings, *, options: BuildOptions | None = None, progress=None) -> dict:
    """Compute every feature table from ``data/raw`` into ``data/features``.

    Args:
        settings: where the raw data is and where the tables go.
        options: DuckDB memory limit and threads.
        progress: optional callable(table_name) called after each table is written.

    Returns a summary: rows per table, snapshot range, seconds.
    """
    options = options or BuildOptions()
    out_dir = settings.features_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir = settings.data_dir / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    con = _connect(options, tmp_dir)
    try:
        _load_raw(con, settings.raw_dir)
        con.execute(_SQL_SETUP)
        con.execute("CREATE TEMP VIEW lst AS SELECT item_id, created_at, sold_at, " + _LISTING_ATTRS + " FROM listings")
        summary: dict = {"tables": {}}
        for name in TABLES:
            sql = table_query(name)
            path = out_dir / f"{name}.parquet"
            tmp = out_dir / f".{name}.parquet.tmp"
            con.execute(f"COPY ({sql} ORDER BY event_timestamp) TO '{tmp}' (FORMAT parquet, COMPRESSION zstd)")
            tmp.replace(path)
            (rows,) = con.execute(f"SELECT count(*) FROM read_parquet('{path}')").fetchall()[0]
            summary["tables"][name] = {"rows": int(rows), "path": str(path)}
            if progress is not None:
                progress(name)
        _text_tables(con, out_dir, summary, progress)
        first, last = con.execute("SELECT min(snapshot_ts), max(snapshot_ts) FROM snapshots").fetchall()[0]
        summary["snapshots"] = {"first": str(first), "last": str(last)}
    finally:
        con.close()
    summary["seconds"] = round(time.perf_counter() - started, 2)
    return summary


def _text_tables(con, out_dir: Path, summary: dict, progress) -> None:
    """Title embeddings (issue 17): fitted here, written beside the tables (ranker/features/text.py)."""
    from ranker.features import text

    summary["text"] = text.build_text_tables(con, out_dir, retention_days=PAIR_RETENTION_DAYS)
    for name in text.TEXT_TABLES:
        summary["tables"][name] = {"rows": summary["text"]["rows"][name], "path": str(out_dir / f"{name}.parquet")}
        if progress is not None:
            progress(name)


def build_text_features(settings: Settings, *, options: BuildOptions | None = None, progress=None) -> dict:
    """Only the title-embedding tables, with DuckDB: what the Spark engine's build adds afterwards
    (the encoder is scikit-learn, fitted in one process). Returns the same summary shape."""
    options = options or BuildOptions()
    out_dir = settings.features_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir = settings.data_dir / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    con = _connect(options, tmp_dir)
    summary: dict = {"tables": {}}
    try:
        _load_raw(con, settings.raw_dir)
        con.execute(_SQL_SETUP)
        _text_tables(con, out_dir, summary, progress)
    finally:
        con.close()
    return summary


_LISTING_COLUMNS = (
    "seller_id",
    "category",
    "brand",
    "size",
    "title",
    "price",
    "discount_pct",
    "condition_score",
    "listing_created_epoch",
)

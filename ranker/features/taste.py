"""A user's taste for a price level, relative to each category's price level (issue 17).

The simulator's hidden utility scores a listing's price against the user's budget scaled by the
category's typical price, so "cheap for a coat" and "cheap for a top" are the same taste. A listing's
*price band* is the bucket of price / the category's median asking price at that day's snapshot
(``PRICE_BAND_EDGES``); the batch table ``user_price_band_stats`` counts, per user and band, the
impressions and clicks of the last 30 days, and the on-demand view ``user_price_band_features``
(:func:`ranker.features.transforms.user_price_band_features`) reads the candidate's band and returns the
user's click share and smoothed click-through lift in it.

Why five fixed columns per user and not a (user, band) entity like ``user_brand_fv``: a listing's band
moves with the category's daily price level, so it is not a listing attribute the scorer could read
as a join key before the lookup; five numeric columns are one hash per user (one read a request) and
no text-encoded map.
"""

from __future__ import annotations

# Upper edges of the bands on price / category median price (the quintiles of the demo catalogue):
# band 0 below 0.6, band 1 [0.6, 0.85), band 2 [0.85, 1.2), band 3 [1.2, 1.75), band 4 from 1.75.
PRICE_BAND_EDGES = (0.6, 0.85, 1.2, 1.75)
N_PRICE_BANDS = len(PRICE_BAND_EDGES) + 1
# A user's click-through rate in a band is smoothed towards the user's own rate with this many
# pseudo-impressions (as for brands).
BAND_PRIOR_WEIGHT = 10.0


def band_columns() -> list[str]:
    """The count columns of user_price_band_fv, impressions then clicks, in band order."""
    return [f"upb_impressions_{b}_30d" for b in range(N_PRICE_BANDS)] + [
        f"upb_clicks_{b}_30d" for b in range(N_PRICE_BANDS)
    ]


def _band_case(ratio: str) -> str:
    whens = " ".join(f"WHEN {ratio} < {edge} THEN {b}" for b, edge in enumerate(PRICE_BAND_EDGES))
    return f"CASE {whens} ELSE {N_PRICE_BANDS - 1} END"


def user_price_band_sql() -> str:
    """The query of user_price_band_stats (DuckDB; reads the build's ``ev``, ``category_price`` and
    ``snapshots`` tables). An event's band uses the category median of its own day's snapshot (listings
    live at that midnight), so a snapshot S sees only events of days before S, banded with prices known
    then. Rows for users with an impression or click in the last 32 days (``{retention}``): the zero row
    after the 30-day window empties reaches the online store."""
    daily = ",\n                   ".join(
        f"count(*) FILTER (WHERE event_type = '{kind}' AND band = {b}) AS {col}_{b}"
        for kind, col in (("impression", "imp"), ("click", "clk"))
        for b in range(N_PRICE_BANDS)
    )
    window = ",\n                   ".join(
        f"sum({col}_{b}) FILTER (WHERE d.day >= s.snapshot_ts - INTERVAL 30 DAY) AS {col}_{b}"
        for col in ("imp", "clk")
        for b in range(N_PRICE_BANDS)
    )
    out = ",\n               ".join(
        f"coalesce({col}_{b}, 0)::BIGINT AS {name}_{b}_30d"
        for col, name in (("imp", "upb_impressions"), ("clk", "upb_clicks"))
        for b in range(N_PRICE_BANDS)
    )
    return f"""
        WITH banded AS (
            SELECT e.user_id, e.day, e.event_type, {_band_case("e.price / cp.median_price")} AS band
            FROM ev e JOIN category_price cp ON cp.category = e.category AND cp.snapshot_ts = e.day
            WHERE e.event_type IN ('impression', 'click') AND e.price IS NOT NULL AND cp.median_price > 0),
        daily AS (
            SELECT user_id, day,
                   {daily}
            FROM banded GROUP BY ALL),
        win AS (
            SELECT d.user_id, s.snapshot_ts,
                   {window}
            FROM daily d JOIN snapshots s
              ON d.day < s.snapshot_ts AND d.day >= s.snapshot_ts - INTERVAL {{retention}} DAY
            GROUP BY ALL)
        SELECT user_id, snapshot_ts AS event_timestamp,
               {out}
        FROM win
    """


# A user's taste for a category, freed of exposure: clicks over the clicks the slots the category was
# shown in would get on average (COEC), relative to the same ratio over all the user's impressions. The
# smoothing adds this many expected clicks at the user's own ratio (about 14 impressions at a 7% CTR).
CATEGORY_PRIOR_EXPECTED_CLICKS = 1.0
# The user's click share of a category is shrunk towards the marketplace's share with this many clicks.
CATEGORY_PRIOR_CLICKS = 5.0


def user_category_taste_sql() -> str:
    """The query of user_category_taste_stats (DuckDB; the build's ``ev``, ``position_ctr`` and
    ``snapshots``): per (user, category) pair shown to the user in the last 32 days, the 30-day
    impressions, the COEC lift ``((clk + w * r) / (exp + w)) / r``, ``r`` = the user's clicks over
    expected clicks (empty when the user has no click), and the log of the user's click share shrunk
    towards the marketplace's, over the marketplace's: ``ln(((clk + ws * m) / (user_clk + ws)) / m)``,
    ``m`` = the category's share of all clicks in the window (empty when it has none)."""
    return """
        WITH daily AS (
            SELECT e.user_id, e.category, e.day,
                   count(*) FILTER (WHERE e.event_type = 'impression') AS imp,
                   coalesce(sum(p.ctr) FILTER (WHERE e.event_type = 'impression'), 0) AS exp_clk,
                   count(*) FILTER (WHERE e.event_type = 'click') AS clk
            FROM ev e LEFT JOIN position_ctr p USING (day, position)
            WHERE e.event_type IN ('impression', 'click') AND e.category IS NOT NULL GROUP BY ALL),
        win AS (
            SELECT d.user_id, d.category, s.snapshot_ts,
                   sum(imp) FILTER (WHERE d.day >= s.snapshot_ts - INTERVAL 30 DAY) AS imp,
                   sum(exp_clk) FILTER (WHERE d.day >= s.snapshot_ts - INTERVAL 30 DAY) AS exp_clk,
                   sum(clk) FILTER (WHERE d.day >= s.snapshot_ts - INTERVAL 30 DAY) AS clk
            FROM daily d JOIN snapshots s
              ON d.day < s.snapshot_ts AND d.day >= s.snapshot_ts - INTERVAL {retention} DAY
            GROUP BY ALL),
        tot AS (
            SELECT user_id, snapshot_ts, sum(clk) AS user_clk, sum(clk) / nullif(sum(exp_clk), 0) AS ratio
            FROM win GROUP BY ALL),
        per_category AS (SELECT category, snapshot_ts, sum(clk) AS clk FROM win GROUP BY ALL),
        market AS (
            SELECT category, snapshot_ts, clk / nullif(sum(clk) OVER (PARTITION BY snapshot_ts), 0) AS share
            FROM per_category)
        SELECT user_id, category, snapshot_ts AS event_timestamp,
               coalesce(imp, 0)::BIGINT AS uct_impressions_30d,
               (CASE WHEN ratio > 0 THEN
                   ((coalesce(clk, 0) + {wc} * ratio) / (coalesce(exp_clk, 0) + {wc})) / ratio END)::FLOAT
                   AS uct_coec_lift_30d,
               (CASE WHEN share > 0 THEN
                   ln((coalesce(clk, 0) + {ws} * share) / (coalesce(user_clk, 0) + {ws}) / share) END)::FLOAT
                   AS uct_log_share_30d
        FROM win JOIN tot USING (user_id, snapshot_ts) LEFT JOIN market USING (category, snapshot_ts)
    """.replace("{wc}", str(CATEGORY_PRIOR_EXPECTED_CLICKS)).replace("{ws}", str(CATEGORY_PRIOR_CLICKS))

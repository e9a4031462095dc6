"""Compound-entity features: a user's taste for a category and a brand, a query's appetite for a category."""

from datetime import timedelta

from data_sources import query_category_source, user_brand_source, user_category_source
from entities import brand, category, query, user
from feast import FeatureView, Field
from feast.types import Float32, Int64

# Rows exist for pairs with engagement in the last 32 days (a zero row follows the last event out
# of the 30-day window), so an absent pair means "no engagement": default 0.
user_category_fv = FeatureView(
    name="user_category_fv",
    entities=[user, category],
    ttl=timedelta(days=1),
    source=user_category_source,
    online=True,
    description="A user's engagement with a category.",
    schema=[
        Field(
            name="uc_clicks_30d",
            dtype=Int64,
            description="User's clicks in the category, 30 days.",
            tags={"default": "0"},
        ),
        Field(
            name="uc_saves_30d",
            dtype=Int64,
            description="User's saves in the category, 30 days.",
            tags={"default": "0"},
        ),
        Field(
            name="uc_purchases_30d",
            dtype=Int64,
            description="User's purchases in the category, 30 days.",
            tags={"default": "0"},
        ),
        Field(
            name="uc_click_share_30d",
            dtype=Float32,
            description="Share of the user's clicks that went to the category, 30 days.",
            tags={"default": "0"},
        ),
    ],
)

query_category_fv = FeatureView(
    name="query_category_fv",
    entities=[query, category],
    ttl=timedelta(days=1),
    source=query_category_source,
    online=True,
    description="How searches for a query engage with a category.",
    schema=[
        Field(
            name="qc_impressions_30d",
            dtype=Int64,
            description="Listings of the category shown for the query, 30 days.",
            tags={"default": "0"},
        ),
        Field(name="qc_clicks_30d", dtype=Int64, description="Their clicks, 30 days.", tags={"default": "0"}),
        Field(name="qc_ctr_30d", dtype=Float32, description="Their click-through rate, smoothed."),
    ],
)

# A brand generalises across unique listings: the user's brand taste ranks a listing nobody has seen.
# Rows for pairs the user engaged with or searched for in the last 32 days (absent pair: counts 0).
# "monotone": the model's score never falls as the user's engagement with the brand grows.
user_brand_fv = FeatureView(
    name="user_brand_fv",
    entities=[user, brand],
    ttl=timedelta(days=1),
    source=user_brand_source,
    online=True,
    description="A user's engagement with a brand.",
    schema=[
        Field(
            name="ub_impressions_30d",
            dtype=Int64,
            description="Listings of the brand shown to the user, 30 days.",
            tags={"default": "0"},
        ),
        Field(
            name="ub_clicks_30d",
            dtype=Int64,
            description="User's clicks on the brand, 30 days.",
            tags={"default": "0", "monotone": "increasing"},
        ),
        Field(
            name="ub_saves_30d",
            dtype=Int64,
            description="User's saves of the brand, 30 days.",
            tags={"default": "0", "monotone": "increasing"},
        ),
        Field(
            name="ub_bag_or_buy_30d",
            dtype=Int64,
            description="User's add-to-bags and purchases of the brand, 30 days.",
            tags={"default": "0", "monotone": "increasing"},
        ),
        Field(
            name="ub_searches_30d",
            dtype=Int64,
            description="User's searches naming the brand (whole words), 30 days.",
            tags={"default": "0", "monotone": "increasing"},
        ),
        Field(
            name="ub_search_share_30d",
            dtype=Float32,
            description="Share of the user's brand-naming searches that named this brand, 30 days.",
            tags={"default": "0", "monotone": "increasing"},
        ),
        Field(
            name="ub_click_share_30d",
            dtype=Float32,
            description="Share of the user's clicks that went to the brand, 30 days.",
            tags={"default": "0", "monotone": "increasing"},
        ),
        Field(
            name="ub_ctr_lift_30d",
            dtype=Float32,
            description=(
                "User's click-through rate on the brand over the user's own rate, 30 days, smoothed with "
                "10 pseudo-impressions (1 = no preference)."
            ),
            tags={"monotone": "increasing"},
        ),
    ],
)

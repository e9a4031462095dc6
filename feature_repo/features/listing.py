"""Listing (item) features: attributes of the listing and its recent engagement."""

from datetime import timedelta

from data_sources import item_stats_source, listing_source
from entities import item
from feast import FeatureView, Field
from feast.types import Float32, Int64, String

# Attributes change rarely (a listing goes live, maybe sells): no TTL, the latest row holds.
listing_fv = FeatureView(
    name="listing_fv",
    entities=[item],
    ttl=timedelta(0),
    source=listing_source,
    online=True,
    description="Listing attributes and sold status.",
    schema=[
        Field(name="seller_id", dtype=String, description="Who sells it (lookup key for seller features)."),
        Field(name="category", dtype=String, description="Listing category (lookup key for affinities)."),
        Field(name="brand", dtype=String, description="Brand, lower case."),
        Field(name="size", dtype=String, description="Size label (XS..XL, 36..45, one size)."),
        Field(name="title", dtype=String, description="Seller's title, lower-case words."),
        Field(name="price", dtype=Float32, description="Asking price in EUR."),
        Field(name="discount_pct", dtype=Float32, description="1 - price / original retail price."),
        Field(name="condition_score", dtype=Int64, description="fair=1, good=2, very_good=3, new_with_tags=4."),
        Field(name="listing_created_epoch", dtype=Int64, description="When the listing went live (unix s)."),
        Field(name="is_sold", dtype=Int64, description="1 once the listing has sold; sold listings are never served."),
    ],
)

# Daily engagement snapshots (UTC midnight): the latest is always under a day old, so a one-day TTL
# keeps Feast's point-in-time join small without losing any row.
item_stats_fv = FeatureView(
    name="item_stats_fv",
    entities=[item],
    ttl=timedelta(days=1),
    source=item_stats_source,
    online=True,
    description="Windowed engagement of a listing, from events before the snapshot.",
    schema=[
        Field(name="item_impressions_1d", dtype=Int64, description="Times shown, last 1 day.", tags={"default": "0"}),
        Field(name="item_clicks_1d", dtype=Int64, description="Clicks, last 1 day.", tags={"default": "0"}),
        Field(name="item_impressions_7d", dtype=Int64, description="Times shown, last 7 days.", tags={"default": "0"}),
        Field(name="item_clicks_7d", dtype=Int64, description="Clicks, last 7 days.", tags={"default": "0"}),
        Field(name="item_saves_7d", dtype=Int64, description="Saves, last 7 days.", tags={"default": "0"}),
        Field(name="item_add_to_bag_7d", dtype=Int64, description="Add-to-bags, last 7 days.", tags={"default": "0"}),
        Field(
            name="item_ctr_1d",
            dtype=Float32,
            description="Click-through rate last 1 day, smoothed towards the marketplace CTR.",
        ),
        Field(
            name="item_ctr_7d",
            dtype=Float32,
            description="Click-through rate last 7 days, smoothed towards the marketplace CTR.",
        ),
        Field(name="item_save_rate_7d", dtype=Float32, description="Saves per impression last 7 days, smoothed."),
        Field(
            name="item_coec_7d",
            dtype=Float32,
            description="Clicks over expected clicks for the slots it was shown in, 7 days: appeal without position bias.",
        ),
    ],
)

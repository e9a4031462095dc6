"""User (buyer) features: activity, spend and price habits."""

from datetime import timedelta

from data_sources import user_size_source, user_stats_source
from entities import user
from feast import FeatureView, Field
from feast.types import Float32, Int64, String

# Daily snapshot for every registered user (zeros when inactive, so online and offline agree).
user_stats_fv = FeatureView(
    name="user_stats_fv",
    entities=[user],
    ttl=timedelta(days=1),
    source=user_stats_source,
    online=True,
    description="A buyer's recent activity and price habits.",
    schema=[
        Field(name="user_size", dtype=String, description="Clothing size from the profile."),
        Field(name="user_impressions_7d", dtype=Int64, description="Listings seen, last 7 days.", tags={"default": "0"}),
        Field(name="user_clicks_7d", dtype=Int64, description="Clicks, last 7 days.", tags={"default": "0"}),
        Field(name="user_clicks_30d", dtype=Int64, description="Clicks, last 30 days.", tags={"default": "0"}),
        Field(name="user_saves_30d", dtype=Int64, description="Saves, last 30 days.", tags={"default": "0"}),
        Field(name="user_purchases_30d", dtype=Int64, description="Purchases, last 30 days.", tags={"default": "0"}),
        Field(name="user_spend_30d", dtype=Float32, description="EUR spent, last 30 days.", tags={"default": "0"}),
        Field(name="user_ctr_30d", dtype=Float32, description="Click-through rate last 30 days, smoothed."),
        Field(
            name="user_median_click_price_30d",
            dtype=Float32,
            description="Median price of listings clicked in the last 30 days (the user's usual price).",
        ),
        Field(
            name="user_price_index_30d",
            dtype=Float32,
            description="Median of clicked price / the category's median price, 30 days (1 = typical spender).",
        ),
        Field(
            name="user_hours_since_last_click",
            dtype=Float32,
            description="Hours from the last click to the snapshot (empty if none in 30 days).",
        ),
    ],
)

# The sizes a user actually engages with (a quarter of profiles have no size, none has a shoe size).
# Rows for users with a sized engagement in the last 32 days.
user_size_fv = FeatureView(
    name="user_size_fv",
    entities=[user],
    ttl=timedelta(days=1),
    source=user_size_source,
    online=True,
    description="Sizes of the listings a user engaged with.",
    schema=[
        Field(
            name="user_clothing_size_30d",
            dtype=Float32,
            description=(
                "Mean clothing size engaged with, 30 days, on the scale XXS=-1, XS=0 .. XXL=5, weighted "
                "click 1, save 2, add-to-bag 3, purchase 4."
            ),
        ),
        Field(
            name="user_clothing_engaged_30d",
            dtype=Int64,
            description="Engagements with clothing in letter sizes, 30 days.",
            tags={"default": "0"},
        ),
        Field(
            name="user_shoe_size_30d",
            dtype=Float32,
            description="Mean numeric (shoe) size engaged with, 30 days, weighted as above.",
        ),
        Field(
            name="user_shoe_engaged_30d",
            dtype=Int64,
            description="Engagements with numerically sized listings, 30 days.",
            tags={"default": "0"},
        ),
    ],
)

"""User (buyer) features: activity, spend and price habits."""

from datetime import timedelta

from data_sources import user_stats_source
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

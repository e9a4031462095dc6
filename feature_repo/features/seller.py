"""Seller features: how much and how reliably a seller sells."""

from datetime import timedelta

from data_sources import seller_stats_source
from entities import seller
from feast import FeatureView, Field
from feast.types import Float32, Int64

seller_stats_fv = FeatureView(
    name="seller_stats_fv",
    entities=[seller],
    ttl=timedelta(days=1),
    source=seller_stats_source,
    online=True,
    description="A seller's sales and stock.",
    schema=[
        Field(name="seller_sales_30d", dtype=Int64, description="Listings sold, last 30 days.", tags={"default": "0"}),
        Field(
            name="seller_active_listings",
            dtype=Int64,
            description="Listings live at the snapshot.",
            tags={"default": "0"},
        ),
        Field(
            name="seller_sell_through_30d",
            dtype=Float32,
            description="Sales / (sales + active listings) over 30 days, smoothed.",
        ),
    ],
)

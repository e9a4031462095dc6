"""Category features: the price level and appetite of a whole category."""

from datetime import timedelta

from data_sources import category_stats_source
from entities import category
from feast import FeatureView, Field
from feast.types import Float32, Int64

# Daily snapshot for every category with live listings.
category_stats_fv = FeatureView(
    name="category_stats_fv",
    entities=[category],
    ttl=timedelta(days=1),
    source=category_stats_source,
    online=True,
    description="Price level and engagement of a category.",
    schema=[
        Field(name="category_median_price", dtype=Float32, description="Median asking price of live listings, EUR."),
        Field(name="category_live_listings", dtype=Int64, description="Live listings at the snapshot.", tags={"default": "0"}),
        Field(name="category_ctr_7d", dtype=Float32, description="Click-through rate of the category, 7 days."),
    ],
)

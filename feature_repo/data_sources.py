"""Where feature values come from: parquet tables written by `ranker features build` (paths are
relative to this folder), and request-time data that only exists when a ranking is asked for."""

from feast import Field, FileSource, PushSource, RequestSource
from feast.types import Int64, String

# Listing attributes: a row when the listing goes live and a row when it sells.
listing_source = FileSource(
    name="listing_source",
    path="../data/features/listings.parquet",
    timestamp_field="event_timestamp",
    description="Listing attributes and sold status, one row per change.",
)

# The marketplace can push a sale the moment it happens, so a sold listing disappears from ranked
# lists before the next batch run.
listing_status_push = PushSource(name="listing_status_push", batch_source=listing_source)

# Daily snapshots of windowed engagement aggregates, each computed from events strictly before
# its event_timestamp.
item_stats_source = FileSource(
    name="item_stats_source", path="../data/features/item_stats.parquet", timestamp_field="event_timestamp"
)
user_stats_source = FileSource(
    name="user_stats_source", path="../data/features/user_stats.parquet", timestamp_field="event_timestamp"
)
category_stats_source = FileSource(
    name="category_stats_source", path="../data/features/category_stats.parquet", timestamp_field="event_timestamp"
)
seller_stats_source = FileSource(
    name="seller_stats_source", path="../data/features/seller_stats.parquet", timestamp_field="event_timestamp"
)
user_category_source = FileSource(
    name="user_category_source",
    path="../data/features/user_category_stats.parquet",
    timestamp_field="event_timestamp",
)
query_category_source = FileSource(
    name="query_category_source",
    path="../data/features/query_category_stats.parquet",
    timestamp_field="event_timestamp",
)

# When the ranking is requested (unix seconds): listing age is computed against it.
request_time = RequestSource(name="request_time", schema=[Field(name="request_ts", dtype=Int64)])

# The raw search text of a search request, for query-title matching.
search_request = RequestSource(name="search_request", schema=[Field(name="query_text", dtype=String)])

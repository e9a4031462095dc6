"""Where feature values come from: parquet tables written by `ranker features build`, and
request-time data that only exists when a ranking is asked for.

The tables live in ``data/features/`` beside this folder (the platform home). Their paths are made
absolute when Feast imports this file (``feast apply``, ``ranker features apply``), so the registry
holds paths that resolve wherever the SDK or the CLI is later called from: a notebook in the
repository root, a job in another folder. Moving the home means applying again.
"""

from pathlib import Path

from feast import Field, FileSource, PushSource, RequestSource
from feast.data_format import ParquetFormat
from feast.types import Int64, String

# The home's feature tables: <home>/data/features/, <home> being the folder that holds feature_repo/.
FEATURE_TABLES = Path(__file__).resolve().parent.parent / "data" / "features"

# Listing attributes: a row when the listing goes live and a row when it sells.
listing_source = FileSource(
    name="listing_source",
    path=str(FEATURE_TABLES / "listings.parquet"),
    timestamp_field="event_timestamp",
    description="Listing attributes and sold status, one row per change.",
)

# The marketplace can push a sale the moment it happens, so a sold listing disappears from ranked
# lists before the next batch run.
listing_status_push = PushSource(name="listing_status_push", batch_source=listing_source)

# Daily snapshots of windowed engagement aggregates, each computed from events strictly before
# its event_timestamp.
item_stats_source = FileSource(
    name="item_stats_source", path=str(FEATURE_TABLES / "item_stats.parquet"), timestamp_field="event_timestamp"
)
user_stats_source = FileSource(
    name="user_stats_source", path=str(FEATURE_TABLES / "user_stats.parquet"), timestamp_field="event_timestamp"
)
category_stats_source = FileSource(
    name="category_stats_source", path=str(FEATURE_TABLES / "category_stats.parquet"), timestamp_field="event_timestamp"
)
seller_stats_source = FileSource(
    name="seller_stats_source", path=str(FEATURE_TABLES / "seller_stats.parquet"), timestamp_field="event_timestamp"
)
user_category_source = FileSource(
    name="user_category_source",
    path=str(FEATURE_TABLES / "user_category_stats.parquet"),
    timestamp_field="event_timestamp",
)
query_category_source = FileSource(
    name="query_category_source",
    path=str(FEATURE_TABLES / "query_category_stats.parquet"),
    timestamp_field="event_timestamp",
)
user_brand_source = FileSource(
    name="user_brand_source",
    path=str(FEATURE_TABLES / "user_brand_stats.parquet"),
    timestamp_field="event_timestamp",
)
user_size_source = FileSource(
    name="user_size_source", path=str(FEATURE_TABLES / "user_size_stats.parquet"), timestamp_field="event_timestamp"
)

# When the ranking is requested (unix seconds): listing age is computed against it.
request_time = RequestSource(name="request_time", schema=[Field(name="request_ts", dtype=Int64)])

# The raw search text of a search request, for query-title matching.
search_request = RequestSource(name="search_request", schema=[Field(name="query_text", dtype=String)])

# Real-time views (features/realtime.py): the stream writes the online store and appends the rows it
# wrote under realtime/<view>/; `ranker features build` writes there the backfill of the same rows from
# the event log (ranker/streaming/backfill.py). A directory of parquet files, read as one table; its
# ``created`` column breaks ties between rows of one entity at one event time (the later write wins).
REALTIME_TABLES = FEATURE_TABLES / "realtime"

item_realtime_source = FileSource(
    name="item_realtime_source",
    path=str(REALTIME_TABLES / "item_realtime_fv"),
    file_format=ParquetFormat(),
    timestamp_field="event_timestamp",
    created_timestamp_column="created",
    description="A listing's sliding-window engagement, one row per listing per event time.",
)
user_session_source = FileSource(
    name="user_session_source",
    path=str(REALTIME_TABLES / "user_session_fv"),
    file_format=ParquetFormat(),
    timestamp_field="event_timestamp",
    created_timestamp_column="created",
    description="A buyer's session signals, one row per user per event time.",
)
# The stream's entry points (the processor writes the online layout directly; the push sources declare
# that the views are stream-fed and give Feast's push API the same schema).
item_realtime_push = PushSource(name="item_realtime_push", batch_source=item_realtime_source)
user_session_push = PushSource(name="user_session_push", batch_source=user_session_source)

# Issue 17: a user's clicks per price band (ranker/features/taste.py) and title embeddings (ranker/features/text.py).
user_price_band_source = FileSource(
    name="user_price_band_source",
    path=str(FEATURE_TABLES / "user_price_band_stats.parquet"),
    timestamp_field="event_timestamp",
)
listing_text_source = FileSource(
    name="listing_text_source", path=str(FEATURE_TABLES / "listing_text.parquet"), timestamp_field="event_timestamp"
)
query_text_source = FileSource(
    name="query_text_source", path=str(FEATURE_TABLES / "query_text.parquet"), timestamp_field="event_timestamp"
)
user_text_source = FileSource(
    name="user_text_source", path=str(FEATURE_TABLES / "user_text.parquet"), timestamp_field="event_timestamp"
)
user_category_taste_source = FileSource(
    name="user_category_taste_source",
    path=str(FEATURE_TABLES / "user_category_taste_stats.parquet"),
    timestamp_field="event_timestamp",
)

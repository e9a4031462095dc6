"""Generic features: computable from any interaction log (imported or simulated), so a model can
be trained and served on data nobody here generated. "Interactions" are all engagement events
(click, save, add_to_bag, purchase); "shown" counts impressions where the log has them."""

from datetime import timedelta

from data_sources import FEATURE_TABLES
from entities import category, item, user
from feast import FeatureView, Field, FileSource
from feast.types import Float32, Int64

# Daily snapshots, each computed from events strictly before its event_timestamp; sparse: a row
# while the entity had an interaction in the last 32 days, so an absent entity means "none".
generic_item_stats_source = FileSource(
    name="generic_item_stats_source",
    path=str(FEATURE_TABLES / "generic_item_stats.parquet"),
    timestamp_field="event_timestamp",
)
generic_user_stats_source = FileSource(
    name="generic_user_stats_source",
    path=str(FEATURE_TABLES / "generic_user_stats.parquet"),
    timestamp_field="event_timestamp",
)
generic_user_category_source = FileSource(
    name="generic_user_category_source",
    path=str(FEATURE_TABLES / "generic_user_category_stats.parquet"),
    timestamp_field="event_timestamp",
)

# A listing's popularity and its trend, from interactions only (no listing attributes needed).
generic_item_stats_fv = FeatureView(
    name="generic_item_stats_fv",
    entities=[item],
    ttl=timedelta(days=1),
    source=generic_item_stats_source,
    online=True,
    description="Interaction counts, trend and recency of a listing, from any log.",
    schema=[
        Field(name="item_interactions_1d", dtype=Int64, description="Interactions, last 1 day.", tags={"default": "0"}),
        Field(name="item_interactions_7d", dtype=Int64, description="Interactions, last 7 days.", tags={"default": "0"}),
        Field(name="item_interactions_30d", dtype=Int64, description="Interactions, last 30 days.", tags={"default": "0"}),
        Field(
            name="item_interaction_users_30d",
            dtype=Int64,
            description="Distinct users who interacted, last 30 days.",
            tags={"default": "0"},
        ),
        Field(
            name="item_interaction_trend",
            dtype=Float32,
            description="(interactions last day + 1) / (daily mean of the last 7 days + 1): rising > 1 > falling.",
            tags={"default": "1"},
        ),
        Field(
            name="item_hours_since_last_interaction",
            dtype=Float32,
            description="Hours from the last interaction to the snapshot (empty if none in 32 days).",
        ),
        Field(name="item_shown_30d", dtype=Int64, description="Impressions, last 30 days (0 in logs without).", tags={"default": "0"}),
        Field(
            name="item_interaction_rate_30d",
            dtype=Float32,
            description="Interactions per impression, 30 days, smoothed towards the log's rate (empty without impressions).",
        ),
    ],
)

# A user's activity level and recency.
generic_user_stats_fv = FeatureView(
    name="generic_user_stats_fv",
    entities=[user],
    ttl=timedelta(days=1),
    source=generic_user_stats_source,
    online=True,
    description="Interaction counts and recency of a user, from any log.",
    schema=[
        Field(name="user_interactions_7d", dtype=Int64, description="Interactions, last 7 days.", tags={"default": "0"}),
        Field(name="user_interactions_30d", dtype=Int64, description="Interactions, last 30 days.", tags={"default": "0"}),
        Field(
            name="user_interaction_items_30d",
            dtype=Int64,
            description="Distinct listings interacted with, last 30 days.",
            tags={"default": "0"},
        ),
        Field(
            name="user_hours_since_last_interaction",
            dtype=Float32,
            description="Hours from the user's last interaction to the snapshot (empty if none in 32 days).",
        ),
        Field(name="user_shown_30d", dtype=Int64, description="Impressions seen, last 30 days.", tags={"default": "0"}),
    ],
)

# Taste: the user's interactions with the listing's category (rows only where listings have a
# known category; imports without item attributes leave it at its default 0).
generic_user_category_fv = FeatureView(
    name="generic_user_category_fv",
    entities=[user, category],
    ttl=timedelta(days=1),
    source=generic_user_category_source,
    online=True,
    description="A user's interactions with a category, from any log with item categories.",
    schema=[
        Field(
            name="uc_interactions_30d",
            dtype=Int64,
            description="User's interactions with the category, 30 days.",
            tags={"default": "0"},
        ),
        Field(
            name="uc_interaction_share_30d",
            dtype=Float32,
            description="Share of the user's interactions that went to the category, 30 days.",
            tags={"default": "0"},
        ),
    ],
)

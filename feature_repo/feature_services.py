"""Feature services are the model contracts: training asks Feast for a service by name, the model
card records it, and the scorer fetches the same service. Changing a model's inputs means a new
versioned service (v2), never an edit of a service a model in production was trained on."""

from feast import FeatureService
from feast.types import String
from features.affinity import query_category_fv, user_brand_fv, user_category_fv
from features.category import category_stats_fv
from features.coengagement import (
    coeng_item_popularity_fv,
    coeng_user_brand_fv,
    coeng_user_category_brand_fv,
    coeng_user_item_fv,
    coeng_user_seller_fv,
)
from features.generic import generic_item_stats_fv, generic_user_category_fv, generic_user_stats_fv
from features.listing import item_stats_fv, listing_fv
from features.realtime import item_realtime_fv, user_session_fv
from features.seller import seller_stats_fv
from features.taste import user_category_taste_fv
from features.user import user_stats_fv
from on_demand import (
    listing_request_features,
    query_listing_features,
    query_title_text_features,
    user_listing_features,
    user_price_band_features,
    user_size_features,
    user_title_text_features,
)

_user_numeric = [f.name for f in user_stats_fv.features if f.name != "user_size"]

_shared = [
    listing_fv[["price", "discount_pct", "condition_score"]],
    item_stats_fv,
    user_stats_fv[_user_numeric],
    seller_stats_fv,
    category_stats_fv,
    user_category_fv,
    listing_request_features,
    user_listing_features,
]

search_ranker_v1 = FeatureService(
    name="search_ranker_v1",
    features=[*_shared, query_category_fv, query_listing_features],
    description="Inputs of the search ranker, version 1.",
)

recs_ranker_v1 = FeatureService(
    name="recs_ranker_v1",
    features=_shared,
    description="Inputs of the recommendations ranker, version 1.",
)

# Version 3: taste that generalises to unique listings (issue 17) — the user's brands and the sizes
# the user engages with. (v2 is the real-time version.)
_taste = [user_brand_fv, user_size_features]

search_ranker_v3 = FeatureService(
    name="search_ranker_v3",
    features=[*_shared, query_category_fv, query_listing_features, *_taste],
    description="Inputs of the search ranker, version 3: v1 + brand and size taste.",
)

recs_ranker_v3 = FeatureService(
    name="recs_ranker_v3",
    features=[*_shared, *_taste],
    description="Inputs of the recommendations ranker, version 3: v1 + brand and size taste.",
)

# Version 4 (issue 17): v3 + the user's taste for the candidate's category net of exposure, for its price
# level relative to its category, and title-embedding similarity (to the search text; to the titles the
# user engaged with).
_signals = [user_category_taste_fv, user_price_band_features, user_title_text_features]

search_ranker_v4 = FeatureService(
    name="search_ranker_v4",
    features=[*_shared, query_category_fv, query_listing_features, *_taste, *_signals, query_title_text_features],
    description="Inputs of the search ranker, version 4: v3 + price-band taste and title similarity.",
)

recs_ranker_v4 = FeatureService(
    name="recs_ranker_v4",
    features=[*_shared, *_taste, *_signals],
    description="Inputs of the recommendations ranker, version 4: v3 + price-band taste and title similarity.",
)

# Works on any imported log (only user_id, item_id, timestamp are needed): interaction counts,
# recency and trend of the listing and the user, category taste where listings have categories,
# and the listing's age (time since it went live, or since its first event in the log).
generic_ranker_v1 = FeatureService(
    name="generic_ranker_v1",
    features=[generic_item_stats_fv, generic_user_stats_fv, generic_user_category_fv, listing_request_features],
    description="Inputs of a ranker trained on an imported log, version 1.",
)

# Version 2 adds the stream-fed views (features/realtime.py): the listing's last hour / day and first
# hours, the buyer's session. The session's category and brand lists are strings, kept out of the model
# matrix (like user_size) until a numeric match feature uses them.
_realtime = [
    item_realtime_fv,
    user_session_fv[[f.name for f in user_session_fv.features if f.dtype != String]],
]

search_ranker_v2 = FeatureService(
    name="search_ranker_v2",
    features=[*_shared, query_category_fv, query_listing_features, *_realtime],
    description="Inputs of the search ranker, version 2: version 1 and the real-time views.",
)

recs_ranker_v2 = FeatureService(
    name="recs_ranker_v2",
    features=[*_shared, *_realtime],
    description="Inputs of the recommendations ranker, version 2: version 1 and the real-time views.",
)

# Version 2 of the imported-log ranker (issue 17): version 1 plus co-engagement at the listing, brand,
# category x brand and seller levels, and all-time and 7-day popularity with percentiles (what the
# popularity baselines rank by). Not the stream-fed item_realtime_fv: its rows are written at each
# event's own time, so on sampled groups (rows at the engagement's timestamp) a positive's counts
# include the positive itself (measured: item_clicks_24h > 0 on 100% of positives, 14% of negatives).
generic_ranker_v2 = FeatureService(
    name="generic_ranker_v2",
    features=[
        generic_item_stats_fv,
        generic_user_stats_fv,
        generic_user_category_fv,
        listing_request_features,
        coeng_item_popularity_fv,
        coeng_user_item_fv,
        coeng_user_brand_fv,
        coeng_user_category_brand_fv,
        coeng_user_seller_fv,
    ],
    description="Inputs of a ranker trained on an imported log, version 2: v1 + co-engagement and popularity.",
)

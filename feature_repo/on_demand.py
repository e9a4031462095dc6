"""Request-time features, computed when a ranking is asked for (and, for training, at each
impression's timestamp).

The logic lives in `ranker.features.transforms`, shared with the scorer's fast path. Feast stores
each function's source and re-executes it, so the bodies import what they use. (Feast 0.67 rejects
descriptions on on-demand fields; the feature table of docs/concepts/feature-store.md documents them.)
"""

import pandas as pd
from data_sources import request_time, search_request
from feast import Field
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float32
from features.category import category_stats_fv
from features.listing import listing_fv
from features.taste import user_price_band_fv
from features.text import listing_text_fv, query_text_fv, user_text_fv
from features.user import user_size_fv, user_stats_fv


# Freshness: second-hand listings sell fast, young ones need exposure.
@on_demand_feature_view(
    sources=[listing_fv[["listing_created_epoch"]], request_time],
    schema=[Field(name="listing_age_hours", dtype=Float32)],
    description="listing_age_hours: hours between the listing going live and the request.",
)
def listing_request_features(inputs: pd.DataFrame) -> pd.DataFrame:
    from ranker.features import transforms

    return transforms.listing_request_features(inputs)


# How a listing fits this user: price habits and size.
@on_demand_feature_view(
    sources=[
        listing_fv[["price", "size"]],
        user_stats_fv[["user_median_click_price_30d", "user_price_index_30d", "user_size"]],
        category_stats_fv[["category_median_price"]],
    ],
    schema=[
        Field(name="price_vs_user_median", dtype=Float32),
        Field(name="price_index", dtype=Float32),
        Field(name="price_fit", dtype=Float32),
        Field(name="size_match", dtype=Float32),
    ],
    description=(
        "price_vs_user_median: price / the user's usual clicked price; price_index: price / the category's median; "
        "price_fit: |log(price_index / the user's price index)| (0 = the user's usual level); "
        "size_match: 1 if in the user's size."
    ),
)
def user_listing_features(inputs: pd.DataFrame) -> pd.DataFrame:
    from ranker.features import transforms

    return transforms.user_listing_features(inputs)


# Text relevance of a listing to the search query.
@on_demand_feature_view(
    sources=[listing_fv[["title"]], search_request],
    schema=[Field(name="query_title_match", dtype=Float32)],
    description="query_title_match: share of the query's words found in the listing title.",
)
def query_listing_features(inputs: pd.DataFrame) -> pd.DataFrame:
    from ranker.features import transforms

    return transforms.query_listing_features(inputs)


# Size fit from behaviour: a quarter of profiles have no size and no profile has a shoe size.
@on_demand_feature_view(
    sources=[listing_fv[["size"]], user_stats_fv[["user_size"]], user_size_fv],
    schema=[
        Field(name="size_gap_profile", dtype=Float32),
        Field(name="size_gap_engaged", dtype=Float32),
        Field(name="size_engaged_n", dtype=Float32),
    ],
    description=(
        "size_gap_profile: letter-size steps between the listing and the profile size; size_gap_engaged: "
        "distance from the user's mean engaged size of the same kind (letter steps or shoe sizes), 30 days; "
        "size_engaged_n: the user's engagements with listings sized like this one, 30 days."
    ),
)
def user_size_features(inputs: pd.DataFrame) -> pd.DataFrame:
    from ranker.features import transforms

    return transforms.user_size_features(inputs)


# The user's taste for the candidate's price level relative to its category (issue 17).
@on_demand_feature_view(
    sources=[listing_fv[["price"]], category_stats_fv[["category_median_price"]], user_price_band_fv],
    schema=[
        Field(name="price_band_clicks", dtype=Float32),
        Field(name="price_band_click_share", dtype=Float32),
        Field(name="price_band_ctr_lift", dtype=Float32),
    ],
    description=(
        "price_band_clicks: the user's clicks on listings in the candidate's price band (price / category median), "
        "30 days; price_band_click_share: their share of the user's clicks; price_band_ctr_lift: the user's "
        "click-through rate in the band over the user's own, smoothed (1 = no preference)."
    ),
)
def user_price_band_features(inputs: pd.DataFrame) -> pd.DataFrame:
    from ranker.features import transforms

    return transforms.user_price_band_features(inputs)


# Text similarity in the title embedding space (issue 17): no model runs on the request path.
@on_demand_feature_view(
    sources=[listing_text_fv, query_text_fv],
    schema=[Field(name="query_title_similarity", dtype=Float32)],
    description="query_title_similarity: cosine of the search text's and the title's embeddings.",
)
def query_title_text_features(inputs: pd.DataFrame) -> pd.DataFrame:
    from ranker.features import transforms

    return transforms.query_title_similarity(inputs)


@on_demand_feature_view(
    sources=[listing_text_fv, user_text_fv],
    schema=[Field(name="user_title_similarity", dtype=Float32)],
    description="user_title_similarity: cosine of the title's embedding and the user's engaged titles' mean, 30 days.",
)
def user_title_text_features(inputs: pd.DataFrame) -> pd.DataFrame:
    from ranker.features import transforms

    return transforms.user_title_similarity(inputs)

"""Co-engagement features: what the same users engage with together, from any interaction log
(issue 17). Computed by ranker/features/coengagement.py as of each daily snapshot from engagements
strictly before it (30-day window): per level (listing, brand, category x brand, seller) the user's
engagement share with the value and the co-engagement score of the candidate's value, i.e.
sum over the user's values a of share(a) x cosine(users of a, users of the candidate's value).
Listings are unique and sell once, so brand, category x brand and seller carry what generalises to
listings nobody engaged with yet; the listing level (item-kNN) covers listings with a history.
Rows are sparse (the user's values and the best co-engagement scores); absent means 0."""

from datetime import timedelta

from data_sources import FEATURE_TABLES
from entities import brand, category, item, seller, user
from feast import FeatureView, Field, FileSource
from feast.types import Float32, Int64


def _source(table: str) -> FileSource:
    return FileSource(
        name=f"{table}_source", path=str(FEATURE_TABLES / f"{table}.parquet"), timestamp_field="event_timestamp"
    )


def _zero(name: str, dtype, description: str) -> Field:
    return Field(name=name, dtype=dtype, description=description, tags={"default": "0"})


# All-time and recent popularity of a live listing: what the popularity baselines rank by, so the
# model can at least match them (percentiles compare listings across a changing catalogue).
coeng_item_popularity_fv = FeatureView(
    name="coeng_item_popularity_fv",
    entities=[item],
    ttl=timedelta(days=1),
    source=_source("coeng_item_popularity"),
    online=True,
    description="A live listing's engagements before the snapshot: all time, last 7 days, percentiles.",
    schema=[
        _zero("item_interactions_all", Int64, "Engagements with the listing, all time before the snapshot."),
        _zero("item_interaction_users_all", Int64, "Distinct users who engaged with the listing, all time."),
        _zero("item_interactions_7d_exact", Int64, "Engagements in the 7 days before the snapshot."),
        _zero("item_popularity_pct_all", Float32, "Share of live listings with fewer all-time engagements."),
        _zero("item_popularity_pct_7d", Float32, "Share of live listings with fewer engagements, last 7 days."),
    ],
)

# Item-kNN: how strongly the candidate listing is co-engaged with the listings the user engaged with.
coeng_user_item_fv = FeatureView(
    name="coeng_user_item_fv",
    entities=[user, item],
    ttl=timedelta(days=1),
    source=_source("coeng_user_item"),
    online=True,
    description="Co-visitation of a live listing with the user's listings (30 days; top 50 per user).",
    schema=[
        _zero("ui_coeng_30d", Float32, "Sum over the user's listings of their cosine with this listing."),
    ],
)

coeng_user_brand_fv = FeatureView(
    name="coeng_user_brand_fv",
    entities=[user, brand],
    ttl=timedelta(days=1),
    source=_source("coeng_user_brand"),
    online=True,
    description="The user's engagement with the listing's brand and the brand's co-engagement with the user's brands.",
    schema=[
        _zero("ubc_engagements_30d", Int64, "User's engagements with the brand, 30 days."),
        _zero("ubc_share_30d", Float32, "Share of the user's engagements that went to the brand, 30 days."),
        _zero("ubc_coeng_30d", Float32, "Sum over the user's other brands of share x cosine with this brand."),
    ],
)

coeng_user_category_brand_fv = FeatureView(
    name="coeng_user_category_brand_fv",
    entities=[user, category, brand],
    ttl=timedelta(days=1),
    source=_source("coeng_user_category_brand"),
    online=True,
    description="The same at the category x brand level (sneakers of one brand, dresses of another).",
    schema=[
        _zero("ucb_engagements_30d", Int64, "User's engagements with the category x brand, 30 days."),
        _zero("ucb_share_30d", Float32, "Share of the user's engagements, 30 days."),
        _zero("ucb_coeng_30d", Float32, "Sum over the user's other category x brands of share x cosine."),
    ],
)

coeng_user_seller_fv = FeatureView(
    name="coeng_user_seller_fv",
    entities=[user, seller],
    ttl=timedelta(days=1),
    source=_source("coeng_user_seller"),
    online=True,
    description="The user's engagement with the listing's seller and the seller's co-engagement with the user's sellers.",
    schema=[
        _zero("us_engagements_30d", Int64, "User's engagements with the seller's listings, 30 days."),
        _zero("us_share_30d", Float32, "Share of the user's engagements, 30 days."),
        _zero("us_coeng_30d", Float32, "Sum over the user's other sellers of share x cosine with this seller."),
    ],
)

"""A user's taste that generalises to unique listings (issue 17): the price level relative to the
category's (bands of price / category median; edges in ranker/features/taste.py) and the category
itself with the exposure taken out."""

from datetime import timedelta

from data_sources import user_category_taste_source, user_price_band_source
from entities import category, user
from feast import FeatureView, Field
from feast.types import Float32, Int64

_BANDS = range(5)  # ranker.features.taste.N_PRICE_BANDS

# Rows for users with an impression or click in the last 32 days (absent user: counts 0). The
# on-demand view user_price_band_features picks the candidate's band.
user_price_band_fv = FeatureView(
    name="user_price_band_fv",
    entities=[user],
    ttl=timedelta(days=1),
    source=user_price_band_source,
    online=True,
    description="A user's impressions and clicks per price band (price / the category's median), 30 days.",
    schema=[
        Field(
            name=f"upb_impressions_{b}_30d",
            dtype=Int64,
            description=f"Listings of price band {b} shown to the user, 30 days.",
            tags={"default": "0"},
        )
        for b in _BANDS
    ]
    + [
        Field(
            name=f"upb_clicks_{b}_30d",
            dtype=Int64,
            description=f"User's clicks on listings of price band {b}, 30 days.",
            tags={"default": "0"},
        )
        for b in _BANDS
    ],
)

# Rows for (user, category) pairs shown to the user in the last 32 days (absent pair: never shown).
# Click share (user_category_fv) mixes taste with what the user was shown; the lift divides it out.
user_category_taste_fv = FeatureView(
    name="user_category_taste_fv",
    entities=[user, category],
    ttl=timedelta(days=1),
    source=user_category_taste_source,
    online=True,
    description="A user's taste for a category net of exposure and position.",
    schema=[
        Field(
            name="uct_impressions_30d",
            dtype=Int64,
            description="Listings of the category shown to the user, 30 days.",
            tags={"default": "0"},
        ),
        Field(
            name="uct_coec_lift_30d",
            dtype=Float32,
            description=(
                "User's clicks over expected clicks (per-day CTR of the slots) in the category, over the same "
                "ratio on all the user's impressions, 30 days, smoothed with 1 expected click (1 = no preference)."
            ),
            tags={"monotone": "increasing"},
        ),
        Field(
            name="uct_log_share_30d",
            dtype=Float32,
            description=(
                "Log of the user's click share in the category, shrunk towards the marketplace's share with 5 "
                "clicks, over the marketplace's share, 30 days (0 = a typical taste for it)."
            ),
            tags={"monotone": "increasing"},
        ),
    ],
)

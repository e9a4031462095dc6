"""Title embeddings (TF-IDF word + character n-grams, truncated SVD; fitted in the batch build by
ranker/features/text.py): the listing's title, the search text, the titles a user engaged with."""

from datetime import timedelta

from data_sources import listing_text_source, query_text_source, user_text_source
from entities import item, query, user
from feast import FeatureView, Field
from feast.types import Float32

_DIM = range(16)  # ranker.features.text.TEXT_DIM

# A title does not change: one row per listing, no TTL.
listing_text_fv = FeatureView(
    name="listing_text_fv",
    entities=[item],
    ttl=timedelta(0),
    source=listing_text_source,
    online=True,
    description="The listing title's embedding (unit length).",
    schema=[Field(name=f"title_c{k}", dtype=Float32, description=f"Title embedding, component {k}.") for k in _DIM],
)

# One row per search text in the log, at the encoder's fit time; an unseen text has none.
query_text_fv = FeatureView(
    name="query_text_fv",
    entities=[query],
    ttl=timedelta(0),
    source=query_text_source,
    online=True,
    description="The search text's embedding (unit length), in the title space.",
    schema=[Field(name=f"query_c{k}", dtype=Float32, description=f"Query embedding, component {k}.") for k in _DIM],
)

# Daily snapshot of the last 30 days' engagements; an empty row follows once the window empties.
user_text_fv = FeatureView(
    name="user_text_fv",
    entities=[user],
    ttl=timedelta(days=1),
    source=user_text_source,
    online=True,
    description="Mean title embedding of the listings a user engaged with, 30 days (weighted click 1 .. purchase 4).",
    schema=[
        Field(name=f"user_title_c{k}", dtype=Float32, description=f"Engaged-title embedding, component {k}.")
        for k in _DIM
    ],
)

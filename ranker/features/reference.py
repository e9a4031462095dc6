"""A request's feature rows through the Feast SDK: the anchor the scorer's fast path
(:mod:`ranker.serving`) is tested and benchmarked against.

It also states the contract both follow: the entity rows of a request are ``user_id``, ``item_id``,
``seller_id``, ``category`` and ``brand`` of the listing (read from ``listing_fv``; empty strings for a listing
the store does not know, so its seller, category, brand and affinity features are missing and take their
defaults) and, for a search service, ``query`` (= the search text, "" when absent).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ranker.features.matrix import FeatureRows, feature_matrix

LISTING_VIEW = "listing_fv"
SOLD_FIELD = "is_sold"
LISTING_KEYS = ("seller_id", "category", "brand")  # join keys read from the listing (listing_fv field names)


def feast_reference(
    store: Any, spec: Any, *, user_id: str, item_ids: Sequence[str], query: str | None, request_ts: int
) -> FeatureRows:
    """The same rows through the Feast SDK: ``listing_fv`` lookups for seller and category, then
    ``get_online_features(features=<the service>)`` on the entity rows and ``feature_matrix``.
    The anchor of the exactness tests and the benchmark (slow: ~25 ms for 200 items)."""
    items = [str(i) for i in item_ids]
    n = len(items)
    names = tuple(spec.features)
    if n == 0:
        empty = np.zeros(0, dtype=bool)
        return FeatureRows(np.zeros((0, len(names)), np.float32), empty, empty.copy(), names)
    q = query or ""
    lookup = store.get_online_features(
        features=[f"{LISTING_VIEW}:{k}" for k in (*LISTING_KEYS, SOLD_FIELD)], entity_rows={"item_id": items}
    ).to_dict()
    is_sold = lookup[SOLD_FIELD]
    rows: dict = {"item_id": items}
    for key in spec.entity_keys:
        if key in LISTING_KEYS:
            rows[key] = [v if isinstance(v, str) else "" for v in lookup[key]]
        elif key == "user_id":
            rows[key] = [str(user_id)] * n
        elif key == "query":
            rows[key] = [q] * n
    if "request_ts" in spec.request_fields:
        rows["request_ts"] = [int(request_ts)] * n
    if "query_text" in spec.request_fields:
        rows["query_text"] = [q] * n
    frame = store.get_online_features(features=store.get_feature_service(spec.name), entity_rows=rows).to_df()
    return FeatureRows(
        matrix=feature_matrix(frame, spec),
        known=np.array([v is not None for v in is_sold], dtype=bool),
        sold=np.array([v == 1 for v in is_sold], dtype=bool),
        feature_names=names,
    )

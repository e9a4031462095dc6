"""The model's input matrix: Feast's feature values in the service's order, defaults applied, as
float32. Shared by training (:mod:`ranker.training.dataset`) and serving (:mod:`ranker.serving`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class FeatureRows:
    """Features of one request's candidates, in the request's item order."""

    matrix: np.ndarray  # float32 (len(item_ids), len(feature_names)), the service's order, defaults applied
    known: np.ndarray  # bool per item: the listing exists in the online store (listing_fv)
    sold: np.ndarray  # bool per item: listing_fv.is_sold == 1
    feature_names: tuple[str, ...]


def feature_matrix(frame: pd.DataFrame, spec: Any) -> np.ndarray:
    """The model's float32 input matrix in the service's feature order, defaults applied."""
    cols = []
    for name in spec.features:
        values = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        default = spec.defaults[name]
        if not np.isnan(default):
            values = np.where(np.isnan(values), default, values)
        cols.append(values.astype(np.float32))
    return np.column_stack(cols) if cols else np.empty((len(frame), 0), dtype=np.float32)

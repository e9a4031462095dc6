"""Training/serving skew: recompute every logged vector with Feast ``get_historical_features`` at
the logged request time and compare feature by feature.

Training sets are built with ``get_historical_features``; the scorer served what its online path
returned. For the same entity keys and the same time both must agree, so any difference is skew: a
transformation that differs between the paths, a materialization that lags the batch tables
(the online store serving yesterday's values), a default applied on one side only.

The entity rows are those the scorer used: ``user_id``, ``item_id``, the listing's ``seller_id`` and
``category`` (here from ``listing_fv`` as of the request time, as the scorer reads them online),
``query`` / ``query_text`` (the search text, "" when absent) and ``request_ts`` (the logged request
time, whole seconds). Defaults and the float32 cast are those of training
(:func:`ranker.training.dataset.feature_matrix`).

A value matches when both are missing, or ``|served - recomputed| <= atol + rtol * |recomputed|``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ranker.config import Settings
from ranker.errors import RankerError
from ranker.features.reference import LISTING_KEYS
from ranker.monitoring.servedlog import ServedFrame


@dataclass(frozen=True)
class SkewOptions:
    threshold: float = 0.01  # a feature whose mismatch rate is above this fails the check
    rtol: float = 1e-5
    atol: float = 1e-6
    max_rows: int = 20_000  # (request, item) rows recomputed per feature service (seeded sample)
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.threshold <= 1:
            raise RankerError(f"--threshold {self.threshold} must be within [0, 1] (a mismatch rate)")
        if self.rtol < 0 or self.atol < 0:
            raise RankerError("--rtol and --atol must be >= 0")
        if self.max_rows < 1:
            raise RankerError("--max-rows must be >= 1")


@dataclass
class FeatureSkew:
    feature: str
    feature_service: str
    rows: int
    mismatches: int
    max_abs_diff: float
    served_missing: int
    recomputed_missing: int
    example: dict = field(default_factory=dict)

    @property
    def mismatch_rate(self) -> float:
        return self.mismatches / self.rows if self.rows else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "feature_service": self.feature_service,
            "rows": self.rows,
            "mismatches": self.mismatches,
            "mismatch_rate": self.mismatch_rate,
            "max_abs_diff": None if not np.isfinite(self.max_abs_diff) else self.max_abs_diff,
            "served_missing": self.served_missing,
            "recomputed_missing": self.recomputed_missing,
            "example": self.example,
        }


def _entity_frame(frame: ServedFrame, rows: pd.DataFrame) -> pd.DataFrame:
    ts = pd.to_datetime(rows.request_ts, utc=True)
    query = rows["query"].fillna("").astype(object).to_numpy()
    return pd.DataFrame(
        {
            "user_id": rows.user_id.astype(object).to_numpy(),
            "item_id": rows.item_id.astype(object).to_numpy(),
            "event_timestamp": ts.to_numpy(),
            # whole unix seconds, as the scorer's feature path uses them (int(request_ts))
            "request_ts": ((ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64),
            "query": query,
            "query_text": query,
            "_row": np.arange(len(rows), dtype=np.int64),
        }
    )


def recompute(settings: Settings, frame: ServedFrame, rows: pd.DataFrame) -> np.ndarray:
    """Feast's point-in-time vectors of ``rows`` (logged rows of ``frame``) as float32, row-aligned."""
    from feast.errors import FeatureServiceNotFoundException

    from ranker.features.store import feature_store, in_feature_repo, service_spec
    from ranker.features.matrix import feature_matrix

    store = feature_store(settings)
    spec = service_spec(store, frame.feature_service)
    if tuple(spec.features) != tuple(frame.feature_names):
        raise RankerError(
            f"feature service {frame.feature_service!r} now lists other features than the logged vectors; "
            "a service a model was trained on must never change (add a new version instead)"
        )
    entity = _entity_frame(frame, rows)
    with in_feature_repo(settings.feature_repo):
        try:
            service = store.get_feature_service(frame.feature_service)
        except FeatureServiceNotFoundException:  # pragma: no cover - service_spec raised first
            raise
        keys = (
            store.get_historical_features(
                entity_df=entity[["item_id", "event_timestamp", "_row"]],
                features=[f"listing_fv:{k}" for k in LISTING_KEYS],
            )
            .to_df()
            .sort_values("_row")
        )
        for key in LISTING_KEYS:
            entity[key] = [v if isinstance(v, str) else "" for v in keys[key].to_numpy()]
        columns = ["user_id", "item_id", "event_timestamp", "_row", *LISTING_KEYS]
        columns += [c for c in ("query",) if c in spec.entity_keys]
        columns += [c for c in spec.request_fields if c in ("request_ts", "query_text")]
        result = store.get_historical_features(entity_df=entity[columns], features=service).to_df()
    result = result.sort_values("_row").reset_index(drop=True)
    if len(result) != len(rows):
        raise RankerError(f"Feast returned {len(result)} rows for {len(rows)} logged rows")
    return feature_matrix(result, spec)


def compare(
    frame: ServedFrame, served: np.ndarray, recomputed: np.ndarray, rows: pd.DataFrame, options: SkewOptions
) -> list[FeatureSkew]:
    """Per-feature mismatch counts of two row-aligned matrices."""
    out = []
    a = served.astype(np.float64)
    b = recomputed.astype(np.float64)
    a_nan, b_nan = np.isnan(a), np.isnan(b)
    with np.errstate(invalid="ignore"):
        diff = np.abs(a - b)
        close = diff <= options.atol + options.rtol * np.abs(b)
    match = (a_nan & b_nan) | (~a_nan & ~b_nan & close)
    for j, name in enumerate(frame.feature_names):
        bad = np.flatnonzero(~match[:, j])
        finite = diff[:, j][np.isfinite(diff[:, j])]
        largest = float(finite.max()) if len(finite) else 0.0
        if len(bad) and (a_nan[bad, j] != b_nan[bad, j]).any():
            largest = float("inf")  # one side missing: the difference is unbounded
        example = {}
        if len(bad):
            i = int(bad[np.argmax(np.nan_to_num(diff[bad, j], nan=np.inf))])
            example = {
                "request_id": str(rows.request_id.iloc[i]),
                "item_id": str(rows.item_id.iloc[i]),
                "served": None if a_nan[i, j] else float(a[i, j]),
                "recomputed": None if b_nan[i, j] else float(b[i, j]),
            }
        out.append(
            FeatureSkew(
                feature=name,
                feature_service=frame.feature_service,
                rows=len(a),
                mismatches=int(len(bad)),
                max_abs_diff=largest,
                served_missing=int(a_nan[:, j].sum()),
                recomputed_missing=int(b_nan[:, j].sum()),
                example=example,
            )
        )
    return out


def skew_report(settings: Settings, frames: list[ServedFrame], options: SkewOptions | None = None) -> dict[str, Any]:
    """Recompute and compare every feature service's logged rows; features listed worst first.

    Returns ``{"features": [FeatureSkew.to_dict() ...], "rows": compared rows, "threshold",
    "failed": [features above the threshold], "ok": bool}``.
    """
    options = options or SkewOptions()
    results: list[FeatureSkew] = []
    compared = 0
    requests = 0
    for frame in frames:
        rows = frame.rows
        idx = np.arange(len(rows))
        if len(idx) > options.max_rows:
            idx = np.sort(np.random.default_rng(options.seed).choice(len(idx), options.max_rows, replace=False))
        sample = rows.iloc[idx].reset_index(drop=True)
        recomputed = recompute(settings, frame, sample)
        results += compare(frame, frame.matrix[idx], recomputed, sample, options)
        compared += len(idx)
        requests += int(sample.request_id.nunique())
    results.sort(
        key=lambda r: (-r.mismatch_rate, -(r.max_abs_diff if np.isfinite(r.max_abs_diff) else 1e300), r.feature)
    )
    failed = list(dict.fromkeys(r.feature for r in results if r.mismatch_rate > options.threshold))
    return {
        "rows": compared,
        "requests": requests,
        "threshold": options.threshold,
        "rtol": options.rtol,
        "atol": options.atol,
        "features": [r.to_dict() for r in results],
        "failed": failed,
        "ok": not failed,
    }


def skew_table(report: dict[str, Any], *, top: int = 15) -> str:
    lines = [f"{'feature':<30} {'service':<18} {'mismatch':>9} {'max |diff|':>11}  example (served -> recomputed)"]
    for entry in report["features"][:top]:
        diff = entry["max_abs_diff"]
        ex = entry["example"]
        example = f"{ex.get('item_id')}: {ex.get('served')} -> {ex.get('recomputed')}" if ex else ""
        lines.append(
            f"{entry['feature']:<30} {entry['feature_service']:<18} {entry['mismatch_rate']:>8.2%} "
            f"{'inf' if diff is None else format(diff, '.4g'):>11}  {example}"
        )
    return "\n".join(lines)

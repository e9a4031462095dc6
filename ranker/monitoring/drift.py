"""Drift: population stability index (PSI) per feature between the training distribution recorded
in the model card and the vectors the scorer served in a window, plus the PSI of the scores.

``PSI = sum_b (served_b - train_b) * ln(served_b / train_b)`` over the card's bins: the training
split's deciles of the finite values (``feature_distributions[f].bin_edges``, each bin ``[lo, hi)``,
values beyond the outer edges counted in the outer bins) plus one bin for missing values. Empty
bins are floored at ``EPS`` so one empty bin does not make the index infinite. A feature that was
constant in training gets two bins: equal to that value, or not.

Scores: the reference is the model's own scores on a sample of its test split (the training set
the card names, rows after ``split.valid_end``), cut at its deciles; the served scores of that model
version are placed in them. When that training set is gone the score PSI is left out (``None``). Rules of thumb: < 0.1 stable, 0.1-0.25 moderate, > 0.25 a real shift (the default alert).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ranker.errors import RankerError
from ranker.monitoring.servedlog import ServedFrame

EPS = 1e-4


@dataclass(frozen=True)
class DriftOptions:
    threshold: float = 0.25  # feature PSI above this is drift
    score_threshold: float = 0.25  # score PSI above this is drift
    min_rows: int = 200  # fewer served rows for a model version: reported, not judged

    def __post_init__(self) -> None:
        if self.threshold <= 0 or self.score_threshold <= 0:
            raise RankerError("--threshold and --score-threshold must be > 0 (PSI)")
        if self.min_rows < 1:
            raise RankerError("--min-rows must be >= 1")


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """PSI of two probability vectors over the same bins (floored at EPS)."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), EPS)
    a = np.maximum(np.asarray(actual, dtype=np.float64), EPS)
    return float(np.sum((a - e) * np.log(a / e)))


def binned(distribution: dict, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(training fractions, served fractions) over the card's bins plus the missing bin."""
    values = np.asarray(values, dtype=np.float64)
    missing_rate = float(distribution.get("missing_rate", 0.0))
    finite = values[np.isfinite(values)]
    served_missing = 1.0 - len(finite) / len(values) if len(values) else 0.0
    edges = distribution.get("bin_edges")
    if not edges:  # never finite in training: only the missing bin
        return np.array([0.0, 1.0]), np.array([1.0 - served_missing, served_missing])
    edges = np.asarray(edges, dtype=np.float64)
    if len(edges) == 1:
        train = np.array([1.0, 0.0])
        counts = np.array([(finite == edges[0]).sum(), (finite != edges[0]).sum()], dtype=np.float64)
    else:
        train = np.asarray(distribution["bin_fractions"], dtype=np.float64)
        idx = np.searchsorted(edges[1:-1], finite, side="right")
        counts = np.bincount(idx, minlength=len(edges) - 1).astype(np.float64)
    served = counts / max(len(finite), 1)
    return (np.append(train * (1.0 - missing_rate), missing_rate),
            np.append(served * (1.0 - served_missing), served_missing))


def score_psi(reference: list[float] | np.ndarray, scores: np.ndarray, *, bins: int = 10) -> float | None:
    reference = np.asarray(reference, dtype=np.float64)
    reference = reference[np.isfinite(reference)]
    scores = np.asarray(scores, dtype=np.float64)
    scores = scores[np.isfinite(scores)]
    if len(reference) < bins or not len(scores):
        return None
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)))
    inner = edges[1:-1]
    ref = np.bincount(np.searchsorted(inner, reference, side="right"), minlength=len(inner) + 1) / len(reference)
    cur = np.bincount(np.searchsorted(inner, scores, side="right"), minlength=len(inner) + 1) / len(scores)
    return psi(ref, cur)


def reference_scores(registry: Any, name: str, version: str, card: dict, *, sample: int = 5000,
                     seed: int = 0) -> np.ndarray | None:
    """The model's scores on up to ``sample`` rows of its test split, or None when the training set
    file the card names is not readable here."""
    import pyarrow.parquet as pq

    path = (card.get("dataset") or {}).get("path")
    features = list(card.get("features") or [])
    if not path or not features:
        return None
    try:
        table = pq.read_table(path, columns=["event_timestamp", *features])
    except (OSError, ValueError, KeyError):
        return None
    ts = pd.to_datetime(table.column("event_timestamp").to_pandas(), utc=True)
    valid_end = (card.get("split") or {}).get("valid_end")
    rows = np.flatnonzero((ts >= pd.Timestamp(valid_end)).to_numpy()) if valid_end else np.arange(len(ts))
    if not len(rows):
        return None
    rows = np.sort(np.random.default_rng(seed).choice(rows, min(sample, len(rows)), replace=False))
    matrix = np.column_stack([table.column(f).to_numpy(zero_copy_only=False)[rows] for f in features]).astype(np.float32)
    booster = registry.fetch(name, version=version).booster()
    return booster.predict(matrix, num_threads=1)


def drift_report(frames: list[ServedFrame], cards: dict[tuple[str, str], dict],
                 options: DriftOptions | None = None,
                 score_references: dict[tuple[str, str], np.ndarray | None] | None = None) -> dict[str, Any]:
    """PSI per (model version, feature) and of the scores.

    Args:
        frames: the served window (from :func:`~ranker.monitoring.servedlog.read_served_log`).
        cards: ``(model_name, version) -> card`` for every version in the frames.
        score_references: ``(model_name, version) -> reference scores`` (:func:`reference_scores`).

    Returns ``{"models": [{"model_name", "version", "surface", "rows", "judged", "score_psi",
    "features": [{"feature", "psi", "train_missing", "served_missing", "train_mean", "served_mean"}
    ... worst first]} ...], "drifted": ["model:version:feature" ...], "ok": bool, thresholds}``.
    """
    options = options or DriftOptions()
    models = []
    drifted: list[str] = []
    for frame in frames:
        for (name, version), part in frame.rows.groupby(["model_name", "model_version"], sort=True):
            card = cards.get((name, version))
            if card is None:
                raise RankerError(f"no model card for {name} {version}: is RANKER_REGISTRY_URI the scorer's registry?")
            idx = part.index.to_numpy()
            matrix = frame.matrix[idx]
            dists = card.get("feature_distributions") or {}
            features = []
            for j, feature in enumerate(frame.feature_names):
                dist = dists.get(feature)
                if dist is None:
                    continue
                values = matrix[:, j].astype(np.float64)
                train, served = binned(dist, values)
                finite = values[np.isfinite(values)]
                features.append({
                    "feature": feature, "psi": psi(train, served),
                    "train_missing": float(dist.get("missing_rate", 0.0)),
                    "served_missing": float(1 - len(finite) / len(values)) if len(values) else 0.0,
                    "train_mean": dist.get("mean"), "served_mean": float(finite.mean()) if len(finite) else None,
                })
            features.sort(key=lambda f: -f["psi"])
            reference = (score_references or {}).get((name, version))
            s_psi = score_psi(reference, part.score.to_numpy()) if reference is not None else None
            judged = len(part) >= options.min_rows
            entry = {
                "model_name": name, "version": version, "surface": str(part.surface.iloc[0]),
                "feature_service": frame.feature_service, "rows": int(len(part)),
                "requests": int(part.request_id.nunique()), "judged": judged, "score_psi": s_psi,
                "features": features,
            }
            if judged:
                drifted += [f"{name}:{version}:{f['feature']}" for f in features if f["psi"] > options.threshold]
                if s_psi is not None and s_psi > options.score_threshold:
                    drifted.append(f"{name}:{version}:score")
            models.append(entry)
    return {"threshold": options.threshold, "score_threshold": options.score_threshold,
            "min_rows": options.min_rows, "models": models, "drifted": drifted, "ok": not drifted}


def drift_table(report: dict[str, Any], *, top: int = 10) -> str:
    lines = []
    for m in report["models"]:
        s = m["score_psi"]
        lines.append(f"{m['model_name']} {m['version']} ({m['rows']:,} rows, {m['requests']:,} requests"
                     f"{'' if m['judged'] else ', too few to judge'}): score PSI "
                     f"{'-' if s is None else format(s, '.3f')}")
        lines.append(f"  {'feature':<30} {'PSI':>7} {'train mean':>11} {'served mean':>12}")
        for f in m["features"][:top]:
            flag = "  DRIFT" if f["psi"] > report["threshold"] else ""
            tm = "-" if f["train_mean"] is None else format(f["train_mean"], ".4g")
            sm = "-" if f["served_mean"] is None else format(f["served_mean"], ".4g")
            lines.append(f"  {f['feature']:<30} {f['psi']:>7.3f} {tm:>11} {sm:>12}{flag}")
    return "\n".join(lines)


def cards_for(frames: list[ServedFrame], registry: Any) -> dict[tuple[str, str], dict]:
    """The registry's card of every model version found in the frames."""
    out = {}
    for frame in frames:
        for name, version in frame.rows[["model_name", "model_version"]].drop_duplicates().itertuples(index=False):
            out[(name, version)] = registry.card(name, version=version)
    return out



def materialization_times(settings: Any) -> dict[str, float]:
    """Feature view -> end of its newest materialization (unix s), from Feast's registry."""
    from ranker.features.store import feature_store

    out = {}
    for view in feature_store(settings).list_feature_views():
        end = getattr(view, "most_recent_end_time", None)
        if end is not None:
            out[view.name] = pd.Timestamp(end).timestamp() if pd.Timestamp(end).tzinfo else \
                pd.Timestamp(end).tz_localize("UTC").timestamp()
    return out

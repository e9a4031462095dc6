"""Drift: population stability index (PSI) per feature between the training distribution recorded
in the model card and the vectors the scorer served in a window, plus the PSI of the scores.

``PSI = sum_b (served_b - train_b) * ln(served_b / train_b)`` over the card's bins: the training
split's deciles of the finite values (``feature_distributions[f].bin_edges``, each bin ``[lo, hi)``,
values beyond the outer edges counted in the outer bins) plus one bin for missing values. Empty
bins are floored at ``EPS`` so one empty bin does not make the index infinite. A feature that was
constant in training gets two bins: equal to that value, or not.

Scores: the reference is the model's own scores on a sample of its test split (the training set
the card names, rows after ``split.valid_end``), cut at its deciles; the served scores of that model
version are placed in them. When that training set is gone the score PSI is left out (``None``).
Rules of thumb: < 0.1 stable, 0.1-0.25 moderate, > 0.25 a real shift (the default alert).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ranker.errors import RankerError
from ranker.monitoring.servedlog import ServedFrame

EPS = 1e-4


@dataclass(frozen=True)
class DriftOptions:
    """How drift is judged.

    Args:
        threshold: the PSI alert level of a feature without healthy history to calibrate on.
        score_threshold: score PSI above this is drift.
        min_rows: fewer served rows for a model version: reported, not judged.
        min_threshold: no feature alerts below this PSI (the rule of thumb's "stable" band).
        history_days: healthy consecutive-day pairs (the training set's last days) the thresholds come from.
        quantile: the quantile of the chi-square fitted to those day-to-day PSIs that is the top of the
            healthy range (see :meth:`HealthyBaseline.healthy_high`; 0.9999: about one false alarm in
            250 healthy days over 40 features).
        noise_quantile: the quantile of PSI's sampling distribution under no change (chi-square) that
            bounds the threshold from below for small windows.
        against_training: judge a model version against its training set (last day, else the card)
            when the served log holds no reference window. Off by default: the training rows are the
            logging policy's impressions, the served rows this scorer's candidates, so features that
            select what is shown (counts, CTRs, age) differ between them on a healthy day; without a
            served reference the PSIs are reported and nothing is judged (``unjudged_reason``).
    """

    threshold: float = 0.25
    score_threshold: float = 0.25
    min_rows: int = 200
    min_threshold: float = 0.1
    history_days: int = 7
    quantile: float = 0.9999
    noise_quantile: float = 0.9999
    against_training: bool = False

    def __post_init__(self) -> None:
        if self.threshold <= 0 or self.score_threshold <= 0 or self.min_threshold <= 0:
            raise RankerError("--threshold, --score-threshold and --min-threshold must be > 0 (PSI)")
        if self.min_rows < 1:
            raise RankerError("--min-rows must be >= 1")
        if self.history_days < 2:
            raise RankerError("--history-days must be >= 2")
        if not (0 < self.quantile <= 1 and 0 < self.noise_quantile < 1):
            raise RankerError("quantiles must be within (0, 1]")


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
    return (
        np.append(train * (1.0 - missing_rate), missing_rate),
        np.append(served * (1.0 - served_missing), served_missing),
    )


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


def reference_scores(
    registry: Any, name: str, version: str, card: dict, *, sample: int = 5000, seed: int = 0
) -> np.ndarray | None:
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
    matrix = np.column_stack([table.column(f).to_numpy(zero_copy_only=False)[rows] for f in features]).astype(
        np.float32
    )
    booster = registry.fetch(name, version=version).booster()
    return booster.predict(matrix, num_threads=1)


@dataclass(frozen=True, eq=False)
class HealthyBaseline:
    """A model's healthy history, from its training set cut into days over the card's bins.

    ``day_to_day[f]``: PSI between consecutive days (the last ``history_days`` pairs);
    ``last_day[f]``: the fractions of the most recent day (the like-with-like reference of a
    one-day serving window when the served log holds no earlier window); ``last_day_requests``."""

    days: tuple[str, ...]
    day_to_day: dict[str, list[float]]
    last_day: dict[str, np.ndarray]
    last_day_requests: int

    def healthy_high(self, feature: str, quantile: float) -> float | None:
        """The top of the feature's healthy range: the ``quantile`` of a scaled chi-square fitted to its
        day-to-day PSIs (median-matched), and never below the largest one seen.

        Why a fit: a week of history gives seven PSIs, and the empirical 99th percentile of seven
        values is their maximum, which a new healthy day exceeds with probability 1/8 per feature
        (about five false alarms a day over 40 features). PSI between two samples of one distribution
        is close to ``c * chi2(bins - 1)`` (``c`` absorbs the sample size and the repeated entities
        of a day); real day-to-day movement widens ``c``, which the median captures."""
        from scipy import stats

        values = self.day_to_day.get(feature)
        if not values:
            return None
        dof = max(int(np.count_nonzero(self.last_day[feature] > 0)) - 1, 1)
        scale = float(np.median(values)) / float(stats.chi2.median(dof))
        return max(float(np.max(values)), scale * float(stats.chi2.ppf(quantile, dof)))


def healthy_baseline(card: dict, *, history_days: int = 7) -> HealthyBaseline | None:
    """Day-to-day PSI per feature over the training set the card names (None when it is not readable
    here or spans fewer than three days)."""
    import pyarrow.parquet as pq

    path = (card.get("dataset") or {}).get("path")
    dists = card.get("feature_distributions") or {}
    features = [f for f in card.get("features") or [] if f in dists]
    if not path or not features:
        return None
    try:
        table = pq.read_table(path, columns=["event_timestamp", "request_id", *features])
    except (OSError, ValueError, KeyError):
        return None
    ts = pd.to_datetime(table.column("event_timestamp").to_pandas(), utc=True)
    day = ts.dt.floor("D").to_numpy()
    days = np.unique(day)
    if len(days) < 3:
        return None
    days = days[-(history_days + 1) :]
    rows_of = {d: np.flatnonzero(day == d) for d in days}
    requests = table.column("request_id").to_numpy(zero_copy_only=False)
    day_to_day: dict[str, list[float]] = {}
    last: dict[str, np.ndarray] = {}
    for feature in features:
        values = table.column(feature).to_numpy(zero_copy_only=False).astype(np.float64)
        hists = [binned(dists[feature], values[rows_of[d]])[1] for d in days]
        day_to_day[feature] = [psi(hists[i - 1], hists[i]) for i in range(1, len(hists))]
        last[feature] = hists[-1]
    return HealthyBaseline(
        tuple(str(pd.Timestamp(d).date()) for d in days),
        day_to_day,
        last,
        int(len(np.unique(requests[rows_of[days[-1]]]))),
    )


def noise_bound(bins: int, n_reference: int, n_current: int, quantile: float) -> float:
    """PSI that sampling alone exceeds with probability ``1 - quantile`` (no change): under no change
    ``PSI ~ chi2(bins - 1) * (1/n_ref + 1/n_cur)``; requests are the sample size (a request's items
    share its user's features)."""
    from scipy import stats

    if n_reference < 1 or n_current < 1:
        return math.inf
    return float(stats.chi2.ppf(quantile, max(bins - 1, 1)) * (1 / n_reference + 1 / n_current))


NO_REFERENCE = (
    "no like-with-like reference: the served log holds no window --reference-offset earlier (or the "
    "--reference-since/--reference-until window is empty), and the training set is the logging policy's "
    "impressions, not this scorer's candidates; PSIs against it are shown, not judged "
    "(--against-training judges them anyway)"
)


def drift_report(
    frames: list[ServedFrame],
    cards: dict[tuple[str, str], dict],
    options: DriftOptions | None = None,
    score_references: dict[tuple[str, str], np.ndarray | None] | None = None,
    *,
    reference_frames: list[ServedFrame] | None = None,
    baselines: dict[tuple[str, str], HealthyBaseline | None] | None = None,
) -> dict[str, Any]:
    """PSI per (model version, feature) against a like-with-like reference, judged against each
    feature's own healthy range; and the PSI of the scores.

    The reference of a model version is the served ``reference_frames`` (a served window of the same
    length earlier: yesterday, or a week ago for the weekly cycle) when they hold ``min_rows`` of it,
    else the most recent day of its training set (``baselines``), else the card's whole training
    distribution; against the training set a version is judged only with ``options.against_training``
    (otherwise ``judged`` is false and ``unjudged_reason`` says why). A feature drifts when its PSI
    is above ``max(healthy_high, noise, min_threshold)``: ``healthy_high`` is the ``quantile`` of its
    consecutive-day PSIs in the healthy history, ``noise`` the sampling bound of the two windows' sizes.
    Without history the fixed ``threshold`` applies.

    Args:
        frames: the served window (from :func:`~ranker.monitoring.servedlog.read_served_log`).
        cards: ``(model_name, version) -> card``; versions without a card are skipped and reported.
        score_references: ``(model_name, version) -> reference scores`` (:func:`reference_scores`).

    Returns ``{"models": [{"model_name", "version", "surface", "rows", "requests", "judged",
    "unjudged_reason", "reference", "score_psi", "features": [{"feature", "psi", "healthy_high", "noise_high",
    "threshold", "verdict", "psi_vs_training", "train_mean", "served_mean", ...} ... most drifted
    first]} ...], "drifted": ["model:version:feature" ...], "skipped_versions": [...], "ok": bool}``.
    """
    options = options or DriftOptions()
    baselines = baselines or {}
    models = []
    drifted: list[str] = []
    skipped: list[dict[str, Any]] = []
    references: dict[tuple[str, str], tuple[ServedFrame, np.ndarray]] = {}
    for ref in reference_frames or []:
        for key, part in ref.rows.groupby(["model_name", "model_version"], sort=True):
            if len(part) >= options.min_rows:
                references[(str(key[0]), str(key[1]))] = (ref, part.index.to_numpy())
    for frame in frames:
        for (name, version), part in frame.rows.groupby(["model_name", "model_version"], sort=True):
            card = cards.get((name, version))
            if card is None:
                skipped.append(
                    {
                        "model_name": name,
                        "version": version,
                        "feature_service": frame.feature_service,
                        "rows": int(len(part)),
                        "reason": "model version unknown to the registry",
                    }
                )
                continue
            idx = part.index.to_numpy()
            matrix = frame.matrix[idx]
            n_requests = int(part.request_id.nunique())
            dists = card.get("feature_distributions") or {}
            baseline = baselines.get((name, version))
            served_ref = references.get((name, version))
            if served_ref is not None:
                ref_frame, ref_idx = served_ref
                ref_requests = int(ref_frame.rows.loc[ref_idx].request_id.nunique())
                reference = f"served window ({len(ref_idx):,} rows, {ref_requests:,} requests)"
            elif baseline is not None:
                reference = f"training set's last day {baseline.days[-1]}"
                ref_requests = baseline.last_day_requests
            else:
                reference = "training distribution (model card)"
                ref_requests = int((card.get("dataset") or {}).get("groups") or 0)
            features = []
            for j, feature in enumerate(frame.feature_names):
                dist = dists.get(feature)
                if dist is None:
                    continue
                values = matrix[:, j].astype(np.float64)
                train, served = binned(dist, values)
                if served_ref is not None and feature in ref_frame.feature_names:
                    ref_values = ref_frame.matrix[ref_idx, ref_frame.feature_names.index(feature)].astype(np.float64)
                    expected = binned(dist, ref_values)[1]
                elif baseline is not None and feature in baseline.last_day:
                    expected = baseline.last_day[feature]
                else:
                    expected = train
                value = psi(expected, served)
                healthy = baseline.healthy_high(feature, options.quantile) if baseline is not None else None
                noise = noise_bound(len(served), ref_requests, n_requests, options.noise_quantile)
                if healthy is None:
                    threshold = options.threshold
                else:
                    threshold = max(healthy, options.min_threshold, noise if math.isfinite(noise) else 0.0)
                finite = values[np.isfinite(values)]
                features.append(
                    {
                        "feature": feature,
                        "psi": value,
                        "healthy_high": healthy,
                        "noise_high": noise if math.isfinite(noise) else None,
                        "threshold": threshold,
                        "verdict": "drift" if value > threshold else "ok",
                        "psi_vs_training": psi(train, served),
                        "train_missing": float(dist.get("missing_rate", 0.0)),
                        "served_missing": float(1 - len(finite) / len(values)) if len(values) else 0.0,
                        "train_mean": dist.get("mean"),
                        "served_mean": float(finite.mean()) if len(finite) else None,
                    }
                )
            unjudged = None
            if len(part) < options.min_rows:
                unjudged = f"too few rows to judge ({len(part):,} < --min-rows {options.min_rows:,})"
            elif served_ref is None and not options.against_training:
                unjudged = NO_REFERENCE
            if unjudged is not None:
                for f in features:
                    f["verdict"] = "unjudged"
            features.sort(key=lambda f: -f["psi"] / f["threshold"])
            scores_ref = (score_references or {}).get((name, version))
            s_psi = score_psi(scores_ref, part.score.to_numpy()) if scores_ref is not None else None
            judged = unjudged is None
            entry = {
                "model_name": name,
                "version": version,
                "surface": str(part.surface.iloc[0]),
                "feature_service": frame.feature_service,
                "rows": int(len(part)),
                "requests": n_requests,
                "judged": judged,
                "unjudged_reason": unjudged,
                "reference": reference,
                "calibrated": baseline is not None,
                "history_days": list(baseline.days) if baseline is not None else [],
                "score_psi": s_psi,
                "features": features,
            }
            if judged:
                drifted += [f"{name}:{version}:{f['feature']}" for f in features if f["verdict"] == "drift"]
                if s_psi is not None and s_psi > options.score_threshold:
                    drifted.append(f"{name}:{version}:score")
            models.append(entry)
    return {
        "threshold": options.threshold,
        "score_threshold": options.score_threshold,
        "min_threshold": options.min_threshold,
        "quantile": options.quantile,
        "min_rows": options.min_rows,
        "models": models,
        "drifted": drifted,
        "skipped_versions": skipped,
        "ok": not drifted,
    }


def drift_table(report: dict[str, Any], *, top: int = 10) -> str:
    """Per model version: the reference, then the most drifted features with PSI, healthy range and verdict."""
    lines = []
    for m in report["models"]:
        s = m["score_psi"]
        n_drift = sum(f["verdict"] == "drift" for f in m["features"])
        verdict = (
            f"not judged: {m.get('unjudged_reason') or 'too few rows'}"
            if not m["judged"]
            else ("no drift" if not n_drift else f"DRIFT in {n_drift} feature(s)")
        )
        lines.append(
            f"{m['model_name']} {m['version']} ({m['rows']:,} rows, {m['requests']:,} requests) vs "
            f"{m['reference']}: {verdict}; score PSI {'-' if s is None else format(s, '.3f')}"
        )
        lines.append(
            f"  {'feature':<30} {'PSI':>7} {'healthy range':>15} {'threshold':>9}  {'verdict':<7} "
            f"{'train mean':>11} {'served mean':>12}"
        )
        for f in m["features"][:top]:
            healthy = "-" if f["healthy_high"] is None else f"0-{f['healthy_high']:.3f}"
            tm = "-" if f["train_mean"] is None else format(f["train_mean"], ".4g")
            sm = "-" if f["served_mean"] is None else format(f["served_mean"], ".4g")
            lines.append(
                f"  {f['feature']:<30} {f['psi']:>7.3f} {healthy:>15} {f['threshold']:>9.3f}  "
                f"{f['verdict'].upper() if f['verdict'] == 'drift' else f['verdict']:<7} {tm:>11} {sm:>12}"
            )
    for s in report.get("skipped_versions", []):
        lines.append(f"skipped {s['rows']:,} rows of {s['model_name']} {s['version']}: {s['reason']}")
    return "\n".join(lines)


def cards_for(frames: list[ServedFrame], registry: Any) -> dict[tuple[str, str], dict]:
    """The registry's card of every model version found in the frames; versions the registry does
    not know (an old or foreign log part) are left out (the report names them as skipped)."""
    out = {}
    for frame in frames:
        for name, version in frame.rows[["model_name", "model_version"]].drop_duplicates().itertuples(index=False):
            try:
                out[(name, version)] = registry.card(name, version=version)
            except RankerError:
                continue
    return out


def materialization_times(settings: Any) -> dict[str, float]:
    """Feature view -> end of its newest materialization (unix s), from Feast's registry."""
    from ranker.features.store import feature_store

    out = {}
    for view in feature_store(settings).list_feature_views():
        end = getattr(view, "most_recent_end_time", None)
        if end is not None:
            out[view.name] = (
                pd.Timestamp(end).timestamp()
                if pd.Timestamp(end).tzinfo
                else pd.Timestamp(end).tz_localize("UTC").timestamp()
            )
    return out

"""Evidence for the promotion gate: the challenger and the champion scored on the challenger's
holdout, per request (the gate itself, :mod:`ranker.registry.gate`, is pure functions over it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ranker.config import Settings
from ranker.features.store import FeatureRepoError, feature_store, service_spec
from ranker.registry.gate import GateEvidence, measure_predict_ms
from ranker.training import metrics
from ranker.training.evaluate import (
    MIN_GATE_SLICE_REQUESTS,
    ModelArtefact,
    finite_or_none,
    holdout_frame,
    load_model,
    predict,
    slices_of,
)


def gate_evidence(settings: Settings, *, challenger_dir: Path, champion_dir: Path | None) -> GateEvidence:
    """Evidence for the registry's promotion gate: both models scored on the challenger's test
    requests (the most recent holdout), per request, in the same order."""
    challenger = load_model(challenger_dir)
    frame, _ = holdout_frame(settings, challenger)
    groups = metrics.encode_groups(frame.request_id.to_numpy())
    labels = frame.label.to_numpy()
    surface = challenger.card["surface"]

    def per_request(model: ModelArtefact) -> tuple[np.ndarray, dict]:
        scores = predict(model, frame)
        ndcg = metrics.per_group_metrics(groups, labels, scores, ks=(10,))["ndcg@10"]
        slices = {}
        for name, mask in slices_of(frame, surface).items():
            sub_groups = metrics.encode_groups(frame.request_id.to_numpy()[mask])
            values = metrics.per_group_metrics(sub_groups, labels[mask], scores[mask], ks=(10,))["ndcg@10"]
            if np.isfinite(values).sum() >= MIN_GATE_SLICE_REQUESTS:
                slices[name] = finite_or_none(float(np.nanmean(values)))
        return ndcg.to_numpy(dtype=np.float64), {k: v for k, v in slices.items() if v is not None}

    challenger_ndcg, challenger_slices = per_request(challenger)
    keep = np.isfinite(challenger_ndcg)
    champion_ndcg = champion_slices = None
    if champion_dir is not None:
        champion = load_model(champion_dir)
        champion_ndcg, champion_slices = per_request(champion)
        keep &= np.isfinite(champion_ndcg)
        champion_ndcg = champion_ndcg[keep]
    try:
        service_spec(feature_store(settings), challenger.card["feature_service"])
        exists = True
    except FeatureRepoError:
        exists = False
    return GateEvidence(
        challenger_ndcg=challenger_ndcg[keep],
        champion_ndcg=champion_ndcg,
        challenger_slice_ndcg=challenger_slices,
        champion_slice_ndcg=champion_slices,
        feature_service_exists=exists,
        predict_ms=measure_predict_ms(challenger.path / "model.txt"),
        feature_service=challenger.card["feature_service"],
    )

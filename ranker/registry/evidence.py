"""Evidence for the promotion gate: the challenger and the champion scored on the challenger's
holdout, per request (the gate itself, :mod:`ranker.registry.gate`, is pure functions over it).

Models trained on a log without impressions (a sampled-group training set, ``ranker dataset build
--negatives K``) are compared on the **full catalogue** instead: per test user, NDCG@10 over every
listing live at the challenger's test start (:mod:`ranker.training.catalogue`, the same seeded user
sample for both models), because the sampled groups' NDCG is inflated by easy negatives. The slice
check keeps the sampled groups' slices. Impression-based training sets (the simulator) are
unchanged: per request on the logged lists."""

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


def gate_evidence(
    settings: Settings,
    *,
    challenger_dir: Path,
    champion_dir: Path | None,
    catalogue_users: int | None = None,
    seed: int = 0,
) -> GateEvidence:
    """Evidence for the registry's promotion gate: both models scored on the challenger's test
    requests (the most recent holdout), per request, in the same order; for a sampled-group
    training set, per test user over the full catalogue (module docstring)."""
    challenger = load_model(challenger_dir)
    frame, manifest = holdout_frame(settings, challenger)
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
    champion = load_model(champion_dir) if champion_dir is not None else None
    if champion is not None:
        champion_ndcg, champion_slices = per_request(champion)
        keep &= np.isfinite(champion_ndcg)
        champion_ndcg = champion_ndcg[keep]
    basis = "sampled" if manifest.get("sampled_groups") else "requests"
    if manifest.get("sampled_groups"):
        challenger_ndcg, champion_ndcg = _full_catalogue_ndcg(
            settings, challenger, champion, users=catalogue_users, seed=seed
        )
        keep = np.ones(len(challenger_ndcg), dtype=bool)
        basis = "full_catalogue"
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
        basis=basis,
    )


def _full_catalogue_ndcg(
    settings: Settings, challenger: ModelArtefact, champion: ModelArtefact | None, *, users: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per test user NDCG@10 over the full catalogue at the challenger's test start, both models on
    the same users (those with a relevant candidate), in the same order."""
    from ranker.training import catalogue

    task = catalogue.catalogue_task(
        settings, challenger, users=catalogue.DEFAULT_USERS if users is None else users, seed=seed
    )
    models = [challenger] if champion is None else [challenger, champion]
    blocks = catalogue.score_models(settings, models, task)
    per_user = [catalogue.per_user_metrics(task, catalogue.scores_scorer(b))["ndcg@10"].to_numpy() for b in blocks]
    keep = np.all([np.isfinite(v) for v in per_user], axis=0)
    return per_user[0][keep], (per_user[1][keep] if champion is not None else None)

"""Offline evaluation of a trained ranker against baselines on the same test requests.

Rankers, each scoring every test impression:

* ``model``: the LightGBM model (float32 features in the card's order).
* ``random``: a seeded uniform score.
* ``popularity``: the listing's engagement events (click, save, add_to_bag, purchase) in the
  training window (before the split's ``train_end``).
* ``logged``: the order the user actually saw (``-position``).
* ``oracle`` (simulated data only): the hidden true utility.
* ``expected_oracle`` (simulated data only): the true utility without the impression's noise: the
  ceiling of any ranker; ``ceiling_fraction`` is the share of the random -> oracle gap it closes.

Metrics use graded click labels (NDCG@5/10/20, MRR, MAP, recall@10); on simulated data every
ranker is also scored against the hidden utility. Slices: the surface, new vs returning users
(no click in the 30 days before the request), requests with and without a query, and listings
younger than 48 h (each request restricted to its young listings). The model's NDCG@10
difference with each baseline gets a paired bootstrap 95% interval.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ranker.config import Settings
from ranker.data import schema
from ranker.errors import RankerError
from ranker.training import metrics
from ranker.training.dataset import load_dataset
from ranker.training.train import Split, request_time

BASELINES = ("random", "popularity", "logged", "oracle")
# Rankers that read the hidden utility: references, never baselines a model must beat.
ORACLES = ("oracle", "expected_oracle")
YOUNG_LISTING_HOURS = 48.0
SCORE_SAMPLE = 2000
# The gate compares slices only where they hold enough requests for a drop to mean something.
MIN_GATE_SLICE_REQUESTS = 200


class EvaluationError(RankerError):
    """A model cannot be evaluated as asked; the message says why and what to do."""


@dataclass(frozen=True)
class ModelArtefact:
    path: Path
    card: dict

    @property
    def features(self) -> list[str]:
        return list(self.card["features"])

    def booster(self):
        import lightgbm as lgb

        text = (self.path / "model.txt").read_bytes()
        actual = hashlib.sha256(text).hexdigest()
        if actual != self.card.get("model_sha256"):
            raise EvaluationError(
                f"{self.path / 'model.txt'} does not match its card (sha256 {actual[:12]}..., card says "
                f"{str(self.card.get('model_sha256'))[:12]}...): the model was changed after training"
            )
        return lgb.Booster(model_str=text.decode())


def load_model(model_dir: Path) -> ModelArtefact:
    model_dir = Path(model_dir)
    card_path = model_dir / "card.json"
    if not card_path.exists() or not (model_dir / "model.txt").exists():
        raise EvaluationError(f"{model_dir} is not a model folder (needs model.txt and card.json): run `ranker train`")
    try:
        card = json.loads(card_path.read_text())
    except json.JSONDecodeError as exc:
        raise EvaluationError(f"{card_path} is not valid JSON ({exc})") from None
    return ModelArtefact(model_dir, card)


def predict(model: ModelArtefact, frame: pd.DataFrame) -> np.ndarray:
    missing = [f for f in model.features if f not in frame.columns]
    if missing:
        raise EvaluationError(
            f"the evaluation data lacks {len(missing)} of the model's features ({', '.join(missing[:5])}...): "
            f"build a training set with --feature-service {model.card.get('feature_service')}"
        )
    matrix = frame[model.features].to_numpy(dtype=np.float32)
    return model.booster().predict(matrix, num_threads=2)


def holdout_frame(settings: Settings, model: ModelArtefact) -> tuple[pd.DataFrame, dict]:
    """The rows of the model's surface whose request started after the model's validation window."""
    df, manifest = load_dataset(settings, model.card["surface"])
    split = Split.from_dict(model.card["split"])
    test = df[request_time(df) >= split.valid_end].reset_index(drop=True)
    if test.empty:
        raise EvaluationError(
            f"no {model.card['surface']} requests after {split.valid_end}: the training set holds no test window"
        )
    return test, manifest


def _popularity(settings: Settings, items: pd.Series, split: Split, window_start: str) -> np.ndarray:
    import duckdb

    path = settings.raw_dir / schema.EVENTS.file
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone='UTC'")
        counts = con.execute(
            f"""SELECT item_id, count(*) AS n FROM read_parquet('{path}')
                WHERE event_type <> 'impression' AND timestamp >= $start AND timestamp < $end GROUP BY item_id""",
            {"start": pd.Timestamp(window_start).to_pydatetime(), "end": split.train_end.to_pydatetime()},
        ).df()
    finally:
        con.close()
    return items.map(counts.set_index("item_id").n).fillna(0).to_numpy(dtype=np.float64)


def _utility(settings: Settings, frame: pd.DataFrame, column: str = "true_utility") -> np.ndarray | None:
    path = settings.ground_truth_dir / "utility.parquet"
    if not path.exists() or column not in pq.read_schema(path).names:
        return None
    truth = pd.read_parquet(path, columns=["request_id", "item_id", column])
    merged = frame[["request_id", "item_id"]].merge(truth, on=["request_id", "item_id"], how="left")
    values = merged[column].to_numpy(dtype=np.float64)
    return values if np.isfinite(values).all() else None


def score_rankers(settings: Settings, model: ModelArtefact, frame: pd.DataFrame, *, seed: int = 0) -> dict:
    """Scores of the model and every available baseline for each row of ``frame``."""
    split = Split.from_dict(model.card["split"])
    scores = {
        "model": predict(model, frame),
        "random": np.random.default_rng(seed).random(len(frame)),
        "popularity": _popularity(settings, frame.item_id, split, model.card["training_window"]["start"]),
    }
    if (frame.position.to_numpy() > 0).any():  # sampled groups (position 0) have no logged order
        scores["logged"] = -frame.position.to_numpy(dtype=np.float64)
    utility = _utility(settings, frame)
    if utility is not None:
        scores["oracle"] = utility
        # The ceiling a ranker can reach: it knows every hidden parameter but not the noise of the
        # impression (worlds simulated before the column existed have no such entry).
        expected = _utility(settings, frame, "expected_utility")
        if expected is not None:
            scores["expected_oracle"] = expected
    return scores


def slices_of(frame: pd.DataFrame, surface: str) -> dict[str, np.ndarray]:
    """Row masks of the evaluation slices."""
    has_query = frame["query"].astype(str).str.len().to_numpy() > 0
    masks = {f"surface={surface}": np.ones(len(frame), dtype=bool)}
    # the generic service (imported logs) counts interactions instead of clicks
    activity = next((c for c in ("user_clicks_30d", "user_interactions_30d") if c in frame.columns), None)
    if activity is not None:
        new_user = frame.groupby("request_id", sort=False)[activity].transform("max").fillna(0).to_numpy() == 0
        masks.update({"new_user": new_user, "returning_user": ~new_user})
    masks.update({"query": has_query, "no_query": ~has_query})
    if "listing_age_hours" in frame.columns:
        masks["listing_age<48h"] = frame.listing_age_hours.to_numpy(dtype=np.float64) < YOUNG_LISTING_HOURS
    return {k: v for k, v in masks.items() if v.any()}


def finite_or_none(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def evaluate_frame(
    frame: pd.DataFrame, scores: dict[str, np.ndarray], *, surface: str, n_boot: int = 1000, seed: int = 0
) -> tuple[dict, dict[str, pd.DataFrame]]:
    """Metrics of every ranker on ``frame``; returns the ``metrics`` dict and per-group tables."""
    groups = metrics.encode_groups(frame.request_id.to_numpy())
    labels = frame.label.to_numpy()
    per_group = {name: metrics.per_group_metrics(groups, labels, s) for name, s in scores.items()}
    out: dict = {"test": {name: metrics.mean_metrics(t) for name, t in per_group.items()}}
    slices: dict = {}
    for slice_name, mask in slices_of(frame, surface).items():
        sub = frame[mask]
        sub_groups = metrics.encode_groups(sub.request_id.to_numpy())
        slices[slice_name] = {}
        for name, s in scores.items():
            ndcg = metrics.per_group_metrics(sub_groups, sub.label.to_numpy(), s[mask], ks=(10,))["ndcg@10"]
            ci = metrics.bootstrap_mean_ci(ndcg.to_numpy(), n_boot=n_boot, seed=seed)
            slices[slice_name][name] = {
                "ndcg@10": finite_or_none(ci["mean"]),
                "low": finite_or_none(ci["low"]),
                "high": finite_or_none(ci["high"]),
                "groups": int(ci["n"]),
            }
    out["slices"] = slices
    out["ci"] = {}
    for name in scores:
        if name == "model":
            continue
        ci = metrics.paired_bootstrap_ci(
            per_group["model"]["ndcg@10"], per_group[name]["ndcg@10"], n_boot=n_boot, seed=seed
        )
        out["ci"][f"model-vs-{name}"] = {
            "metric": "ndcg@10",
            **{k: finite_or_none(v) if isinstance(v, float) else v for k, v in ci.items()},
        }
    if "oracle" in scores:
        utility = scores["oracle"]
        out["true_utility"] = {
            name: finite_or_none(float(metrics.graded_ndcg_against_utility(groups, utility, s, k=10).mean()))
            for name, s in scores.items()
        }
        out["oracle_fraction"] = finite_or_none(metrics.oracle_fraction(out["true_utility"]))
        if "expected_oracle" in out["true_utility"]:
            # What a ranker that knew every hidden parameter (not the impression's noise) would close.
            out["ceiling_fraction"] = finite_or_none(
                metrics.oracle_fraction(out["true_utility"], ranker="expected_oracle")
            )
        if out["true_utility"].get("oracle"):
            out["model_over_oracle"] = finite_or_none(out["true_utility"]["model"] / out["true_utility"]["oracle"])
    return out, per_group


def quality_bar(evaluation_metrics: dict) -> list[str]:
    """What keeps the model from beating every baseline (empty = it beats them all): on click
    NDCG@10 with the bootstrap interval of the difference above zero, and on the true utility."""
    problems = []
    for name, ci in evaluation_metrics["ci"].items():
        baseline = name.split("-vs-", 1)[1]
        if baseline in ORACLES:
            continue
        if not (ci.get("low") is not None and ci["low"] > 0):
            problems.append(
                f"click NDCG@10 vs {baseline}: diff {ci.get('diff')} CI [{ci.get('low')}, {ci.get('high')}]"
            )
    truth = evaluation_metrics.get("true_utility") or {}
    for name, value in truth.items():
        if name != "model" and name not in ORACLES and value is not None and truth["model"] <= value:
            problems.append(f"true-utility NDCG@10 vs {name}: {truth['model']:.4f} <= {value:.4f}")
    return problems


def evaluate_model(
    settings: Settings,
    model_dir: Path,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    write: bool = True,
    full_catalogue: bool | None = None,
    catalogue_users: int | None = None,
) -> dict:
    """Evaluate a model folder on its test window; store the result in its card and write
    ``report.html`` beside it. Returns the evaluation dict (see ``ranker.training.report``).

    ``full_catalogue``: also rank every listing live at the test window's start for a sample of
    ``catalogue_users`` test users (:mod:`ranker.training.catalogue`); default: when the training
    set is made of sampled groups (a log without impressions), where the sampled NDCG is inflated."""
    from ranker.training.catalogue import DEFAULT_USERS, evaluate_catalogue
    from ranker.training.report import write_report

    model = load_model(model_dir)
    frame, manifest = holdout_frame(settings, model)
    scores = score_rankers(settings, model, frame, seed=seed)
    result, per_group = evaluate_frame(frame, scores, surface=model.card["surface"], n_boot=n_boot, seed=seed)
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(frame), size=min(SCORE_SAMPLE, len(frame)), replace=False)
    evaluation = {
        "model": {k: model.card.get(k) for k in ("name", "version", "feature_service")},
        "metrics": result,
        "feature_importance": model.card.get("feature_importance", {}),
        "score_distributions": {name: [float(v) for v in s[sample]] for name, s in scores.items()},
        "ndcg_curve": {
            name: [
                finite_or_none(v) for v in metrics.ndcg_curve(frame.request_id.to_numpy(), frame.label.to_numpy(), s)
            ]
            for name, s in scores.items()
        },
        "test_window": {
            "rows": int(len(frame)),
            "requests": int(frame.request_id.nunique()),
            "dataset_fingerprint": manifest["fingerprint"],
            "same_dataset_as_training": manifest["fingerprint"] == model.card["dataset"]["fingerprint"],
        },
    }
    evaluation["metrics"]["quality_bar_failures"] = quality_bar(result)
    if full_catalogue is None:
        full_catalogue = bool(manifest.get("sampled_groups"))
    if full_catalogue:
        users = DEFAULT_USERS if catalogue_users is None else catalogue_users
        evaluation["full_catalogue"], _ = evaluate_catalogue(settings, model, users=users, seed=seed, n_boot=n_boot)
    if write:
        card = dict(model.card)
        card["metrics"] = evaluation["metrics"]
        card["evaluation"] = {"test_window": evaluation["test_window"], "report": "report.html"}
        if "full_catalogue" in evaluation:
            card["evaluation"]["full_catalogue"] = evaluation["full_catalogue"]
        (model.path / "card.json").write_text(json.dumps(card, indent=2, allow_nan=False, default=_json_default))
        write_report(evaluation, path=model.path / "report.html", title=f"{card['name']} {card['version']}")
    return evaluation


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")

"""LightGBM LambdaRank training with a time-based split and a model card.

Split: requests are ordered by time; the first ``train_share`` of the time span trains, the next
``valid_share`` drives early stopping on NDCG@10, the rest is the untouched test set. A request is
never split across sets. Training is deterministic (fixed seed, ``deterministic=true``, fixed
thread count, row-wise histograms), so the same inputs give a byte-identical ``model.txt``.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from ranker.config import Settings
from ranker.errors import RankerError
from ranker.surfaces import MODEL_NAMES
from ranker.training.dataset import SERVICES, load_dataset
from ranker.training.distributed import early_stopping_iteration, smoothed_curve


class TrainingError(RankerError):
    """Training cannot run on this data or with these options."""


@dataclass(frozen=True)
class TrainOptions:
    surface: str
    seed: int = 42
    num_threads: int = 2
    train_share: float = 0.7
    valid_share: float = 0.15
    num_boost_round: int = 400
    early_stopping_rounds: int = 40
    # Early stopping judges the validation NDCG@10 averaged over this many iterations (centred): the
    # raw curve of a few thousand noisy click lists peaks on noise, often within the first 10 trees
    # (measured on the demo world: best iterations 5-20, see docs/concepts/model-card.md).
    smoothing_rounds: int = 25
    position_debias: bool = False
    params: dict = field(default_factory=dict)  # overrides of DEFAULT_PARAMS
    # Sampled-group training sets (logs without impressions): early stopping on the full catalogue
    # (Recall@50) of the validation window for this many seeded users (ranker.training.catalogue);
    # 0 = on the sampled validation groups, whose NDCG@10 saturates after a tree or two.
    catalogue_validation_users: int = 200

    def __post_init__(self) -> None:
        if self.surface not in SERVICES:
            raise TrainingError(f"unknown surface {self.surface!r}; use one of {', '.join(SERVICES)}")
        if not (0 < self.train_share < 1 and 0 < self.valid_share < 1 and self.train_share + self.valid_share < 1):
            raise TrainingError("train and validation shares must be in (0, 1) and sum to less than 1")


DEFAULT_PARAMS = {
    "objective": "lambdarank",
    "metric": "ndcg",
    "eval_at": [10],
    "learning_rate": 0.03,
    # Engagement is sparse and noisy: small, regularised trees generalise better (measured on the
    # demo world: validation NDCG@10 0.43 vs 0.40 with 31 leaves / 50 rows per leaf).
    "num_leaves": 15,
    "min_data_in_leaf": 200,
    "lambda_l2": 10.0,
    "feature_fraction": 0.9,
    "lambdarank_truncation_level": 20,
    "verbosity": -1,
    "deterministic": True,
    "force_row_wise": True,
}


@dataclass(frozen=True)
class Split:
    train_end: pd.Timestamp
    valid_end: pd.Timestamp

    def assign(self, request_ts: pd.Series) -> np.ndarray:
        return np.where(request_ts < self.train_end, "train", np.where(request_ts < self.valid_end, "valid", "test"))

    def to_dict(self) -> dict:
        return {"train_end": self.train_end.isoformat(), "valid_end": self.valid_end.isoformat()}

    @classmethod
    def from_dict(cls, d: dict) -> "Split":
        return cls(pd.Timestamp(d["train_end"]), pd.Timestamp(d["valid_end"]))


def request_time(df: pd.DataFrame) -> pd.Series:
    """Each row's request start time (a request's impressions share it)."""
    return df.groupby("request_id", sort=False).event_timestamp.transform("min")


def time_split(df: pd.DataFrame, options: TrainOptions) -> Split:
    ts = request_time(df)
    lo, hi = ts.min(), ts.max()
    return Split(lo + (hi - lo) * options.train_share, lo + (hi - lo) * (options.train_share + options.valid_share))


def _groups(part: pd.DataFrame) -> np.ndarray:
    """Group sizes in row order (rows of a request are contiguous in the dataset)."""
    ids = part.request_id.to_numpy()
    change = np.flatnonzero(ids[1:] != ids[:-1]) + 1
    bounds = np.concatenate([[0], change, [len(ids)]])
    return np.diff(bounds)


def _with_positive(part: pd.DataFrame) -> pd.DataFrame:
    """Requests without any engagement give LambdaRank no gradient: drop them from fitting."""
    has_pos = part.groupby("request_id", sort=False).label.transform("max") > 0
    return part[has_pos]


def _distribution(values: np.ndarray) -> dict:
    """Quantile bins of one feature on the training split, for drift (PSI) later."""
    finite = values[np.isfinite(values)]
    summary: dict[str, float | list[float]] = {"missing_rate": float(1 - len(finite) / max(len(values), 1))}
    if len(finite):
        edges = np.unique(np.quantile(finite, np.linspace(0, 1, 11)))
        counts, _ = np.histogram(finite, bins=edges) if len(edges) > 1 else (np.array([len(finite)]), edges)
        summary.update(
            {
                "mean": float(finite.mean()),
                "std": float(finite.std()),
                "min": float(finite.min()),
                "max": float(finite.max()),
                "bin_edges": [float(e) for e in edges],
                "bin_fractions": [float(c) / len(finite) for c in counts],
            }
        )
    return summary


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).resolve().parent
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict:
    import feast
    import lightgbm
    import numpy
    import pandas
    import pyarrow

    return {
        "python": platform.python_version(),
        "lightgbm": lightgbm.__version__,
        "feast": feast.__version__,
        "numpy": numpy.__version__,
        "pandas": pandas.__version__,
        "pyarrow": pyarrow.__version__,
    }


def fitting_parts(df: pd.DataFrame, options: TrainOptions, split: Split) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The rows LightGBM fits on and validates with (requests with engagement) and its params."""
    parts = split.assign(request_time(df))
    train = _with_positive(df[parts == "train"])
    valid = _with_positive(df[parts == "valid"])
    if train.empty or valid.empty:
        raise TrainingError(
            f"the time split left {len(train)} training and {len(valid)} validation rows with engagement; "
            "build the training set over a longer window"
        )
    params = {**DEFAULT_PARAMS, **options.params, "seed": options.seed, "num_threads": options.num_threads}
    return train, valid, params


def fit(df: pd.DataFrame, features: list[str], options: TrainOptions, split: Split, *, catalogue=None):
    """Train on the split's train part with early stopping on its validation part (or, given a
    :class:`ranker.training.catalogue.CatalogueValidation`, on the validation window's full catalogue)."""
    import lightgbm as lgb

    train, valid, params = fitting_parts(df, options, split)

    def dataset(part, reference=None):
        kwargs = {"position": part.position.to_numpy() - 1} if options.position_debias else {}
        return lgb.Dataset(
            part[features].to_numpy(dtype=np.float32),
            label=part.label.to_numpy(),
            group=_groups(part),
            feature_name=list(features),
            reference=reference,
            free_raw_data=True,
            **kwargs,
        )

    dtrain = dataset(train)
    feval = None
    if catalogue is not None:
        params = {**params, "metric": "None"}
        dvalid = lgb.Dataset(
            catalogue.x, label=catalogue.label, feature_name=list(features), reference=dtrain, free_raw_data=True
        )
        feval = catalogue.feval
        valid_rows = len(catalogue.label)
    else:
        dvalid = dataset(valid, reference=dtrain)
        valid_rows = len(valid)
    curve: list[float] = []
    scores: list[dict] = []
    booster = lgb.train(
        params,
        dtrain,
        num_boost_round=options.num_boost_round,
        valid_sets=[dvalid],
        valid_names=["valid"],
        feval=feval,
        # the first metric only: ndcg@10 (built in), or the catalogue's recall@50 (its feval lists it first)
        callbacks=[_smoothed_early_stopping(curve, scores, options.early_stopping_rounds, options.smoothing_rounds)],
    )
    best = early_stopping_iteration(np.array(curve), options.early_stopping_rounds, options.smoothing_rounds)
    booster.best_iteration = best
    booster.best_score = {"valid": scores[best - 1]}
    return booster, params, {"train_rows": len(train), "valid_rows": valid_rows}


def _smoothed_early_stopping(curve: list[float], scores: list[dict], rounds: int, smoothing: int):
    """A LightGBM callback: records the first validation metric into ``curve`` (every metric into
    ``scores``) and stops once the smoothed curve's best iteration (among those whose whole window is
    known) is ``rounds`` old."""
    import lightgbm as lgb

    half = max(smoothing, 1) // 2

    def callback(env) -> None:
        curve.append(float(env.evaluation_result_list[0][2]))
        scores.append({name: float(value) for _, name, value, *_ in env.evaluation_result_list})
        known = len(curve) - half
        if known <= 0:
            return
        first = min(half, known - 1)
        smoothed = smoothed_curve(curve, smoothing)[first:known]
        best_i = first + int(np.argmax(smoothed))
        if known - 1 - best_i >= rounds:
            raise lgb.callback.EarlyStopException(best_i, env.evaluation_result_list)

    callback.order = 30  # type: ignore[attr-defined]
    return callback


def _catalogue_validation(settings: Settings, manifest: dict, features: list[str], options: TrainOptions, split: Split):
    """The full-catalogue validation of a sampled-group training set, and what the card says about
    the validation used (the sampled groups, with the reason, when it cannot be built)."""
    if not manifest.get("sampled_groups"):
        return None, {"basis": "requests"}
    if options.catalogue_validation_users <= 0:
        return None, {"basis": "sampled", "reason": "catalogue_validation_users is 0"}
    from ranker.training.catalogue import CatalogueError, catalogue_validation

    try:
        catalogue = catalogue_validation(
            settings,
            manifest["feature_service"],
            features,
            split,
            users=options.catalogue_validation_users,
            seed=options.seed,
        )
    except CatalogueError as exc:
        return None, {"basis": "sampled", "reason": str(exc)}
    return catalogue, catalogue.info()


def train_model(settings: Settings, options: TrainOptions, *, out_root: Path | None = None) -> Path:
    """Train the surface's ranker from its training set; returns the model version folder."""
    started = time.perf_counter()
    df, manifest = load_dataset(settings, options.surface)
    features = manifest["features"]
    monotone = manifest.get("feature_monotone") or {}
    if monotone and "monotone_constraints" not in options.params:
        # The declarations' "monotone" tags: e.g. more engagement with a brand never lowers a listing.
        constraints = [int(monotone.get(f, 0)) for f in features]
        options = replace(options, params={**options.params, "monotone_constraints": constraints})
    split = time_split(df, options)
    engine: dict = {"name": "local"}
    if settings.train_engine == "dask":
        from ranker.training.distributed import fit_dask

        if options.position_debias:
            raise TrainingError("--position-debias is not supported by the dask engine (lightgbm.dask); train locally")
        train, valid, params = fitting_parts(df, options, split)
        booster, engine = fit_dask(
            settings,
            train,
            valid,
            features,
            params=params,
            num_boost_round=options.num_boost_round,
            early_stopping_rounds=options.early_stopping_rounds,
            threads=options.num_threads,
            smoothing=options.smoothing_rounds,
        )
        sizes = {"train_rows": len(train), "valid_rows": len(valid)}
        validation = {"basis": "sampled" if manifest.get("sampled_groups") else "requests"}
    else:
        catalogue, validation = _catalogue_validation(settings, manifest, features, options, split)
        booster, params, sizes = fit(df, features, options, split, catalogue=catalogue)
    model_text = booster.model_to_string(num_iteration=booster.best_iteration)
    sha = hashlib.sha256(model_text.encode()).hexdigest()
    created = datetime.now(timezone.utc).replace(microsecond=0)
    name = MODEL_NAMES[options.surface]
    version = f"{created:%Y%m%dT%H%M%SZ}-{sha[:8]}"
    out = (out_root or settings.artifacts_dir / "models") / name / version
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.txt").write_text(model_text)
    parts = split.assign(request_time(df))
    train_part = df[parts == "train"]
    card = {
        "name": name,
        "version": version,
        "created_at": created.isoformat(),
        "surface": options.surface,
        "feature_service": manifest["feature_service"],
        "features": features,
        "feature_defaults": manifest["feature_defaults"],
        "training_window": manifest["window"],
        "split": split.to_dict(),
        "dataset": {
            "path": manifest["path"],
            "fingerprint": manifest["fingerprint"],
            "rows": manifest["rows"],
            "groups": manifest["groups"],
            "attribution_hours": manifest["attribution_hours"],
            "label": manifest["label"],
            # implicit feedback: groups are sampled negatives around each engagement, not logged lists
            "sampled_groups": manifest.get("sampled_groups"),
            "rows_by_split": {k: int((parts == k).sum()) for k in ("train", "valid", "test")},
            "groups_by_split": {k: int(df.request_id[parts == k].nunique()) for k in ("train", "valid", "test")},
            "fitted_rows": sizes,
        },
        "params": params,
        "training_engine": engine,
        "options": {k: v for k, v in asdict(options).items() if k != "params"},
        "best_iteration": int(booster.best_iteration),
        "valid_ndcg@10": float(booster.best_score["valid"]["ndcg@10"]),
        **(
            {"valid_recall@50": float(booster.best_score["valid"]["recall@50"])}
            if "recall@50" in booster.best_score["valid"]
            else {}
        ),
        # what valid_ndcg@10 and early stopping were measured on
        "validation": validation,
        "feature_distributions": {f: _distribution(train_part[f].to_numpy(dtype=np.float64)) for f in features},
        "feature_importance": dict(
            zip(
                features,
                (
                    float(v)
                    for v in booster.feature_importance(importance_type="gain", iteration=booster.best_iteration)
                ),
                strict=False,
            )
        ),
        "library_versions": _versions(),
        "git_commit": _git_commit(),
        "model_sha256": sha,
        "training_seconds": round(time.perf_counter() - started, 2),
        "metrics": {},
    }
    (out / "card.json").write_text(json.dumps(card, indent=2))
    return out

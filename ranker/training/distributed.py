"""LambdaRank training on a Dask cluster with ``lightgbm.dask`` (``ranker train`` with
``RANKER_TRAIN_ENGINE=dask``).

Same inputs, split, parameters and model card as :func:`ranker.training.train.fit`; what differs:

* **Partitions hold whole requests.** LightGBM's ranking objective needs every query group on one
  machine: the training rows are cut into one partition per worker on request boundaries, and the
  group sizes are partitioned like the rows (``group`` chunk *i* describes row chunk *i*).
* **Early stopping on the client.** ``DaskLGBMRanker`` does not support early stopping (each worker
  would judge its own share of the validation set and stop at a different round, which deadlocks the
  others). The cluster trains ``num_boost_round`` trees; the client then scores the validation set
  tree by tree and applies LightGBM's own rule (stop once the best validation NDCG@10 has not
  improved for ``early_stopping_rounds`` rounds; keep the best iteration). The model is cut at that
  iteration, as the single-process path does.
* Data-parallel trees are not bit-identical to single-process ones (histograms are summed over
  machines); quality is: ``tests/test_scale_out_training.py`` holds test NDCG@10 within 0.005.

A real cluster: ``RANKER_DASK_SCHEDULER=tcp://scheduler:8786``. Without it a ``LocalCluster`` of
``RANKER_DASK_WORKERS`` processes is started for the call and stopped after it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from ranker.config import Settings
from ranker.training import metrics


def partition_bounds(request_ids: np.ndarray, parts: int) -> list[tuple[int, int]]:
    """Row ranges ``[lo, hi)`` of about equal size that never split a request (ids contiguous)."""
    n = len(request_ids)
    if n == 0:
        return []
    starts = np.concatenate([[0], np.flatnonzero(request_ids[1:] != request_ids[:-1]) + 1])
    parts = max(1, min(parts, len(starts)))
    bounds: list[tuple[int, int]] = []
    lo = 0
    for i in range(1, parts):
        idx = int(np.searchsorted(starts, round(n * i / parts)))
        hi = int(starts[idx]) if idx < len(starts) else n
        if hi > lo:
            bounds.append((lo, hi))
            lo = hi
    bounds.append((lo, n))
    return bounds


@contextlib.contextmanager
def dask_client(settings: Settings, *, threads_per_worker: int) -> Iterator[Any]:
    """A client of the configured scheduler, or of a private LocalCluster closed on exit."""
    from distributed import Client, LocalCluster

    if settings.dask_scheduler:
        with Client(settings.dask_scheduler, timeout="30s") as client:
            yield client
        return
    with (
        LocalCluster(
            n_workers=settings.dask_workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=40,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def _group_sizes(request_ids: np.ndarray) -> np.ndarray:
    change = np.flatnonzero(request_ids[1:] != request_ids[:-1]) + 1
    return np.diff(np.concatenate([[0], change, [len(request_ids)]]))


def validation_curve(booster: Any, valid: pd.DataFrame, features: list[str]) -> np.ndarray:
    """Validation NDCG@10 after each tree (index 0 = after the first tree), scored on the client."""
    matrix = valid[features].to_numpy(dtype=np.float32)
    groups = metrics.encode_groups(valid.request_id.to_numpy())
    labels = valid.label.to_numpy()
    score = np.zeros(len(valid), dtype=np.float64)
    curve = np.empty(booster.num_trees(), dtype=np.float64)
    for i in range(booster.num_trees()):
        score += booster.predict(matrix, start_iteration=i, num_iteration=1, raw_score=True)
        curve[i] = float(np.nanmean(metrics.per_group_metrics(groups, labels, score, ks=(10,))["ndcg@10"]))
    return curve


def smoothed_curve(curve, window: int) -> np.ndarray:
    """The validation curve averaged over a centred window of ``window`` iterations (fewer at the
    ends). NDCG@10 of a few thousand noisy click lists jumps by more than a tree's improvement, so the
    raw maximum is often an early spike; the smoothed one is the plateau."""
    values = np.asarray(curve, dtype=np.float64)
    if window <= 1 or len(values) == 0:
        return values
    half = window // 2
    sums = np.concatenate([[0.0], np.cumsum(values)])
    lo = np.maximum(np.arange(len(values)) - half, 0)
    hi = np.minimum(np.arange(len(values)) + half + 1, len(values))
    return (sums[hi] - sums[lo]) / (hi - lo)


def early_stopping_iteration(curve: np.ndarray, rounds: int, smoothing: int = 1) -> int:
    """LightGBM's early-stopping rule on a validation curve smoothed over ``smoothing`` iterations
    (1 = LightGBM's own rule): the 1-based best iteration (strict improvement only), judged up to the
    round where ``rounds`` rounds passed without improvement."""
    smoothed = smoothed_curve(curve, smoothing)
    # iterations are judged once their whole window is known on the left (the first trees' partial
    # windows would lean towards a declining start)
    first = min(max(smoothing, 1) // 2, max(len(smoothed) - 1, 0))
    best, best_i = -np.inf, first
    for i, value in enumerate(smoothed[first:], start=first):
        if value > best:
            best, best_i = value, i
        elif i - best_i >= rounds:
            break
    return best_i + 1


def fit_dask(
    settings: Settings,
    train: pd.DataFrame,
    valid: pd.DataFrame,
    features: list[str],
    *,
    params: dict,
    num_boost_round: int,
    early_stopping_rounds: int,
    threads: int,
    smoothing: int = 1,
) -> tuple[Any, dict]:
    """Train on a Dask cluster; returns the booster cut at the best iteration and what ran where.

    ``train`` and ``valid`` are the engagement-bearing rows of each split, requests contiguous."""
    import dask.array as da
    import lightgbm as lgb

    workers = settings.dask_workers
    started = time.perf_counter()
    threads_per_worker = max(1, threads // workers)
    with dask_client(settings, threads_per_worker=threads_per_worker) as client:
        n_workers = len(client.scheduler_info()["workers"])
        request_ids = train.request_id.to_numpy()
        bounds = partition_bounds(request_ids, n_workers)
        # Partition i is placed on worker i (addresses sorted): LightGBM ranks the machines in the
        # order of the partitions, so the same data and cluster size give the same model.
        addresses = sorted(client.scheduler_info()["workers"])
        matrix = train[features].to_numpy(dtype=np.float32)
        labels = train.label.to_numpy()
        x_parts, y_parts, g_parts = [], [], []
        for i, (lo, hi) in enumerate(bounds):
            where = [addresses[i % len(addresses)]]
            sizes = _group_sizes(request_ids[lo:hi])
            x_parts.append(
                da.from_delayed(
                    client.scatter(matrix[lo:hi], workers=where), shape=(hi - lo, len(features)), dtype=np.float32
                )
            )
            y_parts.append(
                da.from_delayed(client.scatter(labels[lo:hi], workers=where), shape=(hi - lo,), dtype=labels.dtype)
            )
            g_parts.append(
                da.from_delayed(client.scatter(sizes, workers=where), shape=(len(sizes),), dtype=sizes.dtype)
            )
        X, y, group = da.concatenate(x_parts), da.concatenate(y_parts), da.concatenate(g_parts)
        # num_threads is set per worker by lightgbm.dask; the rest are the single-process params.
        dask_params = {k: v for k, v in params.items() if k not in ("num_threads", "metric", "eval_at")}
        model = lgb.DaskLGBMRanker(client=client, n_estimators=num_boost_round, **dask_params)
        model.fit(X, y, group=group, feature_name=list(features))
        booster = model.booster_
    trained = time.perf_counter()
    curve = validation_curve(booster, valid, features)
    best = early_stopping_iteration(curve, early_stopping_rounds, smoothing)
    booster.best_iteration = best
    booster.best_score = {"valid": {"ndcg@10": float(curve[best - 1])}}
    info = {
        "name": "dask",
        "scheduler": settings.dask_scheduler or f"LocalCluster({workers} workers x {threads_per_worker} threads)",
        "workers": n_workers,
        "partitions": len(bounds),
        "trees_trained": int(booster.num_trees()),
        "early_stopping": "on the client: validation NDCG@10 per tree, LightGBM's rule "
        f"({early_stopping_rounds} rounds without improvement)",
        "seconds_training": round(trained - started, 2),
        "seconds_per_tree": round((trained - started) / max(booster.num_trees(), 1), 4),
        "seconds_validation_curve": round(time.perf_counter() - trained, 2),
    }
    return booster, info

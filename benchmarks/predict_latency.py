"""Model inference latency for 50 / 200 / 1000 candidates: LightGBM `Booster.predict` (1 and 2
threads, the anchor) and the compiled trees (ranker.serving.trees, numba, 1 thread), interleaved
call by call in one run on fresh matrices, with the compiled scores checked bit for bit against
LightGBM's on every timed matrix.

By default it trains a synthetic LambdaRank model (fixed seed: 30 features, 300 trees, 31 leaves,
NaNs and zeros in the data); `--model` times a given LightGBM model.txt instead (matrices are then
drawn from a normal distribution with NaNs and zeros, in the model's feature count).

    .venv/bin/python benchmarks/predict_latency.py [--calls 300] [--model PATH]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

import _stack


def synthetic_model(seed: int = 0):
    """A 30-feature, 300-tree, 31-leaf LambdaRank model on graded synthetic queries (40 items each)."""
    import lightgbm as lgb

    rng = np.random.default_rng(seed)
    groups, per_group, n_features = 300, 40, 30
    X = features(rng, groups * per_group, n_features)
    utility = np.nan_to_num(X) @ rng.normal(size=n_features) + rng.normal(size=len(X))
    grades = np.digitize(utility, np.quantile(utility, [0.5, 0.8, 0.95]))
    params = {
        "objective": "lambdarank",
        "num_leaves": 31,
        "learning_rate": 0.05,
        "min_data_in_leaf": 5,
        "verbose": -1,
        "seed": seed,
        "num_threads": 2,
    }
    return lgb.train(params, lgb.Dataset(X, grades, group=[per_group] * groups), num_boost_round=300)


def features(rng: np.random.Generator, rows: int, n_features: int) -> np.ndarray:
    """float32 rows like the scorer's: mostly normal values, 5% NaN (missing), 5% exact zeros."""
    X = rng.normal(size=(rows, n_features)).astype(np.float32)
    X[rng.random(X.shape) < 0.05] = np.nan
    X[rng.random(X.shape) < 0.05] = 0.0
    return X


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300, help="Timed calls per size and predictor.")
    parser.add_argument("--sizes", type=int, nargs="*", default=[50, 200, 1000])
    parser.add_argument("--model", help="A LightGBM model.txt to time instead of the synthetic model.")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    import lightgbm as lgb

    from ranker.serving.trees import CompiledTrees, warm_up

    t0 = time.perf_counter()
    warm_up()
    warm_s = time.perf_counter() - t0
    if args.model:
        booster, what = lgb.Booster(model_file=args.model), args.model
    else:
        t0 = time.perf_counter()
        booster = synthetic_model()
        what = f"synthetic lambdarank (trained in {time.perf_counter() - t0:.1f} s)"
    t0 = time.perf_counter()
    compiled = CompiledTrees.from_booster(booster)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled.verify(booster)
    verify_s = time.perf_counter() - t0
    print(
        f"{what}: {compiled.num_trees} trees, {compiled.num_features} features, "
        f"{compiled.nodes.size // 4:,} nodes, mean depth {compiled.depths.mean():.1f}"
    )
    print(
        f"  load: warm_up {warm_s:.2f} s, compile {build_s * 1e3:.0f} ms, verify on boundary probe "
        f"{verify_s * 1e3:.0f} ms"
    )

    predictors = {
        "Booster.predict 1 thread": lambda m: booster.predict(m, num_threads=1),
        "Booster.predict 2 threads": lambda m: booster.predict(m, num_threads=2),
        "CompiledTrees.predict": compiled.predict,
    }
    rng = np.random.default_rng(1)
    warmup = 30
    for size in args.sizes:
        samples = {name: [] for name in predictors}
        mismatches = 0
        for i in range(args.calls + warmup):
            matrix = features(rng, size, compiled.num_features)
            names = list(predictors)
            names = names[i % 3 :] + names[: i % 3]  # rotate the order: machine noise hits all alike
            scores = {}
            for name in names:
                t0 = time.perf_counter()
                scores[name] = predictors[name](matrix)
                elapsed = (time.perf_counter() - t0) * 1e3
                if i >= warmup:
                    samples[name].append(elapsed)
            expected = scores["Booster.predict 1 thread"]
            mismatches += not np.array_equal(scores["CompiledTrees.predict"].view(np.uint64), expected.view(np.uint64))
        for name, values in samples.items():
            print(f"  {size:>5} rows  {name:<26} {_stack.summary(values)}")
        speedup = np.percentile(samples["Booster.predict 1 thread"], 50) / np.percentile(
            samples["CompiledTrees.predict"], 50
        )
        print(
            f"  {size:>5} rows  compiled p50 is {speedup:.1f}x faster than Booster.predict 1 thread; "
            f"bit-identical on {args.calls + warmup - mismatches} of {args.calls + warmup} matrices"
        )
        if mismatches:
            raise SystemExit(
                f"{mismatches} matrices scored differently: the compiled trees are not exact for this model"
            )
    print("caveat: a shared 2-core machine; compare the rows of this run, not numbers across runs")


if __name__ == "__main__":
    main()

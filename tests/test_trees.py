"""Compiled tree inference (ranker.serving.trees) against LightGBM itself, bit for bit.

Models are trained here (fixed seeds) on data with NaNs, zeros, tiny values and a constant column,
with zero_as_missing on and off, use_missing off, deep leaf-wise and shallow trees, one tree, a
single leaf, early stopping, and a NaN-versus-everything split (an infinite threshold). Each is
compared with ``Booster.predict(X, num_threads=1)`` on fresh matrices that hold NaN, +-inf, +-0,
values around kZeroThreshold, and every threshold of the model with its neighbouring doubles and
floats, as float64 and float32. Models the kernel cannot reproduce must be refused.
"""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

from ranker.errors import RankerError
from ranker.serving.trees import ZERO_THRESHOLD, CompiledTrees, UnsupportedModel, compile_verified, warm_up

N_FEATURES = 8
BASE = {"verbose": -1, "num_threads": 1, "seed": 7, "deterministic": True, "min_data_in_bin": 1}


# --- helpers -----------------------------------------------------------------------------------------


def _training_data(seed: int, n: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Features with NaNs, exact zeros, tiny values and a constant column; a target that uses them."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N_FEATURES))
    X[:, 1] = np.round(X[:, 1])  # many exact zeros
    X[rng.random(n) < 0.3, 2] = 0.0
    X[rng.random(n) < 0.05, 3] = rng.choice([ZERO_THRESHOLD, -ZERO_THRESHOLD, 1e-36, -1e-36, 1e-34], size=1)
    X[:, 5] = 4.0  # constant: never split on
    X[rng.random((n, N_FEATURES)) < 0.15] = np.nan
    clean = np.nan_to_num(X)
    y = clean[:, 0] + 0.7 * clean[:, 1] - 0.5 * (clean[:, 2] == 0) + np.isnan(X[:, 4]) + 0.3 * rng.normal(size=n)
    return X, y


def _grades(y: np.ndarray) -> np.ndarray:
    return np.digitize(y, np.quantile(y, [0.5, 0.75, 0.9])).astype(int)


def _regression(seed: int = 0, rounds: int = 40, **params) -> lgb.Booster:
    X, y = _training_data(seed)
    return lgb.train({**BASE, "objective": "regression", **params}, lgb.Dataset(X, y), num_boost_round=rounds)


def _lambdarank(seed: int = 0, rounds: int = 40, **params) -> lgb.Booster:
    X, y = _training_data(seed)
    data = lgb.Dataset(X, _grades(y), group=[40] * (len(y) // 40))
    return lgb.train({**BASE, "objective": "lambdarank", **params}, data, num_boost_round=rounds)


def _dump_thresholds(booster: lgb.Booster) -> dict[int, np.ndarray]:
    """Every split threshold of the model, per feature, read from dump_model (clamped at 1e300)."""
    found: dict[int, list[float]] = {}

    def walk(node: dict) -> None:
        if "split_index" in node:
            found.setdefault(node["split_feature"], []).append(node["threshold"])
            walk(node["left_child"])
            walk(node["right_child"])

    for tree in booster.dump_model()["tree_info"]:
        walk(tree["tree_structure"])
    return {f: np.unique(np.asarray(t, dtype=np.float64)) for f, t in found.items()}


def _fresh_matrix(booster: lgb.Booster, seed: int, n: int = 1500) -> np.ndarray:
    """Random rows, a third of the cells replaced by a threshold of that feature or a neighbour of
    one (next double, next float32 either side), a tenth by NaN / +-inf / +-0 / tiny values."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N_FEATURES)) * 1.5
    X[:, 1] = np.round(X[:, 1])
    for feature, t in _dump_thresholds(booster).items():
        with np.errstate(over="ignore"):  # 1e300 (a clamped inf) becomes inf
            t32 = t.astype(np.float32)
        boundary = np.concatenate(
            [
                t,
                np.nextafter(t, -np.inf),
                np.nextafter(t, np.inf),
                np.nextafter(t32, np.float32(-np.inf)),
                np.nextafter(t32, np.float32(np.inf)),
            ]
        )
        pick = rng.random(n) < 0.35
        X[pick, feature] = rng.choice(boundary, size=int(pick.sum()))
    special = np.array(
        [
            np.nan,
            np.inf,
            -np.inf,
            0.0,
            -0.0,
            ZERO_THRESHOLD,
            -ZERO_THRESHOLD,
            np.nextafter(ZERO_THRESHOLD, 1.0),
            -np.nextafter(ZERO_THRESHOLD, 1.0),
            1e-36,
            -1e-40,
        ]
    )
    pick = rng.random(X.shape) < 0.1
    X[pick] = rng.choice(special, size=int(pick.sum()))
    return X


def _assert_exact(compiled: CompiledTrees, booster: lgb.Booster, X: np.ndarray) -> None:
    """Same float64 scores bit for bit (0.0 vs -0.0 included), as float64 and float32 input."""
    with np.errstate(over="ignore"):
        as_float32 = X.astype(np.float32)
    for matrix in (X.astype(np.float64), as_float32):
        want = booster.predict(matrix, num_threads=1)
        got = compiled.predict(matrix)
        assert got.dtype == np.float64 and got.shape == want.shape == (len(X),)
        assert np.array_equal(got, want), f"{matrix.dtype}: {np.sum(got != want)} rows differ"
        np.testing.assert_array_equal(got.view(np.uint64), want.view(np.uint64))


# --- models ------------------------------------------------------------------------------------------

MODELS = {
    "regression": lambda: _regression(num_leaves=31),
    "regression zero_as_missing": lambda: _regression(seed=1, num_leaves=15, zero_as_missing=True),
    "regression use_missing=False": lambda: _regression(seed=2, num_leaves=15, use_missing=False),
    "lambdarank deep leaf-wise": lambda: _lambdarank(
        num_leaves=255, min_data_in_leaf=2, min_sum_hessian_in_leaf=0, rounds=15
    ),
    "lambdarank shallow": lambda: _lambdarank(seed=3, num_leaves=4, max_depth=2, rounds=120, learning_rate=0.3),
    "lambdarank stumps zero_as_missing": lambda: _lambdarank(seed=4, num_leaves=2, rounds=60, zero_as_missing=True),
    "one tree": lambda: _regression(seed=5, rounds=1, num_leaves=31),
}


@pytest.fixture(scope="module", autouse=True)
def _compiled_kernels():
    warm_up()


@pytest.mark.parametrize("name", list(MODELS))
def test_exact_against_lightgbm(name: str) -> None:
    booster = MODELS[name]()
    compiled = compile_verified(booster)
    assert compiled.num_trees == booster.num_trees() and compiled.num_features == N_FEATURES
    _assert_exact(compiled, booster, _fresh_matrix(booster, seed=11))
    _assert_exact(compiled, booster, _training_data(seed=99, n=333)[0])  # 333: a partial block of rows


def test_model_text_round_trip_and_infinite_threshold() -> None:
    """A NaN-versus-everything split is written with threshold inf (dump_model clamps it to 1e300):
    the scorer's booster, loaded from the model text, is compiled exactly, +inf inputs included."""
    X, y = _training_data(seed=6)
    y = np.isnan(X[:, 4]) * 3.0 + 0.01 * np.nan_to_num(X[:, 0])
    booster = lgb.train({**BASE, "objective": "regression", "num_leaves": 4}, lgb.Dataset(X, y), num_boost_round=5)
    text = booster.model_to_string()
    assert any(line.startswith("threshold=") and " inf" in f" {line[10:]}" for line in text.splitlines())
    loaded = lgb.Booster(model_str=text)
    compiled = compile_verified(loaded)
    _assert_exact(compiled, loaded, _fresh_matrix(loaded, seed=12))
    with pytest.raises(UnsupportedModel, match="clamped by dump_model"):
        CompiledTrees.from_dump(loaded.dump_model())


def test_single_leaf_model() -> None:
    X, y = _training_data(seed=7, n=200)
    booster = lgb.train(
        {**BASE, "objective": "regression", "min_data_in_leaf": 500}, lgb.Dataset(X, y), num_boost_round=3
    )
    assert booster.dump_model()["tree_info"][0]["num_leaves"] == 1
    compiled = compile_verified(booster)
    _assert_exact(compiled, booster, _fresh_matrix(booster, seed=13, n=40))
    assert np.all(compiled.predict(X) == booster.predict(X[:1])[0])


def test_best_iteration_is_used_like_predict() -> None:
    """After early stopping, Booster.predict uses best_iteration by default; so does the compiled model
    (keep_training_booster: otherwise lgb.train returns a booster that holds only the best trees)."""
    X, y = _training_data(seed=8)
    train, valid = lgb.Dataset(X[:1500], y[:1500]), lgb.Dataset(X[1500:], y[1500:])
    booster = lgb.train(
        {**BASE, "objective": "regression", "num_leaves": 63, "learning_rate": 0.3},
        train,
        num_boost_round=300,
        valid_sets=[valid],
        callbacks=[lgb.early_stopping(5, verbose=False)],
        keep_training_booster=True,
    )
    assert 0 < booster.best_iteration < booster.num_trees()
    compiled = compile_verified(booster)
    assert compiled.num_trees == booster.best_iteration
    _assert_exact(compiled, booster, _fresh_matrix(booster, seed=14))


def test_input_forms() -> None:
    booster = _regression(seed=9, rounds=10)
    compiled = CompiledTrees.from_booster(booster)
    assert compiled.predict(np.empty((0, N_FEATURES), dtype=np.float32)).shape == (0,)
    X = _fresh_matrix(booster, seed=15, n=100)
    wide = np.asfortranarray(X)
    assert np.array_equal(compiled.predict(wide), booster.predict(wide, num_threads=1))
    ints = np.round(np.nan_to_num(X, posinf=1e9, neginf=-1e9) * 3).astype(np.int64)  # LightGBM: to float32
    assert np.array_equal(compiled.predict(ints), booster.predict(ints, num_threads=1))
    with pytest.raises(ValueError, match="8 columns"):
        compiled.predict(X[:, :5])


def test_verify_rejects_a_model_that_is_not_exact() -> None:
    booster = _regression(seed=10, rounds=10)
    compiled = CompiledTrees.from_booster(booster)
    compiled.verify(booster)
    records = compiled.nodes.reshape(-1, 4)
    root = records[int(compiled.roots[0]) // 4]
    root[2], root[3] = root[3], root[2]  # swap the first tree's children
    with pytest.raises(UnsupportedModel, match="differ from LightGBM's raw scores"):
        compiled.verify(booster)


def test_objective_that_transforms_scores_is_rejected_by_verify() -> None:
    """Raw scores are exact, but the scorer's plain predict() gives probabilities for binary."""
    X, y = _training_data(seed=11)
    booster = lgb.train({**BASE, "objective": "binary"}, lgb.Dataset(X, y > 0.5), num_boost_round=10)
    compiled = CompiledTrees.from_booster(booster)
    probe = _fresh_matrix(booster, seed=16, n=200)
    assert np.array_equal(compiled.predict(probe), booster.predict(probe, raw_score=True, num_threads=1))
    with pytest.raises(UnsupportedModel, match="default output"):
        compiled.verify(booster)


@pytest.mark.parametrize("kind", ["categorical", "linear_tree", "multiclass", "random forest"])
def test_unsupported_models_raise(kind: str) -> None:
    X, y = _training_data(seed=12, n=600)
    X[:, 6] = np.random.default_rng(0).integers(0, 6, size=len(X))
    params, data, match = {**BASE, "objective": "regression"}, lgb.Dataset(X, y), kind
    if kind == "categorical":
        y = y + (X[:, 6] % 2) * 3
        data = lgb.Dataset(X, y, categorical_feature=[6])
    elif kind == "linear_tree":
        params["linear_tree"] = True
        match = "linear"
    elif kind == "multiclass":
        params.update(objective="multiclass", num_class=3)
        data = lgb.Dataset(X, _grades(y) % 3)
        match = "3 classes"
    else:
        params.update(boosting="rf", bagging_fraction=0.5, bagging_freq=1)
        match = "random forest"
    booster = lgb.train(params, data, num_boost_round=5)
    with pytest.raises(UnsupportedModel, match=match) as raised:
        CompiledTrees.from_booster(booster)
    assert isinstance(raised.value, RankerError) and "keeping LightGBM" in str(raised.value)

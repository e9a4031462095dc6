"""Ranking metrics: hand-computed cases, scikit-learn's tie-averaged NDCG, brute force over tie orders."""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import ndcg_score

from ranker.training.metrics import (
    bootstrap_mean_ci,
    encode_groups,
    graded_ndcg_against_utility,
    mean_metrics,
    ndcg_curve,
    oracle_fraction,
    paired_bootstrap_ci,
    per_group_metrics,
)

LOG2_3 = math.log2(3)


def one_group(label, score, **kwargs) -> pd.Series:
    return per_group_metrics(np.zeros(len(label), dtype=int), label, score, **kwargs).iloc[0]


# --------------------------------------------------------------------------------------------------
# Reference implementation: plain metrics of one strict ordering, averaged over every ordering of ties.


def _plain_metrics(labels_in_rank_order: np.ndarray, k: int, recall_at: int) -> dict[str, float]:
    gains = 2.0**labels_in_rank_order - 1
    discounts = 1 / np.log2(np.arange(len(gains)) + 2)
    ideal = np.sort(gains)[::-1]
    relevant = labels_in_rank_order > 0
    ranks = np.flatnonzero(relevant) + 1
    precision_at_hits = np.arange(1, len(ranks) + 1) / ranks
    return {
        f"ndcg@{k}": (gains[:k] @ discounts[:k]) / (ideal[:k] @ discounts[:k]),
        "mrr": 1 / ranks[0],
        "map": precision_at_hits.mean(),
        f"recall@{recall_at}": relevant[:recall_at].sum() / relevant.sum(),
    }


def _expected_over_ties(label: np.ndarray, score: np.ndarray, k: int, recall_at: int) -> dict[str, float]:
    """Average the plain metrics over all orderings that respect the score order (small groups only)."""
    levels = sorted(set(score.tolist()), reverse=True)
    blocks = [list(label[score == level]) for level in levels]
    totals: dict[str, float] = {}
    count = 0
    for combo in itertools.product(*(itertools.permutations(block) for block in blocks)):
        ordered = np.array([x for block in combo for x in block])
        for name, value in _plain_metrics(ordered, k, recall_at).items():
            totals[name] = totals.get(name, 0.0) + value
        count += 1
    return {name: value / count for name, value in totals.items()}


# --------------------------------------------------------------------------------------------------
# Hand-computed cases


def test_perfect_and_reversed_ranking_hand_computed():
    label = np.array([2, 1, 0])
    # Perfect order: gains 3, 1, 0 at ranks 1..3 -> DCG = 3/log2(2) + 1/log2(3) + 0 = 3.6309 = IDCG.
    perfect = one_group(label, [3.0, 2.0, 1.0], ks=(1, 3))
    assert perfect["ndcg@1"] == pytest.approx(1.0)
    assert perfect["ndcg@3"] == pytest.approx(1.0)
    assert perfect["mrr"] == 1.0
    assert perfect["map"] == pytest.approx(1.0)  # relevant at ranks 1, 2: (1/1 + 2/2) / 2
    assert perfect["recall@10"] == 1.0

    # Reversed: gains 0, 1, 3 -> DCG = 0 + 1/log2(3) + 3/log2(4) = 0.6309 + 1.5 = 2.1309.
    reversed_ = one_group(label, [1.0, 2.0, 3.0], ks=(1, 3), recall_at=1)
    idcg = 3 + 1 / LOG2_3
    assert reversed_["ndcg@3"] == pytest.approx((1 / LOG2_3 + 1.5) / idcg)  # 0.58688
    assert reversed_["ndcg@1"] == 0.0  # an irrelevant item on top
    assert reversed_["mrr"] == 0.5  # first relevant item at rank 2
    assert reversed_["map"] == pytest.approx((1 / 2 + 2 / 3) / 2)  # relevant at ranks 2 and 3
    assert reversed_["recall@1"] == 0.0
    assert reversed_["n_items"] == 3 and reversed_["n_relevant"] == 2


def test_ties_hand_computed():
    # Two tied items, one relevant: it is first or second with probability 1/2 each.
    row = one_group([1, 0], [5.0, 5.0], ks=(1, 2), recall_at=1)
    assert row["mrr"] == pytest.approx(0.5 * 1 + 0.5 * 1 / 2)  # 0.75
    assert row["map"] == pytest.approx(0.75)  # one relevant item: AP = reciprocal rank
    assert row["ndcg@2"] == pytest.approx(0.5 * (1 + 1 / LOG2_3))  # mean gain 1/2 x both discounts
    assert row["ndcg@1"] == pytest.approx(0.5)
    assert row["recall@1"] == pytest.approx(0.5)

    # Three tied items, two relevant. The irrelevant one is at rank 3, 2 or 1 (1/3 each):
    #   MRR: 1, 1, 1/2 -> 5/6;  AP: 1, (1 + 2/3)/2 = 5/6, (1/2 + 2/3)/2 = 7/12 -> 29/36.
    row = one_group([1, 1, 0], [0.0, 0.0, 0.0])
    assert row["mrr"] == pytest.approx(5 / 6)
    assert row["map"] == pytest.approx(29 / 36)

    # A tie below a strict leader: ranks 1 | 2,3 tied. The relevant tied item is at rank 2 or 3.
    row = one_group([0, 0, 2], [9.0, 1.0, 1.0], recall_at=2)
    assert row["mrr"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert row["recall@2"] == pytest.approx(0.5)


def test_group_without_relevant_item_is_nan_and_excluded_from_mean():
    group = ["a", "a", "b", "b", "b"]
    label = [1, 0, 0, 0, 0]
    score = [2.0, 1.0, 3.0, 2.0, 1.0]
    per_group = per_group_metrics(group, label, score)
    assert per_group.loc["a", "ndcg@10"] == 1.0
    assert per_group.loc["b"].drop(["n_items", "n_relevant"]).isna().all()
    means = mean_metrics(per_group)
    assert means["ndcg@10"] == 1.0 and means["mrr"] == 1.0  # only group a counts
    assert means["groups"] == 2 and means["groups_with_relevant"] == 1


def test_mean_metrics_with_no_relevant_group_at_all():
    means = mean_metrics(per_group_metrics([1, 1], [0, 0], [1.0, 2.0]))
    assert math.isnan(means["ndcg@10"]) and means["groups_with_relevant"] == 0


def test_k_larger_than_group_is_standard_truncation():
    label, score = [0, 3, 1], [0.3, 0.2, 0.1]
    row = one_group(label, score, ks=(3, 5, 20))
    # Order by score gives gains 0, 7, 1: DCG = 7/log2(3) + 1/2; IDCG = 7 + 1/log2(3).
    expected = (7 / LOG2_3 + 0.5) / (7 + 1 / LOG2_3)
    assert row["ndcg@3"] == pytest.approx(expected)
    assert row["ndcg@5"] == row["ndcg@3"] and row["ndcg@20"] == row["ndcg@3"]
    assert one_group([1, 2, 3], [1.0, 2.0, 3.0], ks=(20,))["ndcg@20"] == pytest.approx(1.0)


def test_small_cut_off_ignores_items_below_it():
    # Both the DCG and the ideal DCG stop at k: only the top item counts at k=1.
    row = one_group([4, 0, 4], [3.0, 2.0, 1.0], ks=(1, 2))
    assert row["ndcg@1"] == pytest.approx(1.0)
    assert row["ndcg@2"] == pytest.approx(15 / (15 + 15 / LOG2_3))


def test_mrr_map_recall_small_cases():
    # Labels in score order: 0, 0, 1, 0, 3 -> relevant at ranks 3 and 5.
    row = one_group([0, 0, 1, 0, 3], [5.0, 4.0, 3.0, 2.0, 1.0], recall_at=4)
    assert row["mrr"] == pytest.approx(1 / 3)
    assert row["map"] == pytest.approx((1 / 3 + 2 / 5) / 2)
    assert row["recall@4"] == pytest.approx(1 / 2)
    assert row["n_relevant"] == 2


# --------------------------------------------------------------------------------------------------
# Against references on random data


@pytest.mark.parametrize("seed", range(25))
def test_ndcg_matches_sklearn_tie_averaged(seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 30, size=40)
    group = np.repeat(np.arange(len(sizes)), sizes)
    label = rng.integers(0, 5, size=len(group)) * (rng.random(len(group)) < 0.5)
    score = rng.integers(0, 4, size=len(group)).astype(float)  # 4 score levels: many ties
    order = rng.permutation(len(group))  # rows of a group scattered
    ks = (1, 3, 5, 10, 20)
    per_group = per_group_metrics(group[order], label[order], score[order], ks=ks)
    for g, _size in enumerate(sizes):
        rows = group == g
        if not (label[rows] > 0).any():
            assert np.isnan(per_group.loc[g, "ndcg@10"])
            continue
        for k in ks:
            # sklearn uses linear gain: hand it 2**label - 1 to get the exponential gain.
            expected = ndcg_score([2.0 ** label[rows] - 1], [score[rows]], k=k, ignore_ties=False)
            assert per_group.loc[g, f"ndcg@{k}"] == pytest.approx(expected, abs=1e-12)


def test_non_integer_labels_take_the_sorting_path_and_agree_with_sklearn():
    # Grades that are not small integers cannot use the per-grade counts for the ideal DCG.
    rng = np.random.default_rng(42)
    group = np.repeat(np.arange(30), 12)
    label = rng.uniform(0, 4, size=len(group)) * (rng.random(len(group)) < 0.5)
    score = rng.integers(0, 5, size=len(group)).astype(float)
    per_group = per_group_metrics(group, label, score, ks=(5,))
    for g in range(30):
        rows = group == g
        expected = ndcg_score([2.0 ** label[rows] - 1], [score[rows]], k=5)
        assert per_group.loc[g, "ndcg@5"] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", range(20))
def test_all_metrics_equal_expectation_over_tie_orders(seed):
    rng = np.random.default_rng(100 + seed)
    sizes = rng.integers(1, 8, size=30)
    group = np.repeat(np.arange(len(sizes)), sizes)
    label = rng.integers(0, 5, size=len(group)) * (rng.random(len(group)) < 0.5)
    score = rng.integers(0, 3, size=len(group)).astype(float)
    per_group = per_group_metrics(group, label, score, ks=(3,), recall_at=2)
    for g in range(len(sizes)):
        rows = group == g
        if not (label[rows] > 0).any():
            continue
        expected = _expected_over_ties(label[rows], score[rows], k=3, recall_at=2)
        for name, value in expected.items():
            assert per_group.loc[g, name] == pytest.approx(value, abs=1e-12), name


def test_input_order_invariance():
    rng = np.random.default_rng(7)
    sizes = rng.integers(1, 40, size=300)
    group = np.repeat([f"req-{i:04d}" for i in range(len(sizes))], sizes)
    label = rng.integers(0, 5, size=len(group)) * (rng.random(len(group)) < 0.3)
    score = np.round(rng.normal(size=len(group)), 1)  # rounding makes ties
    base = per_group_metrics(group, label, score)
    for _ in range(3):
        order = rng.permutation(len(group))
        shuffled = per_group_metrics(group[order], label[order], score[order])
        pd.testing.assert_frame_equal(base, shuffled, rtol=1e-12, atol=1e-12)
    assert base.index.is_monotonic_increasing and base.index.name == "group"


def test_group_index_reuse_and_layout():
    group = np.array(["b", "a", "b", "c", "a"])
    index = encode_groups(group)
    assert list(index.ids) == ["a", "b", "c"]
    assert list(index.sizes) == [2, 2, 1]
    assert list(group[index.order]) == ["a", "a", "b", "b", "c"]  # contiguous, for LightGBM
    label, score = [1, 0, 2, 1, 0], [0.1, 0.9, 0.5, 0.2, 0.3]
    pd.testing.assert_frame_equal(per_group_metrics(index, label, score), per_group_metrics(group, label, score))


def test_constant_scores_equal_random_ordering():
    # Everything tied: NDCG is the mean gain times the discounts, whatever the row order.
    label = np.array([4, 0, 0, 0])
    row = one_group(label, np.zeros(4), ks=(4,))
    discounts = 1 / np.log2(np.arange(4) + 2)
    assert row["ndcg@4"] == pytest.approx((15 / 4) * discounts.sum() / 15)
    assert row["mrr"] == pytest.approx(np.mean(1 / np.arange(1, 5)))


def test_ndcg_curve_matches_per_group_means():
    rng = np.random.default_rng(3)
    group = np.repeat(np.arange(200), 25)
    label = rng.integers(0, 5, size=len(group)) * (rng.random(len(group)) < 0.2)
    score = rng.normal(size=len(group))
    curve = ndcg_curve(group, label, score, max_k=20)
    assert len(curve) == 20
    per_group = per_group_metrics(group, label, score, ks=(1, 5, 20))
    means = mean_metrics(per_group)
    assert curve[0] == pytest.approx(means["ndcg@1"])
    assert curve[4] == pytest.approx(means["ndcg@5"])
    assert curve[19] == pytest.approx(means["ndcg@20"])
    assert ndcg_curve(group, label, label.astype(float), max_k=5) == pytest.approx([1.0] * 5)


def test_graded_ndcg_against_utility():
    group = [0, 0, 0, 1, 1, 1, 2, 2]
    utility = [10.0, 20.0, 30.0, 1.0, 2.0, 3.0, 5.0, 5.0]
    oracle = graded_ndcg_against_utility(group, utility, utility, k=10)
    assert oracle.loc[0] == 1.0 and oracle.loc[1] == 1.0
    assert np.isnan(oracle.loc[2])  # constant utility: every order is as good
    assert oracle.mean() == 1.0

    # Group 0 reversed: min-max gains 0, 0.5, 1 ranked as 0, 0.5, 1 -> DCG = 0.5/log2(3) + 1/2,
    # IDCG = 1 + 0.5/log2(3).
    reverse = graded_ndcg_against_utility(group, utility, [-u for u in utility], k=10)
    assert reverse.loc[0] == pytest.approx((0.5 / LOG2_3 + 0.5) / (1 + 0.5 / LOG2_3))
    assert reverse.name == "utility_ndcg@10"

    # Min-max scaling makes it invariant to a per-group affine change of the utility.
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(50), 12)
    u = rng.normal(size=len(g))
    s = u + rng.normal(size=len(g))
    moved = u * np.repeat(rng.uniform(0.5, 5, 50), 12) + np.repeat(rng.normal(size=50), 12)
    pd.testing.assert_series_equal(
        graded_ndcg_against_utility(g, u, s, k=5), graded_ndcg_against_utility(g, moved, s, k=5), rtol=1e-9
    )


def test_oracle_fraction():
    assert oracle_fraction({"model": 0.8, "random": 0.6, "oracle": 1.0}) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="oracle"):
        oracle_fraction({"model": 0.8, "random": 0.6})


# --------------------------------------------------------------------------------------------------
# Validation


def test_validation_names_the_bad_array():
    with pytest.raises(ValueError, match="label has 2 rows but group has 3"):
        per_group_metrics([0, 0, 0], [1, 0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="score has 1 NaN"):
        per_group_metrics([0, 0], [1, 0], [1.0, np.nan])
    with pytest.raises(ValueError, match="label must be >= 0"):
        per_group_metrics([0, 0], [1, -1], [1.0, 2.0])
    with pytest.raises(ValueError, match="missing id"):
        per_group_metrics(["a", None], [1, 0], [1.0, 2.0])
    with pytest.raises(ValueError, match="ks must be"):
        per_group_metrics([0], [1], [1.0], ks=(0,))
    with pytest.raises(ValueError, match="utility has 1 rows"):
        graded_ndcg_against_utility([0, 0], [1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="a has 2 values but b has 3"):
        paired_bootstrap_ci([1.0, 2.0], [1.0, 2.0, 3.0])


def test_empty_input():
    per_group = per_group_metrics([], [], [])
    assert len(per_group) == 0 and "ndcg@10" in per_group.columns
    assert mean_metrics(per_group)["groups"] == 0


# --------------------------------------------------------------------------------------------------
# Bootstrap


def test_bootstrap_ci_covers_true_difference():
    # 200 synthetic evaluations with a known mean difference of 0.02: a 90% interval should
    # contain it about 90% of the time.
    rng = np.random.default_rng(11)
    hits = 0
    for replicate in range(200):
        b = rng.uniform(0.2, 0.8, size=300)
        a = b + 0.02 + rng.normal(scale=0.1, size=300)
        ci = paired_bootstrap_ci(a, b, n_boot=400, seed=replicate, alpha=0.10)
        hits += ci["low"] <= 0.02 <= ci["high"]
    assert 0.82 <= hits / 200 <= 0.97


def test_bootstrap_ci_excludes_zero_when_clearly_better_and_drops_nan_pairs():
    rng = np.random.default_rng(5)
    b = rng.uniform(0.2, 0.6, size=2000)
    a = b + 0.05 + rng.normal(scale=0.05, size=2000)
    a[:10] = np.nan  # groups without a relevant item
    ci = paired_bootstrap_ci(pd.Series(a), pd.Series(b), n_boot=1000, seed=0)
    assert ci["n"] == 1990
    assert 0 < ci["low"] < ci["diff"] < ci["high"]
    assert ci["diff"] == pytest.approx(np.nanmean(a - b))
    assert ci["p_value"] == 0.0
    assert paired_bootstrap_ci(a, b, seed=0) == ci  # same seed, same interval

    same = paired_bootstrap_ci(b + rng.normal(scale=0.05, size=2000), b, seed=1)
    assert same["low"] < 0 < same["high"]

    with pytest.raises(ValueError, match="different indexes"):
        paired_bootstrap_ci(pd.Series(a), pd.Series(b, index=np.arange(2000) + 1))


def test_bootstrap_mean_ci_and_chunking():
    values = np.random.default_rng(2).uniform(size=50_000)  # > 1 chunk of resamples at 1000 boots
    ci = bootstrap_mean_ci(values, n_boot=300, seed=0)
    assert ci["low"] < ci["mean"] < ci["high"]
    assert ci["high"] - ci["low"] == pytest.approx(2 * 1.96 * values.std() / np.sqrt(len(values)), rel=0.25)
    assert bootstrap_mean_ci([np.nan], n_boot=10)["n"] == 0


# --------------------------------------------------------------------------------------------------
# Scale


def test_one_million_rows_vectorised():
    rng = np.random.default_rng(0)
    n_groups, size = 20_000, 50
    group = rng.permutation(np.repeat(np.arange(n_groups), size))
    label = rng.integers(1, 5, size=len(group)) * (rng.random(len(group)) < 0.1)
    score = np.round(rng.normal(size=len(group)), 2)  # ties too
    started = time.perf_counter()
    per_group = per_group_metrics(group, label, score)
    elapsed = time.perf_counter() - started
    print(f"per_group_metrics on {len(group):,} rows / {n_groups:,} groups: {elapsed:.2f} s")
    assert len(per_group) == n_groups and per_group["n_items"].eq(size).all()
    # Spot-check a sample of groups against scikit-learn and the tie brute force's closed forms.
    for g in rng.choice(n_groups, size=20, replace=False):
        rows = group == g
        if not (label[rows] > 0).any():
            continue
        expected = ndcg_score([2.0 ** label[rows] - 1], [score[rows]], k=10)
        assert per_group.loc[g, "ndcg@10"] == pytest.approx(expected, abs=1e-12)

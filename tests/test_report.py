"""The evaluation report: text table for the CLI and self-contained HTML."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

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
from ranker.training.report import evaluation_table, render_html, write_report

RANKERS = ("model", "random", "popularity", "logged", "oracle")


@pytest.fixture(scope="module")
def evaluation() -> dict:
    """An evaluation built the way the evaluation step builds it, on simulated requests."""
    rng = np.random.default_rng(0)
    n_groups, size = 400, 20
    group = np.repeat(np.arange(n_groups), size)
    index = encode_groups(group)
    utility = rng.normal(size=len(group))
    label = np.digitize(utility + rng.normal(scale=0.5, size=len(group)), [1.0, 1.5, 2.0, 2.5])
    scores = {
        "model": utility + rng.normal(scale=0.7, size=len(group)),
        "random": rng.random(len(group)),
        "popularity": rng.poisson(3, size=len(group)).astype(float),  # integer counts: many ties
        "logged": utility + rng.normal(scale=1.5, size=len(group)),
        "oracle": utility,
    }
    per_group = {name: per_group_metrics(index, label, score) for name, score in scores.items()}
    surface = np.where(np.arange(n_groups) % 3 == 0, "recs", "search")
    slices = {}
    for value in ("search", "recs"):
        in_slice = surface == value
        slices[f"surface={value}"] = {
            name: {
                "ndcg@10": (ci := bootstrap_mean_ci(frame["ndcg@10"][in_slice], n_boot=200))["mean"],
                "low": ci["low"],
                "high": ci["high"],
                "groups": int(in_slice.sum()),
            }
            for name, frame in per_group.items()
        }
    true_utility = {
        name: float(graded_ndcg_against_utility(index, utility, score, k=10).mean()) for name, score in scores.items()
    }
    ci = {
        f"model-vs-{name}": {
            "metric": "ndcg@10",
            **paired_bootstrap_ci(per_group["model"]["ndcg@10"], per_group[name]["ndcg@10"], n_boot=200),
        }
        for name in RANKERS
        if name != "model"
    }
    return {
        "model": {"name": "search_ranker", "version": "20240601-abc123", "feature_service": "search_ranker_v1"},
        "metrics": {
            "test": {name: mean_metrics(frame) for name, frame in per_group.items()},
            "slices": slices,
            "ci": ci,
            "true_utility": true_utility,
            "oracle_fraction": oracle_fraction(true_utility),
        },
        "feature_importance": {f"feature_{i:02d}": float(1000 / (i + 1)) for i in range(40)},
        "score_distributions": {name: score[:500].tolist() for name, score in scores.items()},
        "ndcg_curve": {name: ndcg_curve(index, label, score) for name, score in scores.items()},
    }


def without_oracle(evaluation: dict) -> dict:
    result = copy.deepcopy(evaluation)
    metrics = result["metrics"]
    del metrics["test"]["oracle"], metrics["ci"]["model-vs-oracle"], metrics["true_utility"]
    del metrics["oracle_fraction"]
    for by_ranker in metrics["slices"].values():
        del by_ranker["oracle"]
    del result["score_distributions"]["oracle"], result["ndcg_curve"]["oracle"]
    return result


def test_evaluation_is_json_serialisable(evaluation):
    assert json.loads(json.dumps(evaluation)) == evaluation


def test_html_report_is_self_contained(evaluation, tmp_path):
    path = write_report(json.loads(json.dumps(evaluation)), path=tmp_path / "reports" / "eval.html", title="Eval <v1>")
    assert path == tmp_path / "reports" / "eval.html"
    document = path.read_text(encoding="utf-8")
    for name in RANKERS:
        assert name in document
    assert document.count("<img") == 4
    assert document.count('src="data:image/png;base64,') == 4
    assert "http://" not in document and "https://" not in document  # no external assets
    assert "Eval &lt;v1&gt;" in document  # escaped title
    assert "search_ranker_v1" in document and "surface=recs" in document
    assert f"{evaluation['metrics']['test']['model']['ndcg@10']:.4f}" in document
    assert not list(tmp_path.glob("reports/*.tmp"))


def test_text_table_contains_the_figures(evaluation):
    table = evaluation_table(evaluation)
    print("\n" + table)
    test = evaluation["metrics"]["test"]
    rows = [line for line in table.splitlines() if line.split() and line.split()[0] in RANKERS and ":" not in line]
    lines = {line.split()[0]: line for line in rows}
    assert set(lines) == set(RANKERS)
    for name in RANKERS:
        for metric in ("ndcg@5", "ndcg@10", "ndcg@20", "mrr", "map", "recall@10"):
            assert f"{test[name][metric]:.4f}" in lines[name]
        assert f"{evaluation['metrics']['true_utility'][name]:.4f}" in lines[name]
    ci = evaluation["metrics"]["ci"]["model-vs-random"]
    assert f"{ci['diff']:+.4f} [{ci['low']:+.4f}, {ci['high']:+.4f}]" in lines["random"]
    assert "true ndcg@10" in table and "95% CI" in table
    assert "oracle fraction" in table and "search_ranker_v1" in table
    assert table.splitlines()[2].split()[0] == "ranker"  # model line, test-set line, then the header
    assert lines["oracle"].split()[7] == "1.0000"  # true NDCG@10 of ranking by the utility itself


def test_missing_oracle_and_optional_parts(evaluation, tmp_path):
    real_data = without_oracle(evaluation)
    document = write_report(real_data, path=tmp_path / "real.html", title="real logs").read_text()
    assert "oracle" not in document.lower()
    assert document.count("<img") == 4
    table = evaluation_table(real_data)
    assert "oracle" not in table and "true ndcg@10" not in table

    minimal = {"metrics": {"test": {"model": {"ndcg@10": 0.5, "groups": 10}, "random": {"ndcg@10": float("nan")}}}}
    document = render_html(minimal, title="minimal")
    assert document.count("<img") == 0 and "No data" in document
    table = evaluation_table(minimal)
    assert "0.5000" in table and "-" in table.splitlines()[-1]  # NaN renders as "-"


def test_malformed_evaluation_raises_precise_errors(tmp_path):
    with pytest.raises(ValueError, match=r"evaluation\['metrics'\]\['test'\] is missing"):
        evaluation_table({"metrics": {}})
    with pytest.raises(ValueError, match="has no ranker"):
        evaluation_table({"metrics": {"test": {}}})
    with pytest.raises(ValueError, match=r"\['model'\]\['ndcg@10'\] must be a number"):
        evaluation_table({"metrics": {"test": {"model": {"ndcg@10": "high"}}}})
    with pytest.raises(ValueError, match="'a-vs-b'"):
        write_report(
            {"metrics": {"test": {"model": {}}, "ci": {"model/random": {}}}}, path=tmp_path / "x.html", title="x"
        )
    assert not (tmp_path / "x.html").exists()

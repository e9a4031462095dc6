"""Alert rules and the Grafana dashboard: promtool's own rule unit tests, and every metric they read
exists (the scorer's /metrics, a monitor job's export or a stream processor's), so a renamed metric cannot silently
disable an alert or blank a panel."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from tests.conftest import REPO_ROOT

PROM = REPO_ROOT / "infra" / "prometheus"
DASHBOARD = REPO_ROOT / "infra" / "grafana" / "dashboards" / "scorer.json"


def _promtool() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.skip(
            "promtool not installed: `make test` installs it with apt-get (Debian package prometheus); "
            "the rule unit tests need it"
        )
    return binary


def test_alert_rules_are_valid():
    result = subprocess.run([_promtool(), "check", "rules", str(PROM / "alerts.yml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rule_unit_tests_pass():
    tests = sorted((PROM / "tests").glob("*.yml"))
    assert len(tests) >= 3
    result = subprocess.run(
        [_promtool(), "test", "rules", *map(str, tests)], capture_output=True, text=True, cwd=PROM, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(tests)


def _known_metrics() -> set[str]:
    """Sample names the scorer and the monitor jobs expose."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from api.metrics import Metrics
    from ranker.monitoring import export

    metrics = Metrics()
    metrics.init_surface("search")
    metrics.observe_stage("search", "total", 0.01)
    metrics.requests.labels("search", "200").inc()
    metrics.degraded.labels("search", "timeout").inc()
    metrics.candidates.labels("search").observe(10)
    metrics.model_loads.labels("search", "failed").inc()
    metrics.registry_checked("search", 1.0)
    metrics.variant_requests.labels("search", "control").inc()
    metrics.variant_errors.labels("search", "control").inc()
    metrics.variant_swapped("search", "control", None, "v1", created_at="2026-11-01T00:00:00+00:00")
    metrics.model_swapped("search", "search_ranker", None, "v1")
    texts = [generate_latest(metrics.registry).decode()]
    from ranker.streaming.metrics import StreamMetrics

    stream = StreamMetrics("events", 0)  # the stream processor's (ranker stream run --metrics-port)
    stream.freshness.observe(0.1)
    stream.dropped("bad_record")
    stream.written("listing_fv", 1, 1)
    texts.append(generate_latest(stream.registry).decode())
    skew = {"rows": 1, "features": [{"feature": "f", "feature_service": "s", "mismatch_rate": 0.0}]}
    drift = {
        "models": [
            {
                "surface": "search",
                "model_name": "m",
                "version": "v",
                "rows": 1,
                "judged": True,
                "features": [{"feature": "f", "psi": 0.1, "threshold": 0.2, "verdict": "ok"}],
                "score_psi": 0.1,
            }
        ]
    }
    ci = {"mean": 0.1, "n": 1}
    online = {
        "k": 10,
        "metrics": ["ctr@10"],
        "groups": [
            {
                "surface": "search",
                "model_version": "v",
                "variant": "control",
                "requests": 1,
                "ctr@10": ci,
                "purchase": ci,
                "ndcg@10": ci,
                "guardrails": {"latency_p99_ms": 12.0, "degraded_share": 0.0},
            }
        ],
        "comparisons": [{"surface": "search", "treatment": "t", "srm": {"p_value": 0.5}, "ctr@10": {"better": None}}],
    }
    for registry in (
        export.skew_metrics(skew),
        export.drift_metrics(drift, materialized={"listing_fv": 1.0}),
        export.online_metrics(online),
    ):
        texts.append(generate_latest(registry).decode())
    return {s.name for text in texts for family in text_string_to_metric_families(text) for s in family.samples}


def _used(text: str) -> set[str]:
    return set(re.findall(r"\b(ranker_[a-z0-9_]+)", text))


def test_alerts_and_dashboard_read_only_existing_metrics():
    import yaml

    known = _known_metrics()
    rules = [r for g in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"] for r in g["rules"]]
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [r["expr"] for r in rules] + [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [str(v.get("definition", "")) for v in dashboard["templating"]["list"]]
    missing = sorted(_used(" ".join(exprs)) - known)
    assert not missing, f"alert rules / dashboard read metrics nobody exposes: {missing}"
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)) >= 12
    for rule in rules:  # every alert says how bad and what happened
        assert rule["labels"]["severity"] in ("page", "ticket") and rule["annotations"]["summary"], rule["alert"]


def test_dashboard_is_valid_grafana_json():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "ranker-scorer" and dashboard["panels"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24


@pytest.mark.parametrize(
    "srm_p, skew_rate, expected",
    [
        (0.4, 0.0, []),
        (1e-5, 0.0, ["RankerSampleRatioMismatch"]),
        (0.4, 0.2, ["RankerTrainingServingSkew"]),
    ],
)
def test_exported_monitor_figures_replayed_through_the_rules(srm_p, skew_rate, expected):
    """The replay harness the demo uses (ranker.monitoring.alertcheck): quiet figures fire nothing,
    a broken split or a skewed feature fires exactly its rule."""
    _promtool()
    from prometheus_client import generate_latest

    from ranker.monitoring import export
    from ranker.monitoring.alertcheck import alerts_that_would_fire

    ci = {"mean": 0.1, "n": 1}
    online = {
        "k": 10,
        "metrics": ["ctr@10"],
        "groups": [
            {
                "surface": "search",
                "model_version": "v",
                "variant": "control",
                "requests": 1,
                "ctr@10": ci,
                "guardrails": {"latency_p99_ms": 12.0, "degraded_share": 0.0},
            }
        ],
        "comparisons": [{"surface": "search", "treatment": "t", "srm": {"p_value": srm_p}, "ctr@10": {"better": None}}],
    }
    skew = {"rows": 10, "features": [{"feature": "f", "feature_service": "s", "mismatch_rate": skew_rate}]}
    texts = [
        generate_latest(export.online_metrics(online)).decode(),
        generate_latest(export.skew_metrics(skew)).decode(),
    ]
    assert alerts_that_would_fire(texts, PROM / "alerts.yml") == expected

"""The monitors' figures as Prometheus metrics.

Batch jobs are not scraped while they run, so each ``ranker monitor`` command writes its gauges in
the node-exporter *textfile* format (``{dir}/ranker_monitor_{name}.prom``, written atomically;
point node_exporter's ``--collector.textfile.directory`` at the folder) and, when
``--pushgateway URL`` (or ``RANKER_PUSHGATEWAY_URL``) is given, also pushes them to a Pushgateway
under job ``ranker_monitor`` and grouping key ``monitor``. The alert rules in
``infra/prometheus/alerts.yml`` read these names.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, write_to_textfile

from ranker.errors import RankerError


def _registry_for(monitor: str) -> tuple[CollectorRegistry, Gauge]:
    registry = CollectorRegistry()
    last = Gauge(
        "ranker_monitor_last_run_timestamp_seconds",
        "When the monitor last ran (unix s).",
        ["monitor"],
        registry=registry,
    )
    last.labels(monitor).set(time.time())
    return registry, last


def skew_metrics(report: dict[str, Any]) -> CollectorRegistry:
    registry, _ = _registry_for("skew")
    rate = Gauge(
        "ranker_skew_mismatch_rate",
        "Share of logged values that differ from Feast's point-in-time recomputation.",
        ["feature_service", "feature"],
        registry=registry,
    )
    worst = Gauge("ranker_skew_max_mismatch_rate", "Largest per-feature skew mismatch rate.", registry=registry)
    rows = Gauge("ranker_skew_rows_compared", "(request, item) rows recomputed by the skew monitor.", registry=registry)
    for f in report["features"]:
        rate.labels(f["feature_service"], f["feature"]).set(f["mismatch_rate"])
    worst.set(max((f["mismatch_rate"] for f in report["features"]), default=0.0))
    rows.set(report["rows"])
    return registry


def drift_metrics(report: dict[str, Any], *, materialized: dict[str, float] | None = None) -> CollectorRegistry:
    """Drift gauges, plus (``materialized``: view -> unix s) when each feature view's online values
    were last materialized, for the stale-features alert."""
    registry, _ = _registry_for("drift")
    fresh = Gauge(
        "ranker_feature_view_materialized_timestamp_seconds",
        "End of the newest materialization of a feature view into the online store (unix s).",
        ["view"],
        registry=registry,
    )
    for view, ts in (materialized or {}).items():
        fresh.labels(view).set(ts)
    psi = Gauge(
        "ranker_drift_psi",
        "PSI of a feature: training distribution (model card) vs served window.",
        ["surface", "model", "version", "feature"],
        registry=registry,
    )
    limit = Gauge(
        "ranker_drift_psi_threshold",
        "A feature's drift threshold: the top of its healthy day-to-day range.",
        ["surface", "model", "version", "feature"],
        registry=registry,
    )
    worst = Gauge(
        "ranker_drift_max_psi",
        "Largest feature PSI of the served model version.",
        ["surface", "model", "version"],
        registry=registry,
    )
    ratio = Gauge(
        "ranker_drift_max_psi_ratio",
        "Largest feature PSI / its threshold (> 1 = beyond the healthy range).",
        ["surface", "model", "version"],
        registry=registry,
    )
    drifted = Gauge(
        "ranker_drift_features_drifted",
        "Features whose PSI is beyond their healthy range.",
        ["surface", "model", "version"],
        registry=registry,
    )
    score = Gauge(
        "ranker_drift_score_psi",
        "PSI of the served scores vs the model's test-split scores.",
        ["surface", "model", "version"],
        registry=registry,
    )
    rows = Gauge(
        "ranker_drift_rows", "Served rows in the drift window.", ["surface", "model", "version"], registry=registry
    )
    for m in report["models"]:
        labels = (m["surface"], m["model_name"], m["version"])
        rows.labels(*labels).set(m["rows"])
        if not m["judged"]:
            continue
        for f in m["features"]:
            psi.labels(*labels, f["feature"]).set(f["psi"])
            limit.labels(*labels, f["feature"]).set(f.get("threshold", report.get("threshold", 0.25)))
        worst.labels(*labels).set(max((f["psi"] for f in m["features"]), default=0.0))
        ratio.labels(*labels).set(
            max((f["psi"] / f.get("threshold", report.get("threshold", 0.25)) for f in m["features"]), default=0.0)
        )
        drifted.labels(*labels).set(sum(f.get("verdict") == "drift" for f in m["features"]))
        if m["score_psi"] is not None:
            score.labels(*labels).set(m["score_psi"])
    return registry


def online_metrics(report: dict[str, Any]) -> CollectorRegistry:
    registry, _ = _registry_for("online")
    k = report["k"]
    gauges = {
        f"ctr@{k}": Gauge(
            "ranker_online_ctr",
            f"Online CTR@{k} per surface, model version and variant.",
            ["surface", "version", "variant"],
            registry=registry,
        ),
        "purchase": Gauge(
            "ranker_online_purchase_rate",
            "Share of served requests with a purchase.",
            ["surface", "version", "variant"],
            registry=registry,
        ),
        f"ndcg@{k}": Gauge(
            "ranker_online_ndcg",
            f"Click-based NDCG@{k} of the served order.",
            ["surface", "version", "variant"],
            registry=registry,
        ),
    }
    reqs = Gauge(
        "ranker_online_requests", "Served requests measured.", ["surface", "version", "variant"], registry=registry
    )
    p99 = Gauge(
        "ranker_online_latency_p99_seconds",
        "p99 of the served wall time per variant (served log).",
        ["surface", "version", "variant"],
        registry=registry,
    )
    degraded = Gauge(
        "ranker_online_degraded_share",
        "Share of a variant's served requests answered degraded.",
        ["surface", "version", "variant"],
        registry=registry,
    )
    srm = Gauge(
        "ranker_ab_srm_p_value",
        "Sample-ratio check of an experiment: p-value of the users per variant "
        "against the configured weights (< 0.001 = broken split).",
        ["surface"],
        registry=registry,
    )
    decided = Gauge(
        "ranker_ab_decided",
        "1 when the always-valid test decided the comparison (direction in 'better').",
        ["surface", "treatment", "metric", "better"],
        registry=registry,
    )
    for g in report["groups"]:
        labels = (g["surface"], g["model_version"], g["variant"])
        reqs.labels(*labels).set(g["requests"])
        for m, gauge in gauges.items():
            if m in g and g[m]["n"] and g[m]["mean"] is not None:
                gauge.labels(*labels).set(g[m]["mean"])
        guard = g.get("guardrails") or {}
        if guard.get("latency_p99_ms") is not None:
            p99.labels(*labels).set(guard["latency_p99_ms"] / 1000)
        if guard.get("degraded_share") is not None:
            degraded.labels(*labels).set(guard["degraded_share"])
    for c in report.get("comparisons", []):
        if c["srm"].get("p_value") is not None:
            srm.labels(c["surface"]).set(c["srm"]["p_value"])
        for m in report["metrics"]:
            decided.labels(c["surface"], c["treatment"], m, c[m]["better"] or "").set(1.0 if c[m]["better"] else 0.0)
    return registry


def export(
    registry: CollectorRegistry, monitor: str, *, textfile_dir: Path | None, pushgateway: str | None = None
) -> list[str]:
    """Write ``{textfile_dir}/ranker_monitor_{monitor}.prom`` and/or push; returns where it went."""
    where = []
    if textfile_dir is not None:
        textfile_dir.mkdir(parents=True, exist_ok=True)
        path = textfile_dir / f"ranker_monitor_{monitor}.prom"
        write_to_textfile(str(path), registry)  # temp file + rename: atomic for the collector
        where.append(str(path))
    if pushgateway:
        try:
            push_to_gateway(
                pushgateway, job="ranker_monitor", grouping_key={"monitor": monitor}, registry=registry, timeout=10
            )
        except OSError as exc:
            raise RankerError(f"cannot push to the Pushgateway at {pushgateway}: {exc}") from None
        where.append(pushgateway)
    return where

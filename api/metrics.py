"""Prometheus metrics of the scorer.

Each app owns a private ``CollectorRegistry`` (several apps in one test process never collide).
Under gunicorn with several workers, ``PROMETHEUS_MULTIPROC_DIR`` must name an empty folder before the
workers start (``ranker serve`` does it): prometheus_client then keeps values in per-process files and
``/metrics`` aggregates every live worker with a ``MultiProcessCollector``.

Aggregation is switched on explicitly (``RANKER_METRICS_MULTIPROCESS=1``, set by the gunicorn config
when the launcher had ``PROMETHEUS_MULTIPROC_DIR``), never inferred from ``PROMETHEUS_MULTIPROC_DIR``
inside the app: importing feast 0.67 (``feast.metrics``, pulled in by ``feast.feature_store``) sets
that variable to a temp folder of its own in every process that imports it, so its presence says
nothing about how the server was started.

Label values are bounded: surfaces come from the configuration (anything else is ``invalid``),
error types from the API's fixed error codes, stages from :data:`STAGES`.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

STAGES = ("parse", "fetch", "predict", "serialise", "total")
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
CANDIDATE_BUCKETS = (1, 5, 10, 25, 50, 100, 200, 300, 500, 1000, 2000)


log = logging.getLogger("api.metrics")


def values_are_multiprocess() -> bool:
    """True when prometheus_client stores values in per-process files (decided at its import)."""
    from prometheus_client import values

    return bool(getattr(values.ValueClass, "_multiprocess", False))


class Metrics:
    """Every collector of one app, registered on the app's own registry.

    Args:
        multiprocess: serve /metrics as the sum over every worker's files in ``PROMETHEUS_MULTIPROC_DIR``.
    """

    def __init__(self, *, multiprocess: bool = False) -> None:
        self.multiprocess_dir: str | None = None
        if multiprocess:
            folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
            if folder and os.path.isdir(folder) and values_are_multiprocess():
                self.multiprocess_dir = folder
            else:
                log.warning(
                    "RANKER_METRICS_MULTIPROCESS is set but prometheus_client is not in multiprocess mode "
                    "(PROMETHEUS_MULTIPROC_DIR=%r must be an existing folder before the workers start); "
                    "/metrics reports this process only",
                    folder,
                )
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.stage_seconds = Histogram(
            "ranker_rank_stage_seconds",
            "Latency of /v1/rank per stage (parse, fetch, predict, serialise) and total.",
            ["surface", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "ranker_rank_requests", "Ranking requests by surface and HTTP status.", ["surface", "status"], registry=r
        )
        self.errors = Counter("ranker_errors", "Error responses by error code (any route).", ["type"], registry=r)
        self.degraded = Counter(
            "ranker_degraded_responses",
            "Responses ranked by the fallback because features were unavailable.",
            ["surface", "reason"],
            registry=r,
        )
        self.candidates = Histogram(
            "ranker_rank_candidates",
            "Candidate items per ranking request (after de-duplication).",
            ["surface"],
            buckets=CANDIDATE_BUCKETS,
            registry=r,
        )
        self.removed_sold = Counter(
            "ranker_removed_sold_items", "Candidates removed because the listing is sold.", ["surface"], registry=r
        )
        self.unknown_items = Counter(
            "ranker_unknown_items",
            "Candidates unknown to the online store (ranked as cold-start listings).",
            ["surface"],
            registry=r,
        )
        self.cache_hits = Counter("ranker_item_cache_hits", "Item feature cache hits.", ["surface"], registry=r)
        self.cache_misses = Counter("ranker_item_cache_misses", "Item feature cache misses.", ["surface"], registry=r)
        self.model_info = Gauge(
            "ranker_model_info",
            "1 for the model version a surface serves (0 for versions it served before).",
            ["surface", "name", "version"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.model_loaded = Gauge(
            "ranker_model_loaded",
            "1 when the surface has a model loaded.",
            ["surface"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.model_loads = Counter(
            "ranker_model_loads",
            "Model load attempts by surface and result (loaded, failed).",
            ["surface", "result"],
            registry=r,
        )
        # A/B and the served-feature log (ranker.monitoring).
        self.variant_requests = Counter(
            "ranker_variant_requests",
            "Ranking requests answered by each A/B variant.",
            ["surface", "variant"],
            registry=r,
        )
        # 5xx after the user was assigned a variant (503 no_model, 500): the A/B error-rate guardrail,
        # ranker_variant_errors / (ranker_variant_requests + ranker_variant_errors) per variant.
        self.variant_errors = Counter(
            "ranker_variant_errors",
            "Ranking requests of an A/B variant that failed with a server error (5xx).",
            ["surface", "variant"],
            registry=r,
        )
        self.variant_info = Gauge(
            "ranker_variant_model_info",
            "1 for the model version an A/B variant serves.",
            ["surface", "variant", "version"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.model_created = Gauge(
            "ranker_model_created_timestamp_seconds",
            "When the served model version was trained (unix s).",
            ["surface", "variant"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.registry_check = Gauge(
            "ranker_model_last_check_timestamp_seconds",
            "Last time the scorer checked the registry for promotions (unix s; the oldest worker).",
            ["surface"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.served_log_rows = Counter(
            "ranker_served_log_rows",
            "(request, item) rows written to the served-feature log.",
            registry=r,
        )
        self.served_log_requests = Counter(
            "ranker_served_log_requests",
            "Requests sampled and queued for the served-feature log.",
            registry=r,
        )
        self.served_log_files = Counter(
            "ranker_served_log_files",
            "Parquet files written by the served-feature log.",
            registry=r,
        )
        self.served_log_dropped = Counter(
            "ranker_served_log_dropped",
            "Served-log records dropped: queue_full (requests), write_error (rows), error (requests).",
            ["reason"],
            registry=r,
        )
        self._cache_seen: dict[int, tuple[int, int]] = {}
        self._children: dict = {}  # (metric, label values) -> its series (child)
        self._cache_lock = threading.Lock()

    def init_surface(self, surface: str) -> None:
        """Create the surface's series at 0 so dashboards see them before the first event."""
        for counter in (self.cache_hits, self.cache_misses, self.removed_sold, self.unknown_items):
            counter.labels(surface)
        self.model_loaded.labels(surface).set(0)
        for reason in ("queue_full", "write_error", "error"):
            self.served_log_dropped.labels(reason)
        # 0 until the registry has answered for every variant: a scorer that never resolves its
        # models trips RankerModelNotReloaded instead of exposing nothing.
        self.registry_check.labels(surface).set(0)

    def served_log_event(self, kind: str, n: int) -> None:
        """Callback of :class:`ranker.monitoring.servedlog.ServedLogWriter` (its thread)."""
        if kind == "written":
            self.served_log_rows.inc(n)
        elif kind == "file":
            self.served_log_files.inc(n)
        elif kind.startswith("dropped_"):
            self.served_log_dropped.labels(kind[len("dropped_") :]).inc(n)

    def registry_checked(self, surface: str, at: float) -> None:
        """The registry answered for every variant of ``surface`` (unix s): the stale-reload alert's clock."""
        self.registry_check.labels(surface).set(at)

    def variant_swapped(
        self, surface: str, variant: str, old_version: str | None, new_version: str, *, created_at: str | None = None
    ) -> None:
        if old_version is not None and old_version != new_version:
            self.variant_info.labels(surface, variant, old_version).set(0)
        self.variant_info.labels(surface, variant, new_version).set(1)
        if created_at:
            from datetime import datetime

            try:
                self.model_created.labels(surface, variant).set(datetime.fromisoformat(created_at).timestamp())
            except ValueError:
                pass

    def child(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, remembered: every request updates the same few series, and
        prometheus_client validates and looks the labels up again on each call. Label values are
        bounded (module docstring), so is this memo."""
        key = (metric, values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def observe_stage(self, surface: str, stage: str, seconds: float) -> None:
        self.child(self.stage_seconds, surface, stage).observe(seconds)

    def sync_cache(self, surface: str, features: Any) -> None:
        """Add the item-cache hits/misses counted by ``features`` since the last call.

        The feature object keeps cumulative counters; deltas taken under a lock keep the totals right
        when requests run concurrently.
        """
        hits = int(getattr(features, "cache_hits", 0) or 0)
        misses = int(getattr(features, "cache_misses", 0) or 0)
        with self._cache_lock:
            last_hits, last_misses = self._cache_seen.get(id(features), (0, 0))
            self._cache_seen[id(features)] = (hits, misses)
        if hits > last_hits:
            self.cache_hits.labels(surface).inc(hits - last_hits)
        if misses > last_misses:
            self.cache_misses.labels(surface).inc(misses - last_misses)

    def forget_features(self, features: Any) -> None:
        with self._cache_lock:
            self._cache_seen.pop(id(features), None)

    def model_swapped(self, surface: str, name: str, old_version: str | None, new_version: str) -> None:
        if old_version is not None and old_version != new_version:
            self.model_info.labels(surface, name, old_version).set(0)
        self.model_info.labels(surface, name, new_version).set(1)
        self.model_loaded.labels(surface).set(1)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type (all workers in multiprocess mode)."""
        if self.multiprocess_dir:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            registry.register(_Ours(multiprocess.MultiProcessCollector(None, path=self.multiprocess_dir)))
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _Ours:
    """The ``ranker_`` families of a collector: the multiprocess folder also holds the files of the
    metrics feast 0.67 defines at import (``feast_feature_server_*``, always zero in the scorer)."""

    def __init__(self, collector) -> None:
        self._collector = collector

    def collect(self):
        return [family for family in self._collector.collect() if family.name.startswith("ranker_")]

"""The stream processor's Prometheus metrics (``ranker stream run --metrics-port``), in a registry of
their own; alert rules in infra/prometheus/alerts.yml, panels on the Grafana dashboard.

* ``ranker_stream_freshness_seconds`` (histogram): per record, broker publish time (the message's
  ``x-published-us`` header) to the moment its update is readable in the online store;
* ``ranker_stream_lag_seconds`` (gauge): age of the newest message processed while more were waiting
  (0 when caught up);
* ``ranker_stream_dropped_total{reason}`` (counter): records not applied, by reason (the parser's
  bad_json, bad_version, bad_record, unknown_type, misrouted; the window state's, e.g. late);
* ``ranker_stream_records_total``, ``ranker_stream_writes_total{view}``,
  ``ranker_stream_stale_skipped_total{view}`` (a write skipped because the store held a newer value),
  ``ranker_stream_broker_retries_total``, ``ranker_stream_offset`` (last offset processed),
  ``ranker_stream_checkpoints_total``.

Every series carries ``stream`` and ``partition`` labels.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

FRESHNESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class StreamMetrics:
    def __init__(self, stream: str, partition: int, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = ("stream", "partition")
        values = (stream, str(partition))
        r = self.registry
        self.freshness = Histogram(
            "ranker_stream_freshness_seconds",
            "Broker publish time to value readable in the online store, per record",
            labels,
            buckets=FRESHNESS_BUCKETS,
            registry=r,
        ).labels(*values)

        def one(kind, name: str, doc: str):
            return kind(name, doc, labels, registry=r).labels(*values)

        self.lag = one(Gauge, "ranker_stream_lag_seconds", "Age of the newest processed message while more wait")
        self.records = one(Counter, "ranker_stream_records", "Records applied")
        self.retries = one(Counter, "ranker_stream_broker_retries", "Failed broker or store attempts")
        self.offset = one(Gauge, "ranker_stream_offset", "Last offset processed")
        self.checkpoints = one(Counter, "ranker_stream_checkpoints", "Checkpoints written")
        self._dropped = Counter(
            "ranker_stream_dropped", "Records not applied, by reason", (*labels, "reason"), registry=r
        )
        self._writes = Counter("ranker_stream_writes", "Entity rows written online", (*labels, "view"), registry=r)
        self._stale = Counter(
            "ranker_stream_stale_skipped", "Writes skipped: the store held a newer value", (*labels, "view"), registry=r
        )
        self._values = values

    def dropped(self, reason: str, n: int = 1) -> None:
        if n:
            self._dropped.labels(*self._values, reason).inc(n)

    def written(self, view: str, written: int, skipped: int) -> None:
        if written:
            self._writes.labels(*self._values, view).inc(written)
        if skipped:
            self._stale.labels(*self._values, view).inc(skipped)

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        start_http_server(port, addr=addr, registry=self.registry)

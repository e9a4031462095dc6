"""The batch feature tables computed by Spark (``ranker features build --engine spark``, or
``RANKER_FEATURE_ENGINE=spark``): the same tables, schemas and point-in-time rules as
:mod:`ranker.features.build`, for logs that outgrow one machine.

The queries are DuckDB's own (one definition of every feature, in ``build.py``), run by Spark SQL
after a short, explicit dialect translation (:func:`spark_sql`): Spark 4 reads DuckDB's
``GROUP BY ALL``, ``FILTER (WHERE ...)``, ``::`` casts, ``median`` and ``INTERVAL n DAY`` as they are;
what differs is the snapshot calendar (``generate_series`` / ``unnest`` become ``sequence`` /
``explode``), ``epoch()`` (a SQL function registered per session) and casts of a double to BIGINT
(DuckDB rounds half to even, Spark truncates: the one such cast, the listing's creation second,
goes through ``bround``).
``tests/test_scale_out_spark.py`` compares both engines' tables row for row.

Output: each table is a folder of parquet parts ``data/features/{table}.parquet/`` written by the
executors (nothing is collected to the driver), timestamps as microseconds (Spark 4 cannot read
nanosecond parquet timestamps), replaced whole on a rerun. DuckDB, pyarrow and the Spark
point-in-time join read such a folder as one table.

``RANKER_SPARK_MASTER`` chooses the cluster (``local[2]`` by default); Java 17 must be installed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ranker.config import Settings
from ranker.data import schema
from ranker.features import build
from ranker.features.build import FeatureBuildError

# Registered in every session, so the shared queries' epoch() means what it means in DuckDB
# (seconds since 1970 as a double, fractions kept).
_EPOCH_FUNCTION = "CREATE OR REPLACE TEMPORARY FUNCTION epoch(ts TIMESTAMP) RETURNS DOUBLE RETURN unix_micros(ts) / 1e6"

_SNAPSHOTS = """
SELECT explode(sequence(date_trunc('DAY', min(timestamp)), date_trunc('DAY', max(timestamp)) + INTERVAL 1 DAY,
                        INTERVAL 1 DAY)) AS snapshot_ts
FROM events
"""


class SparkUnavailable(FeatureBuildError):
    """Spark cannot start here (no Java, or pyspark missing); the message says what to install."""


def java_available() -> bool:
    """Whether a Java runtime Spark can start is on this machine (JAVA_HOME or ``java`` on PATH)."""
    home = os.environ.get("JAVA_HOME")
    return bool((home and (Path(home) / "bin" / "java").exists()) or shutil.which("java"))


@contextlib.contextmanager
def spark_session(settings: Settings, *, app_name: str = "ranker") -> Iterator[Any]:
    """A SparkSession on ``settings.spark_master`` in UTC, writing microsecond timestamps.

    An already running session (a test's, a notebook's) is reused and left running; one started
    here is stopped on exit."""
    if not java_available():
        raise SparkUnavailable(
            "the spark engine needs Java 17 (JAVA_HOME or java on PATH): apt-get install openjdk-17-jre-headless"
        )
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise SparkUnavailable("the spark engine needs pyspark: pip install 'pyspark>=4.3,<4.4'") from None
    active = SparkSession.getActiveSession()
    if active is not None:
        _configure(active)
        yield active
        return
    builder = SparkSession.builder.master(settings.spark_master)
    if settings.spark_master.startswith("local"):
        # Spark's default of 200 shuffle partitions is sized for a cluster: on one machine each
        # costs a task per stage for kilobytes of data.
        builder = builder.config("spark.sql.shuffle.partitions", "4")
    session = (
        builder.appName(app_name)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.local.dir", str(settings.data_dir / "tmp" / "spark"))
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    try:
        _configure(session)
        yield session
    finally:
        session.stop()


def _configure(session: Any) -> None:
    session.conf.set("spark.sql.session.timeZone", "UTC")
    session.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    session.sql(_EPOCH_FUNCTION)


def spark_sql(duckdb_sql: str) -> str:
    """A query of :mod:`ranker.features.build` in Spark's dialect (see the module docstring)."""
    sql = duckdb_sql.replace("epoch(created_at)::BIGINT", "CAST(bround(epoch(created_at)) AS BIGINT)")
    return sql


def _setup_statements() -> list[tuple[str, str]]:
    """``build._SQL_SETUP``'s ``CREATE TABLE name AS query`` statements as (name, Spark query)."""
    out = []
    for statement in build._SQL_SETUP.split(";"):
        statement = "\n".join(line for line in statement.splitlines() if not line.strip().startswith("--")).strip()
        if not statement:
            continue
        match = re.fullmatch(r"CREATE TABLE (\w+) AS\s+(.*)", statement, flags=re.DOTALL)
        if match is None:
            raise AssertionError(f"unexpected setup statement in ranker.features.build: {statement[:60]}")
        name, query = match.groups()
        out.append((name, _SNAPSHOTS if name == "snapshots" else spark_sql(query)))
    return out


def _load_raw(spark: Any, raw_dir: Path) -> None:
    from pyspark.errors import PySparkException

    for table in (schema.EVENTS, schema.LISTINGS, schema.USERS, schema.SELLERS):
        path = raw_dir / table.file
        if not path.exists():
            raise FeatureBuildError(f"{path} not found: run `ranker data simulate` or `ranker data import` first")
        try:
            frame = spark.read.parquet(str(path))
        except PySparkException as exc:  # AnalysisException and kin: unreadable or nanosecond files
            raise FeatureBuildError(
                f"{path} is not readable by Spark ({str(exc).splitlines()[0]}); timestamps must be microseconds"
            ) from None
        missing = [c for c in table.names if c not in frame.columns]
        if missing:
            raise FeatureBuildError(f"{path}: missing column(s) {', '.join(missing)}")
        frame.createOrReplaceTempView(table.name)
    if spark.sql("SELECT 1 FROM events LIMIT 1").count() == 0:
        raise FeatureBuildError(f"{raw_dir / schema.EVENTS.file} holds no events: nothing to aggregate")


def table_sql(name: str) -> str:
    """The Spark query of one feature table."""
    return spark_sql(build.table_query(name))


def build_features_spark(settings: Settings, *, progress=None) -> dict:
    """Compute every feature table from ``data/raw`` into ``data/features`` with Spark.

    Same contract as :func:`ranker.features.build.build_features` (returns rows per table, the
    snapshot range and the seconds); each table is a folder of parquet parts."""
    out_dir = settings.features_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    (settings.data_dir / "tmp").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    summary: dict = {"tables": {}, "engine": {"name": "spark", "master": settings.spark_master}}
    with spark_session(settings, app_name="ranker-features") as spark:
        _load_raw(spark, settings.raw_dir)
        cached = []
        for name, query in _setup_statements():
            frame = spark.sql(query).cache()
            frame.createOrReplaceTempView(name)
            cached.append(frame)
        spark.sql(
            "SELECT item_id, created_at, sold_at, " + spark_sql(build._LISTING_ATTRS) + " FROM listings"
        ).createOrReplaceTempView("lst")
        try:
            for name in build.TABLES:
                table_started = time.perf_counter()
                path = out_dir / f"{name}.parquet"
                tmp = out_dir / f".{name}.parquet.spark-tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                # Sorted within each part (DuckDB sorts its one file): no sampling job for a global order.
                frame = spark.sql(table_sql(name)).sortWithinPartitions("event_timestamp")
                frame.write.option("compression", "zstd").parquet(str(tmp))
                _replace(tmp, path)
                rows = _parquet_rows(path)
                summary["tables"][name] = {
                    "rows": int(rows),
                    "path": str(path),
                    "seconds": round(time.perf_counter() - table_started, 2),
                }
                if progress is not None:
                    progress(name)
            first, last = spark.sql("SELECT min(snapshot_ts), max(snapshot_ts) FROM snapshots").first()
            summary["snapshots"] = {"first": str(first), "last": str(last)}
        finally:
            for frame in cached:
                frame.unpersist()
    summary["seconds"] = round(time.perf_counter() - started, 2)
    return summary


def _replace(tmp: Path, path: Path) -> None:
    """Put the finished folder in place of the old table (a file from DuckDB or a folder)."""
    for marker in tmp.glob("*.crc"):
        marker.unlink()
    (tmp / "_SUCCESS").unlink(missing_ok=True)
    if path.is_dir():
        old = path.with_name(path.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        path.replace(old)
        tmp.replace(path)
        shutil.rmtree(old)
    else:
        path.unlink(missing_ok=True)
        tmp.replace(path)


def _parquet_rows(path: Path) -> int:
    """Rows of a parquet folder, from the parts' footers (no data read)."""
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(part).metadata.num_rows for part in sorted(path.glob("*.parquet")))

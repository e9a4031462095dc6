"""The Spark point-in-time join alone, for comparing versions of ``ranker/features/spark_offline.py``:
the labelled entity rows are written once (``data/tmp/prof-SURFACE/entities.parquet``, reused), then
one ``pit_join_to_parquet`` is timed, wall clock and CPU seconds of the process tree (the JVM
included). CPU seconds move far less than the wall clock on a shared host; run two versions at the
same time (``PYTHONPATH`` picks the tree) and compare those.

    RANKER_HOME=/tmp/w4 PYTHONPATH=$PWD .venv/bin/python benchmarks/spark_pit_join.py search
    RANKER_HOME=/tmp/w4 PYTHONPATH=/other/tree .venv/bin/python benchmarks/spark_pit_join.py search \\
        spark.driver.memory=3g       # any Spark settings as key=value
"""

import json
import os
import shutil
import sys
import time
import warnings

import psutil
import pyarrow.parquet as pq

warnings.filterwarnings("ignore")


def tree_cpu() -> float:
    me = psutil.Process()
    return sum(sum(p.cpu_times()[:2]) for p in [me, *me.children(recursive=True)])


def main() -> None:
    from benchmarks._stack import machine_speed
    from ranker.config import Settings
    from ranker.features import spark_offline
    from ranker.features.store import feature_store, service_spec
    from ranker.training.dataset import DatasetOptions, _entity_table, _labelled_table

    surface = sys.argv[1] if len(sys.argv) > 1 else "search"
    confs = dict(a.split("=", 1) for a in sys.argv[2:])
    print(machine_speed(), flush=True)
    settings = Settings.from_env()
    opts = DatasetOptions(surface=surface)
    store = feature_store(settings)
    spec = service_spec(store, opts.service)
    work = settings.data_dir / "tmp" / f"prof-{surface}"
    work.mkdir(parents=True, exist_ok=True)
    entities = work / "entities.parquet"
    if not entities.exists():
        rows = _labelled_table(settings, opts)
        pq.write_table(_entity_table(rows, spec), entities, coerce_timestamps="us", allow_truncated_timestamps=True)
    n = pq.ParquetFile(entities).metadata.num_rows
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master(settings.spark_master).config("spark.sql.shuffle.partitions", "4")
    for key, value in confs.items():
        builder = builder.config(key, value)
    t0 = time.perf_counter()
    spark = (
        builder.appName("pit-join")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.local.dir", str(settings.data_dir / "tmp" / "spark"))
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    out = work / f"features-{os.getpid()}.parquet"
    t1, c1 = time.perf_counter(), tree_cpu()
    spark_offline.pit_join_to_parquet(spark, settings, store, opts.service, entities, out)
    t2, c2 = time.perf_counter(), tree_cpu()
    print(
        json.dumps(
            {
                "rows": n,
                "confs": confs,
                "session_s": round(t1 - t0, 1),
                "join_s": round(t2 - t1, 1),
                "join_cpu_s": round(c2 - c1, 1),
                "join_cpu_s_per_1M": round((c2 - c1) / n * 1e6, 1),
                "module": spark_offline.__file__,
            }
        ),
        flush=True,
    )
    spark.stop()
    shutil.rmtree(out, ignore_errors=True)
    print(machine_speed(), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()

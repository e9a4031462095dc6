"""The Spark engine of the feature tables against DuckDB's, row for row, on a small world
(skipped with the reason when Java is absent). One SparkSession (local[2]) for the module."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from ranker.features.spark_build import java_available, spark_sql

pytestmark = pytest.mark.skipif(not java_available(), reason="Spark tests need Java 17 (JAVA_HOME or java on PATH)")

# Floats: both engines compute in double and store float32; the order of a sum differs.
FLOAT_RTOL = 1e-6


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from ranker.config import Settings
    from ranker.features.spark_build import spark_session

    home = tmp_path_factory.mktemp("spark_session")
    (home / "data" / "tmp").mkdir(parents=True)
    with spark_session(Settings(home=home), app_name="ranker-tests") as session:
        yield session


def test_dialect_rounds_like_duckdb():
    # DuckDB's cast of a double to BIGINT rounds half to even; Spark's truncates.
    assert "bround(epoch(created_at))" in spark_sql("epoch(created_at)::BIGINT AS listing_created_epoch")


def _sorted_frame(table) -> pd.DataFrame:
    frame = table.to_pandas()
    keys = [c for c in frame.columns if frame[c].dtype == object or "datetime" in str(frame[c].dtype)]
    return frame.sort_values(keys).reset_index(drop=True)


@pytest.mark.slow
def test_spark_tables_equal_duckdb_tables(world, spark, tmp_path):
    import shutil

    from ranker.features.build import TABLES
    from ranker.features.spark_build import build_features_spark
    from tests.conftest import make_home

    home = make_home(tmp_path / "spark_home")
    shutil.copytree(world.raw_dir, home.raw_dir)
    summary = build_features_spark(home)
    assert summary["engine"]["name"] == "spark"
    for name in TABLES:
        duck = pq.read_table(world.features_dir / f"{name}.parquet")
        path = home.features_dir / f"{name}.parquet"
        assert path.is_dir() and not list(path.glob("*.crc")), "a folder of parquet parts, no Hadoop checksums"
        sparked = ds.dataset(path, format="parquet").to_table()
        assert sparked.schema.equals(duck.schema.remove_metadata()) or {f.name: f.type for f in sparked.schema} == {
            f.name: f.type for f in duck.schema
        }, name
        assert summary["tables"][name]["rows"] == duck.num_rows == sparked.num_rows, name
        a, b = _sorted_frame(duck), _sorted_frame(sparked)
        for column in a.columns:
            x, y = a[column], b[column]
            if x.dtype.kind == "f":
                assert np.allclose(x.to_numpy(float), y.to_numpy(float), rtol=FLOAT_RTOL, atol=0, equal_nan=True), (
                    name,
                    column,
                )
            else:  # counts, keys, timestamps, strings: exact
                assert (
                    x.astype(object).where(x.notna(), None).tolist() == y.astype(object).where(y.notna(), None).tolist()
                ), (name, column)
    # DuckDB (and so Feast's DuckDB offline store) reads a Spark-built table folder as one table.
    import duckdb

    path = home.features_dir / "item_stats.parquet"
    assert (
        duckdb.sql(f"SELECT count(*) FROM read_parquet('{path}')").fetchall()[0][0]
        == summary["tables"]["item_stats"]["rows"]
    )


def test_spark_build_says_what_is_missing(spark, tmp_path):
    from ranker.features.build import FeatureBuildError
    from ranker.features.spark_build import build_features_spark
    from tests.conftest import make_home

    home = make_home(tmp_path / "empty_home")
    with pytest.raises(FeatureBuildError, match="not found: run `ranker data simulate`"):
        build_features_spark(home)


def test_a_rebuilt_table_replaces_the_old_one_whole(tmp_path):
    from ranker.features.spark_build import _replace

    path = tmp_path / "item_stats.parquet"
    path.write_bytes(b"duckdb file")
    for run in ("first", "second"):
        tmp = tmp_path / ".item_stats.parquet.spark-tmp"
        tmp.mkdir()
        (tmp / f"part-{run}.parquet").write_bytes(b"x")
        (tmp / f".part-{run}.parquet.crc").write_bytes(b"c")
        (tmp / "_SUCCESS").write_bytes(b"")
        _replace(tmp, path)
        assert sorted(p.name for p in path.iterdir()) == [f"part-{run}.parquet"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["item_stats.parquet"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("surface", "broadcast_bytes"),
    [("search", None), ("recs", None), ("search", "0")],
    ids=["search", "recs", "search-shuffled"],
)
def test_spark_training_set_equals_duckdb_training_set(world, spark, tmp_path, surface, broadcast_bytes):
    """The point-in-time join on Spark gives Feast's rows: the same fingerprint, rows and features,
    with the test world's small feature tables broadcast (the default) and with every view joined
    by a shuffle (what large tables take)."""
    import shutil

    from ranker.features.spark_offline import BROADCAST_CONF
    from ranker.training.dataset import DatasetOptions, build_dataset

    if broadcast_bytes is None:
        spark.conf.unset(BROADCAST_CONF)
    else:
        spark.conf.set(BROADCAST_CONF, broadcast_bytes)

    # A private copy of the world: the shared one's datasets stay those of the DuckDB engine.
    shutil.copytree(world.home, tmp_path / "home", ignore=shutil.ignore_patterns("artifacts", "__pycache__"))
    home = world.with_(home=tmp_path / "home")
    options = DatasetOptions(surface=surface, chunk_rows=20_000)
    duck = build_dataset(home, options, engine="duckdb")
    duck_rows = pq.read_table(duck["path"])
    sparked = build_dataset(home, options, engine="spark")
    assert sparked["engine"] == "spark" and duck["engine"] == "duckdb"
    spark_rows = pq.read_table(sparked["path"])
    assert spark_rows.equals(duck_rows)
    assert sparked["fingerprint"] == duck["fingerprint"]
    # The join found features (not all missing) and the TTL left some missing: both cases are exercised.
    frame = spark_rows.to_pandas()
    assert frame[list(sparked["features"])].notna().any().all()
    assert frame[list(sparked["features"])].isna().any().any()
    assert not (home.data_dir / "tmp" / f"dataset-spark-{surface}").exists(), "working files removed"
    spark.conf.unset(BROADCAST_CONF)

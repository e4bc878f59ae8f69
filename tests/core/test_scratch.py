"""Scratch Parquet folders: Spark's own source on local disks, the pyarrow data source where Spark has no
filesystem for the scheme (an S3 bucket with pip's pyspark); the same files either way."""
from __future__ import annotations

import pytest
from longtail.core import files
from longtail.core.scratch import read_parquet, write_parquet
from pyspark.sql import functions as F

pytestmark = pytest.mark.spark


def _rows(spark):
    return spark.range(40).select(
        F.col("id").cast("int").alias("user_idx"),
        F.array(F.col("id").cast("int"), F.lit(7)).alias("items"),
        (F.col("id") % 4).cast("int").alias("shard"),
    ).repartition(4, "shard")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_partitioned_folder_round_trip(where, request, tmp_path):
    spark = request.getfixturevalue("s3_spark" if where == "s3" else "spark")
    root = f"{request.getfixturevalue('s3_bucket')}/scratch" if where == "s3" else str(tmp_path / "scratch")
    write_parquet(_rows(spark), f"{root}/shards", partition_by=["shard"])
    write_parquet(_rows(spark), f"{root}/shards", partition_by=["shard"])  # replaces, never adds
    assert files.parquet_rows(f"{root}/shards") == 40
    assert files.parquet_rows(f"{root}/shards/shard=3") == 10  # Hive-style folders, as the trainer reads them
    back = read_parquet(spark, f"{root}/shards", schema=_rows(spark).schema)
    assert sorted(r["user_idx"] for r in back.where("shard = 3").collect()) == list(range(3, 40, 4))
    plain = read_parquet(spark, _write_plain(spark, root))
    assert plain.count() == 40 and plain.columns == ["user_idx", "items", "shard"]


def _write_plain(spark, root):
    write_parquet(_rows(spark), f"{root}/users")
    return f"{root}/users"

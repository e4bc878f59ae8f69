"""The Python Data Source over delta-rs: writer tasks and commit without Spark, reader through Spark."""
from __future__ import annotations

import datetime as dt
import json
import os

import pyarrow as pa
import pytest
from chispa import assert_df_equality
from deltalake import DeltaTable, write_deltalake
from longtail.core import delta_rs
from longtail.core.delta_rs import DeltaRsWriter, UnsupportedDeltaTable

SCHEMA = {
    "type": "struct",
    "fields": [
        {"name": "user_id", "type": "string", "nullable": True, "metadata": {}},
        {"name": "score", "type": "double", "nullable": True, "metadata": {}},
        {"name": "ts", "type": "timestamp", "nullable": True, "metadata": {}},
        {"name": "run_date", "type": "date", "nullable": True, "metadata": {}},
    ],
}
D1, D2 = dt.date(2024, 1, 1), dt.date(2024, 1, 2)


def batch(users, scores, stamps, days):
    return pa.record_batch(
        [
            pa.array(users, pa.string()),
            pa.array(scores, pa.float64()),
            pa.array(stamps, pa.timestamp("us", "UTC")),
            pa.array(days, pa.date32()),
        ],
        names=["user_id", "score", "ts", "run_date"],
    )


def writer(path, overwrite=False, partition_by=("run_date",), replace=None, write_id="w1"):
    options = {
        "path": path,
        "table_schema": json.dumps(SCHEMA),
        "partition_by": json.dumps(list(partition_by)),
        "replace_partitions": json.dumps(replace or {}),
        "write_id": write_id,
        "table": "scores",
    }
    return DeltaRsWriter(options, overwrite)


UTC = dt.timezone.utc
T0 = dt.datetime(2024, 1, 1, 8, 0, 0, 123456, tzinfo=UTC)
T1 = dt.datetime(2024, 1, 1, 9, 30, 0, 999001, tzinfo=UTC)


def test_tasks_write_files_that_one_commit_adds(tmp_path):
    path = str(tmp_path / "scores")
    w = writer(path)
    # Two "tasks": the first spans two partitions in one batch, the second brings a second batch.
    first = w.write(iter([batch(["a", "b"], [1.0, None], [T0, T1], [D1, D2])]))
    second = w.write(iter([batch(["c"], [3.5], [None], [D1]), batch([], [], [], [])]))
    assert len(first.adds) == 2 and len(second.adds) == 1
    assert not DeltaTable.is_deltatable(path)  # nothing is visible before the commit
    w.commit([first, second])

    table = DeltaTable(path)
    assert table.version() == 0
    assert table.metadata().partition_columns == ["run_date"]
    rows = sorted(table.to_pyarrow_table().to_pylist(), key=lambda r: r["user_id"])
    assert [(r["user_id"], r["score"], r["run_date"]) for r in rows] == [("a", 1.0, D1), ("b", None, D2), ("c", 3.5, D1)]
    assert rows[0]["ts"] == T0


def test_add_actions_carry_stats(tmp_path):
    path = str(tmp_path / "scores")
    w = writer(path, partition_by=())
    message = w.write(iter([batch(["b", "a"], [2.0, None], [T1, T0], [D1, D2])]))
    (add,) = message.adds
    stats = json.loads(add["stats"])
    assert stats["numRecords"] == 2
    assert stats["nullCount"] == {"user_id": 0, "score": 1, "ts": 0, "run_date": 0}
    assert stats["minValues"] == {"user_id": "a", "score": 2.0, "ts": "2024-01-01T08:00:00.123Z", "run_date": "2024-01-01"}
    # The max timestamp is rounded up to the millisecond so it stays an upper bound.
    assert stats["maxValues"]["ts"] == "2024-01-01T09:30:01.000Z"
    assert add["size"] == os.path.getsize(os.path.join(path, add["path"]))


def test_abort_and_sweep_remove_unfinished_files(tmp_path):
    path = str(tmp_path / "scores")
    w = writer(path, write_id="abc123")
    done = w.write(iter([batch(["a"], [1.0], [T0], [D1])]))
    stray = w.write(iter([batch(["b"], [1.0], [T0], [D2])]))  # stands for a task that failed after writing
    w.abort([done, None])
    assert not os.path.exists(os.path.join(path, done.adds[0]["path"]))
    assert os.path.exists(os.path.join(path, stray.adds[0]["path"]))
    delta_rs.sweep_write(path, "abc123")
    assert not os.path.exists(os.path.join(path, stray.adds[0]["path"]))


def test_replacing_a_partition_checks_rows_and_keeps_other_partitions(tmp_path):
    path = str(tmp_path / "scores")
    w = writer(path)
    w.commit([w.write(iter([batch(["a", "b"], [1.0, 2.0], [T0, T0], [D1, D2])]))])

    replace = writer(path, overwrite=True, replace={"run_date": "2024-01-01"}, write_id="w2")
    with pytest.raises(ValueError, match=delta_rs.PARTITION_MISMATCH + ".*run_date=2024-01-02"):
        replace.write(iter([batch(["x"], [9.0], [T0], [D2])]))
    replace.commit([replace.write(iter([batch(["z"], [9.0], [T0], [D1])]))])
    rows = sorted((r["user_id"], r["run_date"]) for r in DeltaTable(path).to_pyarrow_table().to_pylist())
    assert rows == [("b", D2), ("z", D1)]


def test_partition_values_and_folders():
    assert delta_rs.partition_string(D1) == "2024-01-01"
    assert delta_rs.partition_string(True) == "true"
    assert delta_rs.partition_string(dt.datetime(2024, 1, 1, 5)) == "2024-01-01 05:00:00.000000"
    assert delta_rs.partition_string(None) is None
    assert delta_rs.partition_dir(["a", "b"], ["x y:z/%", None]) == "a=x y%3Az%2F%25/b=__HIVE_DEFAULT_PARTITION__"


@pytest.mark.spark
def test_registration_probe_and_delta_alias(spark, tmp_path):
    assert delta_rs.register(spark) is False  # no JVM Delta in the test session
    path = str(tmp_path / "t")
    write_deltalake(path, pa.table({"a": [1, 2]}))
    assert sorted(r.a for r in spark.read.format("delta").load(path).collect()) == [1, 2]


@pytest.mark.spark
def test_python_reader_pins_versions_and_fills_evolved_and_partition_columns(spark, tmp_path):
    path = str(tmp_path / "t")
    first = pa.table({"a": pa.array([1], pa.int64()), "p": ["x y:z"]})
    write_deltalake(path, first, partition_by=["p"])
    second = pa.table({"a": pa.array([2], pa.int64()), "p": [None], "b": ["new"]})
    write_deltalake(path, second, mode="append", partition_by=["p"], schema_mode="merge")
    delta_rs.register(spark)

    latest = spark.read.format(delta_rs.NAME).load(path)
    assert latest.columns == ["a", "p", "b"]
    assert sorted(latest.collect()) == sorted([(1, "x y:z", None), (2, None, "new")])
    old = spark.read.format(delta_rs.NAME).option("versionAsOf", "0").load(path)
    assert old.columns == ["a", "p"] and old.collect() == [(1, "x y:z")]


@pytest.mark.spark
def test_python_reader_matches_spark_parquet_reader(spark, warehouse):
    rows = [("007", 1.5, dt.datetime(2024, 1, 1, 5), D1), ("b:/ %", None, None, D2), ("c", 2.0, None, None)]
    df = spark.createDataFrame(rows, "user_id string, score double, ts timestamp, run_date date")
    warehouse.write(df, "scores", partition_by=["user_id"])
    fast = warehouse.read("scores")  # Spark's Parquet reader over the version's files
    assert "parquet" in fast._jdf.queryExecution().analyzed().toString().lower()
    slow = spark.read.format(delta_rs.NAME).load(warehouse.path("scores"))
    assert_df_equality(fast, slow, ignore_row_order=True)
    assert_df_equality(fast, df, ignore_row_order=True)


@pytest.mark.spark
def test_python_reader_reads_an_empty_table(spark, tmp_path):
    path = str(tmp_path / "t")
    write_deltalake(path, pa.table({"a": pa.array([], pa.int32())}))
    delta_rs.register(spark)
    read = spark.read.format(delta_rs.NAME).load(path)
    assert read.columns == ["a"] and read.collect() == []


def test_column_mapping_is_refused(tmp_path):
    path = str(tmp_path / "t")
    write_deltalake(path, pa.table({"a": [1]}), configuration={"delta.columnMapping.mode": "name"})
    with pytest.raises(UnsupportedDeltaTable, match="table t.*column mapping.*native"):
        delta_rs.check_supported(DeltaTable(path), "t", path)


@pytest.mark.spark
def test_direct_writes_create_nullable_tables(spark, tmp_path):
    from pyspark.sql import functions as F

    path = str(tmp_path / "t")
    delta_rs.register(spark)
    df = spark.range(3, numPartitions=2).select(F.col("id"), F.lit("x").alias("tag"))  # both non-nullable
    df.write.format("delta").mode("overwrite").save(path)
    df.write.format("delta").mode("append").save(path)
    table = DeltaTable(path)
    assert table.version() == 1
    assert all(f.nullable for f in table.schema().fields)
    assert table.to_pyarrow_table().num_rows == 6

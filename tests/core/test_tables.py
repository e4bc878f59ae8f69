"""Warehouse: Delta round trips in every mode, schema checks, failed writes and job() rollback."""
from __future__ import annotations

import datetime as dt
import glob
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from chispa import assert_df_equality
from longtail.core.errors import (
    ConflictError,
    EnvironmentProblem,
    InputError,
    TableNotFoundError,
    TableSchemaMismatchError,
)
from longtail.core.tables import Warehouse
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    DateType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

pytestmark = pytest.mark.spark

D1, D2, D3 = dt.date(2024, 1, 1), dt.date(2024, 1, 2), dt.date(2024, 1, 3)
EVENTS = StructType(
    [StructField("user_id", StringType()), StructField("n", IntegerType()), StructField("run_date", DateType())]
)


def events(spark, rows):
    return spark.createDataFrame(rows, EVENTS)


def assert_same_rows(actual, expected):
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_column_order=False)


def parquet_files(path):
    return sorted(glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True))


def commit_actions(path, version):
    with open(os.path.join(path, "_delta_log", f"{version:020d}.json")) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def digest(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def test_engine_resolves_to_delta_rs_without_jvm_delta(warehouse):
    assert warehouse.engine == "delta-rs"
    assert warehouse.root == os.path.abspath(warehouse.root)


def test_native_engine_without_jars_is_a_clear_error(spark, tmp_path, warehouse):
    if warehouse.engine == "native":
        pytest.skip("delta-spark's JVM classes are on the classpath")
    with pytest.raises(EnvironmentProblem, match="native.*classpath"):
        Warehouse(spark, str(tmp_path), engine="native")


@pytest.mark.slow
def test_each_engine_reads_the_other_engines_tables(spark, tmp_path):
    root = str(tmp_path / "wh")
    if Warehouse(spark, root).engine == "native":  # this session has delta-spark's classes: both engines here
        each_engine_reads_the_others_tables(Warehouse(spark, root, engine="native"),
                                            Warehouse(spark, root, engine="delta-rs"), native_partition_columns)
        return
    why_not = native_delta_unavailable()
    if why_not:
        pytest.skip(why_not)
    # Delta's jars are at hand but not in this session (its JVM is running): a session of their own, in
    # one process with both engines (this file run as a script).
    try:
        done = subprocess.run([sys.executable, __file__, root], capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the native Delta check did not finish in {exc.timeout}s: {(exc.stdout or '')[-3000:]}")
    output = (done.stdout + done.stderr)[-6000:]
    if done.returncode == NATIVE_UNAVAILABLE:
        pytest.skip(f"native Delta engine not available: {done.stdout.strip().splitlines()[-1]}")
    assert done.returncode == 0, output


def test_overwrite_round_trip_and_versions(spark, warehouse):
    first = events(spark, [("a", 1, D1), ("b", None, D2)])
    second = events(spark, [("c", 3, D3)])
    assert warehouse.write(first, "events") == 0
    assert warehouse.write(second, "events") == 1
    assert warehouse.version("events") == 1
    assert_same_rows(warehouse.read("events"), second)
    assert_same_rows(warehouse.read("events", version=0), first)


def test_append_round_trip(spark, warehouse):
    warehouse.write(events(spark, [("a", 1, D1)]), "events")
    assert warehouse.write(events(spark, [("b", 2, D2)]), "events", mode="append") == 1
    assert_same_rows(warehouse.read("events"), events(spark, [("a", 1, D1), ("b", 2, D2)]))


def test_partition_overwrite_leaves_other_partitions_byte_for_byte(spark, warehouse):
    warehouse.write(events(spark, [("a", 1, D1), ("b", 2, D2), ("c", 3, D3)]), "events", partition_by=["run_date"])
    path = warehouse.path("events")
    others = {f: digest(f) for f in parquet_files(path) if "run_date=2024-01-01" not in f}
    version = warehouse.write(events(spark, [("z", 9, D1)]), "events", replace_partitions={"run_date": D1})
    assert version == 1
    assert_same_rows(warehouse.read("events"), events(spark, [("z", 9, D1), ("b", 2, D2), ("c", 3, D3)]))
    assert {f: digest(f) for f in others} == others
    # The commit removed only files of the replaced partition.
    removed = [a["remove"] for a in commit_actions(path, 1) if "remove" in a]
    assert removed and all(r["partitionValues"] == {"run_date": "2024-01-01"} for r in removed)


def test_partition_overwrite_of_a_new_table_partitions_it(spark, warehouse):
    warehouse.write(events(spark, [("a", 1, D1)]), "events", replace_partitions={"run_date": D1})
    warehouse.write(events(spark, [("b", 2, D2)]), "events", replace_partitions={"run_date": D2})
    assert_same_rows(warehouse.read("events"), events(spark, [("a", 1, D1), ("b", 2, D2)]))


def test_rows_outside_the_replaced_partition_are_an_error(spark, warehouse):
    warehouse.write(events(spark, [("a", 1, D1), ("b", 2, D2)]), "events", partition_by=["run_date"])
    with pytest.raises(InputError, match="table events.*run_date=2024-01-02.*run_date=2024-01-01"):
        warehouse.write(events(spark, [("z", 9, D1), ("y", 8, D2)]), "events", replace_partitions={"run_date": D1})
    assert warehouse.version("events") == 0
    assert_same_rows(warehouse.read("events"), events(spark, [("a", 1, D1), ("b", 2, D2)]))


def test_replace_partitions_must_name_the_partition_columns(spark, warehouse):
    warehouse.write(events(spark, [("a", 1, D1)]), "events", partition_by=["run_date"])
    with pytest.raises(TableSchemaMismatchError, match="table events.*replace_partitions"):
        warehouse.write(events(spark, [("a", 1, D1)]), "events", replace_partitions={"user_id": "a"})
    with pytest.raises(ValueError, match="append"):
        warehouse.write(events(spark, [("a", 1, D1)]), "events", mode="append", replace_partitions={"run_date": D1})


@pytest.mark.slow
def test_failed_write_leaves_the_table_as_it_was(spark, warehouse):
    before = events(spark, [("a", 1, D1), ("b", 2, D2)])
    warehouse.write(before, "events")
    path = warehouse.path("events")
    files_before = parquet_files(path)

    @F.udf("int")
    def fails_on_three(n):
        if n == 3:
            raise ValueError("task failure on purpose")
        return n

    # Two tasks: one succeeds (its file must be removed again), one fails.
    df = spark.range(0, 4, numPartitions=2).select(
        F.lit("u").alias("user_id"), fails_on_three(F.col("id").cast("int")).alias("n"), F.lit(D1).alias("run_date")
    )
    with pytest.raises(Exception, match="task failure on purpose"):
        warehouse.write(df, "events")
    assert warehouse.version("events") == 0
    assert_same_rows(warehouse.read("events"), before)
    assert parquet_files(path) == files_before


def test_schema_mismatch_names_table_and_column(spark, warehouse):
    warehouse.write(events(spark, [("a", 1, D1)]), "events")
    extra = events(spark, [("a", 1, D1)]).withColumn("score", F.lit(0.5))
    missing = events(spark, [("a", 1, D1)]).drop("n")
    retyped = events(spark, [("a", 1, D1)]).withColumn("n", F.col("n").cast("string"))
    with pytest.raises(TableSchemaMismatchError, match="table events.*column score is not in the table"):
        warehouse.write(extra, "events", mode="append")
    with pytest.raises(TableSchemaMismatchError, match="table events.*column n is missing"):
        warehouse.write(missing, "events")
    with pytest.raises(TableSchemaMismatchError, match="table events.*column n has type string.*but int"):
        warehouse.write(retyped, "events", mode="append")
    assert warehouse.version("events") == 0


def test_same_columns_in_another_order_and_nullability_are_accepted(spark, warehouse):
    warehouse.write(events(spark, [("a", 1, D1)]), "events")
    # Literals are non-nullable in Spark; the table's fields are nullable: still the same schema.
    other = spark.range(1).select(F.lit(D2).alias("run_date"), F.lit(2).alias("n"), F.lit("b").alias("user_id"))
    warehouse.write(other, "events", mode="append")
    assert_same_rows(warehouse.read("events"), events(spark, [("a", 1, D1), ("b", 2, D2)]))


@pytest.mark.slow
def test_evolve_schema_merges_on_append_and_replaces_on_overwrite(spark, warehouse):
    warehouse.write(events(spark, [("a", 1, D1)]), "events")
    extra = events(spark, [("b", 2, D2)]).withColumn("score", F.lit(0.5))
    warehouse.write(extra, "events", mode="append", evolve_schema=True)
    merged = StructType([*EVENTS.fields, StructField("score", DoubleType())])
    assert_same_rows(warehouse.read("events"), spark.createDataFrame([("a", 1, D1, None), ("b", 2, D2, 0.5)], merged))
    # Appending without the new column after the merge fills it with nulls.
    warehouse.write(events(spark, [("c", 3, D3)]), "events", mode="append", evolve_schema=True)
    assert warehouse.read("events").where("user_id = 'c' AND score IS NULL").count() == 1

    replaced = spark.createDataFrame([("x", 1.5)], "user_id string, weight double")
    warehouse.write(replaced, "events", evolve_schema=True)
    assert_same_rows(warehouse.read("events"), replaced)


def test_evolve_on_append_cannot_change_a_type(spark, warehouse):
    warehouse.write(events(spark, [("a", 1, D1)]), "events")
    retyped = events(spark, [("a", 1, D1)]).withColumn("n", F.col("n").cast("string"))
    with pytest.raises(TableSchemaMismatchError, match="column n has type string"):
        warehouse.write(retyped, "events", mode="append", evolve_schema=True)


def test_overwrite_with_evolve_can_repartition(spark, warehouse):
    warehouse.write(events(spark, [("a", 1, D1)]), "events", partition_by=["run_date"])
    with pytest.raises(TableSchemaMismatchError, match="partitioned by"):
        warehouse.write(events(spark, [("a", 1, D1)]), "events", partition_by=["user_id"])
    warehouse.write(events(spark, [("b", 2, D2)]), "events", partition_by=["user_id"], evolve_schema=True)
    assert_same_rows(warehouse.read("events"), events(spark, [("b", 2, D2)]))
    assert os.path.isdir(os.path.join(warehouse.path("events"), "user_id=b"))


def test_empty_table_keeps_its_schema(spark, warehouse):
    schema = StructType([StructField("user_id", StringType()), StructField("embedding", ArrayType(FloatType()))])
    warehouse.write(spark.createDataFrame([], schema), "empty")
    read = warehouse.read("empty")
    assert read.schema == schema
    assert read.count() == 0


def test_missing_table_is_a_clear_error(warehouse):
    with pytest.raises(TableNotFoundError, match="table nope.*" + warehouse.path("nope")):
        warehouse.read("nope")
    with pytest.raises(TableNotFoundError, match="table nope"):
        warehouse.version("nope")
    assert not warehouse.exists("nope")


def test_unknown_version_is_a_clear_error(spark, warehouse):
    warehouse.write(events(spark, [("a", 1, D1)]), "events")
    with pytest.raises(TableNotFoundError, match="no version 5.*latest is 0"):
        warehouse.read("events", version=5)


TYPES = StructType(
    [
        StructField("id", LongType()),
        StructField("ts", TimestampType()),
        StructField("day", DateType()),
        StructField("ints", ArrayType(IntegerType())),
        StructField("floats", ArrayType(FloatType())),
        StructField("attrs", MapType(StringType(), StringType())),
        StructField("nested", StructType([StructField("a", StringType()), StructField("b", ArrayType(LongType()))])),
        StructField("run_date", DateType()),
    ]
)
TYPE_ROWS = [
    (1, dt.datetime(2024, 3, 1, 12, 30, 15, 123456), dt.date(2024, 3, 1), [1, None, 3], [0.5, -1.25], {"k": "v", "n": None}, ("x", [1, 2]), D1),
    (2, None, None, None, None, None, None, D2),
    (3, dt.datetime(1999, 12, 31, 23, 59, 59), dt.date(1970, 1, 1), [], [], {}, (None, None), None),
]


def test_types_round_trip(spark, warehouse):
    df = spark.createDataFrame(TYPE_ROWS, TYPES)
    warehouse.write(df, "typed", partition_by=["run_date"])
    read = warehouse.read("typed")
    assert read.schema == TYPES
    assert_df_equality(read.orderBy("id"), df.orderBy("id"))  # maps cannot be sorted on: order by id
    # The session time zone is UTC: the instant is stored and read back unchanged.
    first = read.where("id = 1").first()
    assert first.ts == dt.datetime(2024, 3, 1, 12, 30, 15, 123456)


def test_deltalake_reads_what_we_write(spark, warehouse):
    from deltalake import DeltaTable

    df = spark.createDataFrame(TYPE_ROWS, TYPES)
    warehouse.write(df, "typed", partition_by=["run_date"])
    rows = sorted(DeltaTable(warehouse.path("typed")).to_pyarrow_table().to_pylist(), key=lambda r: r["id"])
    assert [r["id"] for r in rows] == [1, 2, 3]
    assert rows[0]["ts"] == dt.datetime(2024, 3, 1, 12, 30, 15, 123456, tzinfo=dt.timezone.utc)
    assert rows[0]["floats"] == [0.5, -1.25] and rows[0]["ints"] == [1, None, 3]
    assert dict(rows[0]["attrs"]) == {"k": "v", "n": None}
    assert rows[0]["run_date"] == D1 and rows[2]["run_date"] is None


def test_reads_tables_written_by_deltalake(spark, warehouse):
    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake

    data = pa.table(
        {
            "user_id": ["a", "b", "c"],
            "n": pa.array([1, None, 3], pa.int32()),
            "ts": pa.array([dt.datetime(2024, 1, 1, 5), None, dt.datetime(2024, 1, 2)], pa.timestamp("us", "UTC")),
            "run_date": pa.array([D1, D1, D2], pa.date32()),
        }
    )
    write_deltalake(warehouse.path("foreign"), data, partition_by=["run_date"])
    write_deltalake(warehouse.path("foreign"), data.slice(0, 1), mode="append", partition_by=["run_date"])
    read = warehouse.read("foreign")
    assert read.columns == ["user_id", "n", "ts", "run_date"]
    expected = spark.createDataFrame(
        [("a", 1, dt.datetime(2024, 1, 1, 5), D1), ("b", None, None, D1), ("c", 3, dt.datetime(2024, 1, 2), D2),
         ("a", 1, dt.datetime(2024, 1, 1, 5), D1)],
        "user_id string, n int, ts timestamp, run_date date",
    )
    assert_same_rows(read, expected)
    assert warehouse.read("foreign", version=0).count() == 3
    # And we can keep writing to it.
    replacement = spark.createDataFrame([("z", 9, None, D2)], expected.schema)
    warehouse.write(replacement, "foreign", replace_partitions={"run_date": D2})
    assert sorted(r["user_id"] for r in DeltaTable(warehouse.path("foreign")).to_pyarrow_table().to_pylist()) == [
        "a", "a", "b", "z"
    ]


def test_two_tasks_write_one_commit(spark, warehouse):
    df = events(spark, [(f"u{i}", i, D1) for i in range(10)]).repartition(2)
    assert df.rdd.getNumPartitions() == 2
    assert warehouse.write(df, "events") == 0
    adds = [a["add"] for a in commit_actions(warehouse.path("events"), 0) if "add" in a]
    assert len(adds) == 2
    assert sum(json.loads(a["stats"])["numRecords"] for a in adds) == 10
    assert not os.path.exists(os.path.join(warehouse.path("events"), "_delta_log", f"{1:020d}.json"))


def test_job_rolls_back_every_table_written_in_it(spark, warehouse):
    warehouse.write(events(spark, [("a", 1, D1)]), "kept")
    with pytest.raises(RuntimeError, match="stage failed"):
        with warehouse.job():
            warehouse.write(events(spark, [("b", 2, D2)]), "kept")
            warehouse.write(events(spark, [("c", 3, D3)]), "kept", mode="append")
            warehouse.write(events(spark, [("n", 0, D1)]), "created")
            raise RuntimeError("stage failed")
    assert_same_rows(warehouse.read("kept"), events(spark, [("a", 1, D1)]))
    assert not warehouse.exists("created")
    assert not os.path.exists(warehouse.path("created"))


def test_job_keeps_what_a_successful_block_wrote_and_nests(spark, warehouse):
    with warehouse.job():
        warehouse.write(events(spark, [("a", 1, D1)]), "outer")
        with pytest.raises(ValueError):
            with warehouse.job():
                warehouse.write(events(spark, [("b", 2, D2)]), "outer", mode="append")
                raise ValueError("inner failed")
        warehouse.write(events(spark, [("c", 3, D3)]), "outer", mode="append")
    assert_same_rows(warehouse.read("outer"), events(spark, [("a", 1, D1), ("c", 3, D3)]))


def test_a_job_conflicts_with_a_change_to_what_it_read(spark, warehouse):
    warehouse.write(events(spark, [("a", 1, D1)]), "ids")
    other = Warehouse(spark, warehouse.root)  # another job on the same tables
    with pytest.raises(ConflictError, match=r"table ids: concurrent write: commit 1 .*read at version 0"):
        with warehouse.job():
            top = warehouse.read("ids").agg(F.max("n")).first()[0]
            other.write(events(spark, [("b", 2, D1)]), "ids", mode="append")
            warehouse.write(events(spark, [("c", top + 1, D1)]), "ids", mode="append")
    assert_same_rows(warehouse.read("ids"), events(spark, [("a", 1, D1), ("b", 2, D1)]))
    assert len(parquet_files(warehouse.path("ids"))) == 2  # the refused write's files are gone


def test_blind_appends_and_other_partitions_do_not_conflict(spark, warehouse):
    warehouse.write(events(spark, [("a", 1, D1)]), "recs", partition_by=["run_date"])
    other = Warehouse(spark, warehouse.root)
    with warehouse.job():
        warehouse.read("runs") if warehouse.exists("runs") else None
        other.write(events(spark, [("x", 9, D2)]), "recs", replace_partitions={"run_date": D2})
        other.write(events(spark, [("x", 9, D2)]), "runs", mode="append")
        warehouse.write(events(spark, [("b", 2, D1)]), "recs", replace_partitions={"run_date": D1})
        warehouse.write(events(spark, [("b", 2, D1)]), "runs", mode="append")
    assert_same_rows(warehouse.read("recs"), events(spark, [("b", 2, D1), ("x", 9, D2)]))
    assert warehouse.read("runs").count() == 2


def test_replacing_a_partition_conflicts_with_a_concurrent_write_to_it(spark, warehouse):
    warehouse.write(events(spark, [("a", 1, D1)]), "recs", partition_by=["run_date"])
    other = Warehouse(spark, warehouse.root)
    raced = []

    def race(name):  # the other writer commits while our files wait for their commit
        if name == "commit:recs" and not raced:
            raced.append(name)
            other.write(events(spark, [("x", 9, D1)]), "recs", mode="append")

    from longtail.core import faults

    faults.install(race)
    try:
        with pytest.raises(ConflictError, match="added data in run_date=2024-01-01"):
            warehouse.write(events(spark, [("b", 2, D1)]), "recs", replace_partitions={"run_date": D1})
    finally:
        faults.install(None)
    assert_same_rows(warehouse.read("recs"), events(spark, [("a", 1, D1), ("x", 9, D1)]))


def test_rollback_never_erases_another_writers_commit(spark, warehouse):
    warehouse.write(events(spark, [("a", 1, D1), ("b", 1, D2)]), "recs", partition_by=["run_date"])
    warehouse.write(events(spark, [("a", 1, D1)]), "flat")
    other = Warehouse(spark, warehouse.root)
    with pytest.raises(RuntimeError, match="stage failed") as err:
        with warehouse.job():
            warehouse.write(events(spark, [("new", 2, D1)]), "recs", replace_partitions={"run_date": D1})
            warehouse.write(events(spark, [("new", 2, D1)]), "flat", mode="append")
            other.write(events(spark, [("theirs", 3, D2)]), "recs", replace_partitions={"run_date": D2})
            other.write(events(spark, [("theirs", 3, D1)]), "flat", mode="append")
            raise RuntimeError("stage failed")
    # Another partition changed: ours goes back, theirs stays.
    assert_same_rows(warehouse.read("recs"), events(spark, [("a", 1, D1), ("theirs", 3, D2)]))
    # The same (only) partition changed after ours: left as it is, and the error says so.
    assert_same_rows(warehouse.read("flat"),
                     events(spark, [("a", 1, D1), ("new", 2, D1), ("theirs", 3, D1)]))
    assert any("table flat:" in note and "left as it is" in note for note in err.value.__notes__)


def test_three_concurrent_score_like_runs_keep_every_partition_and_run_row(spark, warehouse):
    import threading

    def run(day, n):
        wh = Warehouse(spark, warehouse.root)
        with wh.job():
            wh.write(events(spark, [(f"u{n}", n, day)]), "recs", partition_by=["run_date"],
                     replace_partitions={"run_date": day})
            wh.write(events(spark, [("run", n, day)]), "runs", mode="append")

    warehouse.write(events(spark, [("u0", 0, D1)]), "recs", partition_by=["run_date"])
    warehouse.write(events(spark, [("run", 0, D1)]), "runs")
    threads = [threading.Thread(target=run, args=(d, n)) for n, d in enumerate((D1, D2, D3), start=1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r["n"] for r in warehouse.read("recs").collect()) == [1, 2, 3]
    assert sorted(r["n"] for r in warehouse.read("runs").collect()) == [0, 1, 2, 3]


def test_file_uri_root(spark, tmp_path):
    wh = Warehouse(spark, (tmp_path / "wh").as_uri())
    assert wh.root == str(tmp_path / "wh")
    wh.write(events(spark, [("a", 1, D1)]), "events")
    assert wh.read("events").count() == 1


def test_refuses_tables_with_deletion_vectors(spark, warehouse):
    import pyarrow as pa
    from deltalake import write_deltalake
    from longtail.core.delta_rs import UnsupportedDeltaTable

    write_deltalake(
        warehouse.path("dv"), pa.table({"a": [1]}), configuration={"delta.enableDeletionVectors": "true"}
    )
    with pytest.raises(UnsupportedDeltaTable, match="table dv.*deletion vectors"):
        warehouse.read("dv")


# ---------------------------------------------------------------------------- native Delta <-> delta-rs

#: The delta-spark jar and the jars it needs (delta-storage), separated by os.pathsep: the cross-engine
#: test then starts its native session with them (``spark.jars``) instead of resolving them.
DELTA_JARS_ENV = "LONGTAIL_DELTA_JARS"
#: Exit status of this file run as a script when no native Delta session can start.
NATIVE_UNAVAILABLE = 77
GENERATED = dt.datetime(2024, 1, 1, 3, 4, 5, tzinfo=dt.timezone.utc)


def delta_coordinate() -> str:
    """The Maven coordinate ``delta.engine: native`` resolves (``configure_spark_with_delta_pip``'s)."""
    from delta import configure_spark_with_delta_pip
    from pyspark.sql import SparkSession

    return configure_spark_with_delta_pip(SparkSession.Builder())._options["spark.jars.packages"]


def ivy_jar(coordinate: str) -> Path:
    """Where Spark's Ivy cache (``~/.ivy2.5.2``, Spark 4) keeps the jar of ``group:artifact:version``."""
    group, artifact, version = coordinate.split(":")
    return Path.home() / ".ivy2.5.2" / "cache" / group / artifact / "jars" / f"{artifact}-{version}.jar"


def native_delta_unavailable() -> str | None:
    """Why no native Delta session can start here (None: it can, from LONGTAIL_DELTA_JARS or the Ivy cache)."""
    if os.environ.get(DELTA_JARS_ENV):
        return None
    try:
        coordinate = delta_coordinate()
    except ImportError:
        return ("native Delta engine not available: delta-spark is not installed (pip install 'longtail[delta]'), "
                "and this session has no Delta JVM classes")
    if ivy_jar(coordinate).is_file():
        return None
    return (
        f"native Delta engine not available: this session has no Delta JVM classes, {DELTA_JARS_ENV} is unset "
        f"and the Ivy cache has no {coordinate} ({ivy_jar(coordinate)}). It runs where either is there: fetch the "
        "jars once with network access (python -c \"from longtail.core.config import SparkConfig; "
        "from longtail.core.session import build_spark; build_spark(SparkConfig(), delta_engine='native').stop()\") "
        f"or set {DELTA_JARS_ENV}=<delta-spark jar>{os.pathsep}<delta-storage jar>"
    )


def native_partition_columns(wh: Warehouse, table: str) -> list[str]:
    """The partition columns native Delta reads from the table's log."""
    from delta.tables import DeltaTable

    return list(DeltaTable.forPath(wh.spark, wh.path(table)).detail().first()["partitionColumns"])


def _recs(spark, rows, run_date):
    """``recommendations`` rows as ``score`` builds them: the run's date and time as literals (not null)."""
    from longtail.core import schemas

    written = [f for f in schemas.RECOMMENDATIONS_SCHEMA.fields if f.name not in ("run_date", "generated_at")]
    return (
        spark.createDataFrame(rows, StructType(written))
        .withColumn("run_date", F.lit(run_date))
        .withColumn("generated_at", F.lit(GENERATED).cast("timestamp"))
    )


def assert_same_rows_any_nullability(actual, expected):
    """Rows and column types equal; nullability is compared on its own (``_fields``)."""
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True, ignore_metadata=True)


def _fields(schema: StructType) -> list[tuple]:
    return [(f.name, f.dataType.simpleString(), f.nullable) for f in schema]


def _deltalake_rows(path: str, columns: list[str], version: int | None = None) -> list[tuple]:
    """The rows of a Delta table as ``deltalake`` reads it by itself (no Spark), sorted."""
    from deltalake import DeltaTable

    table = DeltaTable(path, version=version).to_pyarrow_table().select(columns)
    return sorted(tuple(r.values()) for r in table.to_pylist())


def _spark_rows(df) -> list[tuple]:
    def plain(v):  # Spark gives the session's local time without a zone, deltalake UTC with one
        return v.astimezone(dt.timezone.utc) if isinstance(v, dt.datetime) else v

    return sorted(tuple(plain(v) for v in r) for r in df.collect())


def each_engine_reads_the_others_tables(native: Warehouse, rs: Warehouse, partition_columns) -> None:
    """Tables written by one engine read by the other, by ``deltalake`` itself and by the writer, alike:
    the nightly table (partitioned by ``run_date``, a partition replaced at a time) and a record table (an
    append after an overwrite), each then written to by the other engine too; versions, time travel,
    partitioning and the schema (types, nullability) seen the same by both engines and by ``deltalake``.

    Args:
        native, rs: the same warehouse folder through native Delta and through delta-rs.
        partition_columns: ``(warehouse, table) -> partition columns`` as native Delta reads them.
    """
    from deltalake import DeltaTable
    from longtail.core import delta_rs, schemas

    spark = native.spark
    contract = {t: [(f.name, f.dataType.simpleString()) for f in schemas.SCHEMAS[t]]
                for t in (schemas.RECOMMENDATIONS, schemas.RECOMMENDATION_RUNS)}
    for writer, reader in ((native, rs), (rs, native)):
        recs, runs = f"recommendations_{writer.engine.replace('-', '_')}", f"runs_{writer.engine.replace('-', '_')}"
        first = _recs(spark, [("u1", 1, "i1", 0.5, "m", "v1", False), ("u2", 1, "i9", 0.25, "popularity", "counts", True)],
                      D1)
        second = _recs(spark, [("u1", 1, "i3", 0.75, "m", "v1", False)], D2)
        rerun = _recs(spark, [("u1", 1, "i2", 1.5, "m", "v2", False), ("u1", 2, "i4", -0.5, "m", "v2", False)], D1)
        writer.write(first, recs, mode="overwrite", partition_by=["run_date"], replace_partitions={"run_date": D1})
        writer.write(second, recs, mode="overwrite", replace_partitions={"run_date": D2})
        assert writer.write(rerun, recs, mode="overwrite", replace_partitions={"run_date": D1}) == 2
        path = writer.path(recs)
        assert reader.version(recs) == DeltaTable(path).version() == 2, writer.engine
        expected = rerun.unionByName(second)
        for wh in (writer, reader):
            assert_same_rows_any_nullability(wh.read(recs), expected)
            assert_same_rows_any_nullability(wh.read(recs, version=0), first)
        assert _deltalake_rows(path, expected.columns) == _spark_rows(expected)
        assert _deltalake_rows(path, expected.columns, version=1) == _spark_rows(first.unionByName(second))
        assert partition_columns(native, recs) == DeltaTable(path).metadata().partition_columns == ["run_date"]
        seen = _fields(writer.read(recs).schema)
        assert _fields(reader.read(recs).schema) == _fields(delta_rs.spark_schema(DeltaTable(path))) == seen, writer.engine
        assert [(n, t) for n, t, _ in seen] == contract[schemas.RECOMMENDATIONS]
        # Both engines create every column nullable, the literal run_date too: the other's appends never trip on it.
        assert all(nullable for *_, nullable in seen), (writer.engine, seen)
        # The other engine replaces a partition of this table; the writer reads it back.
        again = _recs(spark, [("u3", 1, "i5", 2.0, "m", "v3", False)], D2)
        assert reader.write(again, recs, mode="overwrite", replace_partitions={"run_date": D2}) == 3
        for wh in (writer, reader):
            assert_same_rows_any_nullability(wh.read(recs), rerun.unionByName(again))
        assert _deltalake_rows(path, expected.columns) == _spark_rows(rerun.unionByName(again))

        # A record table: an overwrite, an append by the same engine, then one by the other.
        def run(n: int) -> tuple:  # a run row; diversity null in one
            started = dt.datetime(2024, 1, 1, n, tzinfo=dt.timezone.utc)
            return (D1, "m", f"v{n}", n, 0.5, 0.25, None if n == 2 else 0.125, started, started + dt.timedelta(minutes=30),
                    n)

        table = schemas.RECOMMENDATION_RUNS_SCHEMA
        writer.write(spark.createDataFrame([run(1)], table), runs, mode="overwrite")
        assert writer.write(spark.createDataFrame([run(2)], table), runs, mode="append") == 1
        assert reader.write(spark.createDataFrame([run(3)], table), runs, mode="append") == 2
        for wh in (writer, reader):
            assert wh.version(runs) == 2
            assert_same_rows_any_nullability(wh.read(runs), spark.createDataFrame([run(1), run(2), run(3)], table))
            assert_same_rows_any_nullability(wh.read(runs, version=1), spark.createDataFrame([run(1), run(2)], table))
        assert _deltalake_rows(writer.path(runs), table.names) == sorted([run(1), run(2), run(3)])
        assert partition_columns(native, runs) == DeltaTable(writer.path(runs)).metadata().partition_columns == []
        seen = _fields(writer.read(runs).schema)
        assert _fields(reader.read(runs).schema) == _fields(delta_rs.spark_schema(DeltaTable(writer.path(runs)))) == seen
        assert [(n, t) for n, t, _ in seen] == contract[schemas.RECOMMENDATION_RUNS]


def _native_session():
    """A local session with native Delta: the jars of LONGTAIL_DELTA_JARS, else ``delta.engine: native``
    (delta-spark's Maven coordinate, resolved by Spark from its Ivy cache or Maven Central)."""
    from longtail.core.config import SparkConfig
    from longtail.core.session import build_spark

    jars = os.environ.get(DELTA_JARS_ENV)
    conf = {
        "spark.jars": ",".join(j for j in jars.split(os.pathsep) if j),
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
    } if jars else {}
    cfg = SparkConfig(master="local[2]", app_name="longtail-tests-native-delta", driver_memory="1g",
                      shuffle_partitions=2, conf=conf)
    return build_spark(cfg, delta_engine="auto" if jars else "native")


def _native_main(root: str) -> int:
    """``python tests/core/test_tables.py ROOT``: the cross-engine check in a session of its own."""
    from longtail.core.errors import EnvironmentProblem

    try:
        spark = _native_session()
    except EnvironmentProblem as exc:
        if os.environ.get(DELTA_JARS_ENV):
            raise
        print(f"delta-spark's jars did not resolve: {str(exc).splitlines()[0]}", flush=True)
        return NATIVE_UNAVAILABLE
    try:
        each_engine_reads_the_others_tables(
            Warehouse(spark, root, engine="native"), Warehouse(spark, root, engine="delta-rs"), native_partition_columns
        )
    finally:
        spark.stop()
    print("each engine reads the other's tables", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_native_main(sys.argv[1]))

"""Session: a missing Java is a clear message, not a Py4J stack trace."""
from __future__ import annotations

import pytest
from longtail.core.config import SparkConfig
from longtail.core.session import (
    JavaNotFoundError,
    build_spark,
    check_java,
    spark_for_job,
)


def test_missing_java_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-java"))
    with pytest.raises(JavaNotFoundError, match="Java not found.*JAVA_HOME"):
        check_java()


def test_java_not_on_path(monkeypatch, tmp_path):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(JavaNotFoundError, match="PATH"):
        check_java()


@pytest.mark.spark
def test_existing_session_is_reused_with_utc(spark):
    # With a session already active (Databricks, spark-submit), build_spark returns it.
    again = build_spark(SparkConfig(master=None, conf={"spark.sql.shuffle.partitions": "3"}))
    assert again is spark
    assert spark.conf.get("spark.sql.session.timeZone") == "UTC"
    assert spark.conf.get("spark.sql.shuffle.partitions") == "3"
    spark.conf.set("spark.sql.shuffle.partitions", "2")


@pytest.mark.spark
def test_a_job_leaves_a_session_it_did_not_start_running(spark):
    # spark-submit, Databricks and the test suite own their session: the job must not stop it,
    # even when its config names a local master (the session already there is the one used).
    for cfg in (SparkConfig(master=None), SparkConfig(master="local[2]")):
        with spark_for_job(cfg) as used:
            assert used is spark
        assert spark.range(3).count() == 3


def test_task_slots_from_the_master_url():
    from longtail.core.session import master_slots

    assert master_slots("local[2]") == 2
    assert master_slots("local-cluster[2,1,2048]") == 2
    assert master_slots("local-cluster[3, 2, 1024]") == 6
    assert master_slots("local[*]") >= 1 and master_slots("local") >= 1
    assert master_slots("yarn") is None and master_slots("spark://host:7077") is None


@pytest.mark.spark
def test_a_classic_session_is_described_and_reaches_local_folders(spark, tmp_path):
    from longtail.core.session import (
        can_reach,
        default_parallelism,
        describe,
        is_connect,
    )

    assert not is_connect(spark)
    assert default_parallelism(spark) == spark.sparkContext.defaultParallelism
    assert describe(spark).startswith("local[2]")
    assert can_reach(spark, str(tmp_path)) and can_reach(spark, f"file://{tmp_path}")
    # pip's pyspark has no Hadoop S3 connector: longtail's own sources take over (tables, scratch).
    assert not can_reach(spark, "s3a://longtail-no-such-bucket/wh")


def test_native_delta_without_delta_spark_is_a_clear_error(monkeypatch):
    import sys

    from longtail.core.errors import EnvironmentProblem
    from longtail.core.session import _with_delta_jars

    monkeypatch.setitem(sys.modules, "delta", None)
    with pytest.raises(EnvironmentProblem, match=r"longtail\[delta\]"):
        _with_delta_jars(object())


def test_unresolvable_delta_jars_are_a_clear_error():
    from longtail.core.session import _delta_jars_problem

    problem = _delta_jars_problem(RuntimeError("[JAVA_GATEWAY_EXITED] Java gateway process exited\nmore"))
    assert "delta-spark's jars could not be resolved" in str(problem) and "delta.engine: delta-rs" in str(problem)


@pytest.mark.slow
def test_native_delta_is_configured_from_delta_spark_or_fails_clearly(tmp_path):
    # delta.engine: native on a session started here adds delta-spark's jars; where Maven Central is out
    # of reach (these tests run offline) that is one clear error, not a Java gateway trace.
    import subprocess
    import sys

    script = (
        "from longtail.core.config import SparkConfig\n"
        "from longtail.core.errors import EnvironmentProblem\n"
        "from longtail.core.session import build_spark\n"
        "from longtail.core.tables import Warehouse\n"
        "try:\n"
        "    spark = build_spark(SparkConfig(driver_memory='1g', shuffle_partitions=2), delta_engine='native')\n"
        "except EnvironmentProblem as exc:\n"
        "    print('ERROR', exc)\n"
        "else:\n"
        f"    wh = Warehouse(spark, {str(tmp_path / 'wh')!r}, engine='native')\n"
        "    wh.write(spark.range(3), 't')\n"
        "    print('NATIVE', wh.engine, wh.read('t').count())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    out = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-2000:]
    assert out == "NATIVE native 3" or (
        out.startswith("ERROR delta.engine is native but delta-spark's jars could not be resolved")
        and "delta.engine: delta-rs" in out
    ), out

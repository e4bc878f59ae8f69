"""Session: a missing Java is a clear message, not a Py4J stack trace."""
from __future__ import annotations

import pytest
from longtail.core.config import SparkConfig
from longtail.core.session import JavaNotFoundError, build_spark, check_java


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

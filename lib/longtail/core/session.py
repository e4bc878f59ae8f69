"""The SparkSession, built once per job from :class:`~longtail.core.config.SparkConfig`."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess

from pyspark.sql import SparkSession

from longtail.core.config import SparkConfig
from longtail.core.errors import EnvironmentProblem


class JavaNotFoundError(EnvironmentProblem):
    """No usable Java runtime for local Spark."""


log = logging.getLogger(__name__)


def check_java() -> None:
    """Fail clearly when local Spark cannot start for want of Java (instead of a Py4J trace).

    Raises:
        JavaNotFoundError: no ``java`` on PATH or in ``JAVA_HOME``, or it does not run.
    """
    java_home = os.environ.get("JAVA_HOME")
    java = os.path.join(java_home, "bin", "java") if java_home else shutil.which("java")
    if not java or not os.path.exists(java):
        where = f"JAVA_HOME={java_home}" if java_home else "PATH"
        raise JavaNotFoundError(
            f"Java not found ({where}): local Spark needs Java 17 or 21. "
            "Install it (e.g. `apt-get install openjdk-17-jre-headless`) or set JAVA_HOME."
        )
    try:
        subprocess.run([java, "-version"], capture_output=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise JavaNotFoundError(f"Java at {java} does not run: {exc}") from None


def build_spark(cfg: SparkConfig, extra_conf: dict[str, str] | None = None) -> SparkSession:
    """Return the job's SparkSession.

    With ``cfg.master`` set (the embedded default, ``local[N]``) a local session is built
    with settings for a small machine; with ``master: null`` the session that spark-submit
    or Databricks already configured is used, adding only the properties in ``cfg.conf``.

    Args:
        cfg: the ``spark`` section of the config.
        extra_conf: properties a caller needs on top (e.g. Delta's SQL extension).

    Raises:
        JavaNotFoundError: local mode and no usable Java.
    """
    conf = {
        "spark.sql.shuffle.partitions": str(cfg.shuffle_partitions),
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(cfg.arrow_max_records_per_batch),
        "spark.sql.session.timeZone": "UTC",
        "spark.python.worker.reuse": "true",
        **(extra_conf or {}),
        **cfg.conf,
    }
    active = SparkSession.getActiveSession()
    if cfg.master is None or active is not None:
        builder = SparkSession.builder
        if cfg.master is None and active is None:
            builder = builder.appName(cfg.app_name)
        spark = builder.getOrCreate()
        # An existing session (spark-submit, Databricks, a notebook) keeps its static settings;
        # the runtime ones from the config (shuffle partitions, Arrow batch size, UTC) apply.
        for key, value in conf.items():
            _try_set(spark, key, value)
        return spark
    check_java()
    builder = (
        SparkSession.builder.master(cfg.master)
        .appName(cfg.app_name)
        .config("spark.driver.memory", cfg.driver_memory)
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.adaptive.enabled", "true")
    )
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    _quiet_task_failures(spark)
    return spark


def _quiet_task_failures(spark: SparkSession) -> None:
    # A task that fails on purpose (bad input found on an executor) would otherwise print its
    # whole Python trace at ERROR before our one-line message; the error still propagates.
    try:
        log4j = spark.sparkContext._jvm.org.apache.logging.log4j  # type: ignore[union-attr]
        configurator = log4j.core.config.Configurator
        off = log4j.Level.OFF
        for name in (
            "org.apache.spark.executor.Executor",
            "org.apache.spark.scheduler.TaskSetManager",
            "org.apache.spark.sql.execution.datasources.v2",
            "org.apache.spark.sql.execution.python",
        ):
            configurator.setLevel(name, off)
    except Exception:  # noqa: BLE001 - logging tweaks must never stop a job
        pass


def _try_set(spark: SparkSession, key: str, value: str) -> None:
    # Static properties of an existing session cannot change; runtime ones can.
    try:
        spark.conf.set(key, value)
    except Exception as exc:  # noqa: BLE001 - a static conf on a running cluster is not our error
        log.debug("spark conf %s cannot change on a running session: %s", key, exc)

"""Airflow DAGs for longtail: a weekly train and a nightly score + similar items, by spark-submit.

Each task is a ``SparkSubmitOperator`` on one of the entry points beside this file (``jobs/<command>.py``)
with the same arguments as the CLI (``[OPTIONS] --conf FILE --set KEY=VALUE``), the longtail wheel on
``--py-files`` (build it with ``pip wheel --no-deps -w dist .``):

- ``longtail_weekly_train`` (Sundays 02:00 UTC): sequences >> encode >> train --warm-start >> evaluate;
  ``--warm-start`` continues the latest version of the model (the first run, with none yet, trains from
  scratch);
- ``longtail_nightly`` (04:00 UTC): sequences >> encode >> score >> similar-items, the partition of the
  run's date in ``recommendations`` and ``similar_items``.

``encode --no-users`` encodes the item texts only: no task here reads ``user_embeddings`` (only
``neighbors`` does, for a model with the distillation, ``train.alpha`` > 0: then drop ``--no-users`` and add a
``neighbors`` task before ``train``). On Beauty the user texts are four fifths of the encode time (items
alone 112 s, with the users 549 s, on 2 cores).

Needs ``apache-airflow-providers-apache-spark`` and a Spark connection (``spark_default``: the master,
YARN or Kubernetes) whose executors have longtail's dependencies (in the image, or a packed virtual
environment: README, spark-submit). Loading the raw data (``jobs/ingest.py`` with your paths, or your
own pipeline) comes before either DAG. Settings below come from the environment of the scheduler, with
the defaults shown; everything else is in the config file (``conf/cluster.yaml``).
"""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

try:  # Airflow 3
    from airflow.sdk import DAG
except ImportError:  # Airflow 2
    from airflow import DAG
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

JOBS = Path(__file__).resolve().parent
#: Where the warehouse lives, which config and model the jobs use, the wheel they ship.
WAREHOUSE = os.environ.get("LONGTAIL_WAREHOUSE", "s3a://bucket/longtail")
CONF = os.environ.get("LONGTAIL_CONF", str(JOBS.parent / "conf" / "cluster.yaml"))
MODEL = os.environ.get("LONGTAIL_MODEL", "llmesr_sasrec")
WHEEL = os.environ.get("LONGTAIL_WHEEL", str(JOBS.parent / "dist" / "longtail-0.1.0-py3-none-any.whl"))
CONNECTION = os.environ.get("LONGTAIL_SPARK_CONNECTION", "spark_default")
#: Native Delta and S3 for the session spark-submit builds (as in the README's spark-submit example).
PACKAGES = "io.delta:delta-spark_2.13:4.0.0,org.apache.hadoop:hadoop-aws:3.4.1"
SPARK_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}
#: The run's date: the end of its data interval (the day it runs, for a nightly schedule).
RUN_DATE = "{{ data_interval_end | ds }}"


def longtail_task(command: str, *options: str) -> SparkSubmitOperator:
    """One ``spark-submit jobs/<command>.py [OPTIONS] --conf CONF --set warehouse=...`` task."""
    return SparkSubmitOperator(
        task_id=command.replace("-", "_"),
        application=str(JOBS / f"{command.replace('-', '_')}.py"),
        application_args=[*options, "--conf", CONF, "--set", f"warehouse={WAREHOUSE}"],
        py_files=WHEEL,
        packages=PACKAGES,
        conf=SPARK_CONF,
        conn_id=CONNECTION,
        name=f"longtail-{command}",
    )


DEFAULTS = {"retries": 1, "retry_delay": dt.timedelta(minutes=10)}

with DAG(
    dag_id="longtail_weekly_train",
    schedule="0 2 * * 0",
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULTS,
    tags=["longtail"],
) as weekly_train:
    (
        longtail_task("sequences")
        >> longtail_task("encode", "--no-users")
        >> longtail_task("train", "--model", MODEL, "--warm-start")
        >> longtail_task("evaluate", "--model", MODEL)
    )

with DAG(
    dag_id="longtail_nightly",
    schedule="0 4 * * *",
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULTS,
    tags=["longtail"],
) as nightly:
    (
        longtail_task("sequences")
        >> longtail_task("encode", "--no-users")
        >> longtail_task("score", "--model", MODEL, "--run-date", RUN_DATE)
        >> longtail_task("similar-items", "--model", MODEL, "--run-date", RUN_DATE)
    )

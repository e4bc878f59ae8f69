"""Lane: the demo pipeline on a Spark Connect session (``spark.remote``), as on Databricks
serverless/shared clusters and Spark 4 remote sessions: no SparkContext, no RDDs, no broadcasts.

One lane runs Connect over ``local-cluster[2,1,2048]`` (two executor JVMs with their own Python
workers) with ``train.mode: cluster`` (TorchDistributor barrier tasks on the executors, gloo): one
run covers Spark Connect, real executors, the encoding UDF on executors and the side-file scoring
path. It is in the default run (CI); the demo on Connect over ``local[2]`` is behind the ``deploy``
marker (the fault suite's kill -9 victims already run on Spark Connect in every run).
"""
from __future__ import annotations

import pytest

from deploy.lanes import CLUSTER, check_demo_tables, check_progress, demo_settings, longtail, read_table


@pytest.mark.slow
def test_demo_on_spark_connect_over_two_executors(connect_cluster_warehouse):
    warehouse, done = connect_cluster_warehouse
    check_progress(done.stderr)
    assert f"starting Spark (Spark Connect {CLUSTER})" in done.stderr
    check_demo_tables(warehouse)
    models = read_table(warehouse, "models").to_pylist()
    assert models[-1]["processes"] == 2  # one DDP rank per barrier task, on the executors


@pytest.mark.slow
@pytest.mark.deploy
def test_demo_on_spark_connect(tmp_path):
    warehouse = str(tmp_path / "warehouse")
    done = longtail([*demo_settings(), "--set", f"warehouse={warehouse}", "--set", "spark.remote=local[2]",
                     "--set", "spark.driver_memory=2g", "demo"])
    check_progress(done.stderr)
    assert "starting Spark (Spark Connect local[2])" in done.stderr
    check_demo_tables(warehouse)

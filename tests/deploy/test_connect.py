"""Lane: the demo pipeline on a Spark Connect session (``spark.remote``), as on Databricks
serverless/shared clusters and Spark 4 remote sessions: no SparkContext, no RDDs, no broadcasts."""
from __future__ import annotations

import pytest

from deploy.lanes import check_demo_tables, check_progress, demo_settings, longtail

pytestmark = [pytest.mark.slow, pytest.mark.deploy]


def test_demo_on_spark_connect(tmp_path):
    warehouse = str(tmp_path / "warehouse")
    done = longtail([*demo_settings(), "--set", f"warehouse={warehouse}", "--set", "spark.remote=local[2]",
                     "--set", "spark.driver_memory=2g", "demo"])
    check_progress(done.stderr)
    assert "starting Spark (Spark Connect local[2])" in done.stderr
    check_demo_tables(warehouse)

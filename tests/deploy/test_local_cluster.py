"""Lane: real executors. ``local-cluster[2,1,2048]`` runs two executor JVMs with their own Python
workers (pip's pyspark ships it): the demo pipeline with ``train.mode: cluster`` (TorchDistributor
barrier tasks on the executors, gloo) and the side-file scoring path; then ``spark-submit
jobs/score.py`` with the built wheel shipped by ``--py-files``, as the README shows."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from deploy.lanes import (
    REPO, check_demo_tables, check_progress, cluster_demo, environment, read_table, run,
)


@pytest.fixture(scope="module")
def cluster_warehouse(tmp_path_factory):
    warehouse = str(tmp_path_factory.mktemp("cluster") / "warehouse")
    return warehouse, cluster_demo(warehouse, "spark.master")


@pytest.mark.slow
@pytest.mark.deploy
def test_demo_on_two_executors_with_cluster_training(cluster_warehouse):
    warehouse, done = cluster_warehouse
    check_progress(done.stderr)
    check_demo_tables(warehouse)
    models = read_table(warehouse, "models").to_pylist()
    assert models[-1]["processes"] == 2  # one DDP rank per barrier task, on the executors


@pytest.mark.slow
@pytest.mark.deploy
def test_spark_submit_score_with_the_wheel(connect_cluster_warehouse, wheel, tmp_path):
    import sys

    warehouse, _ = connect_cluster_warehouse
    spark_submit = shutil.which("spark-submit") or str(Path(__import__("pyspark").__file__).parent / "bin" / "spark-submit")
    job = tmp_path / "score.py"
    shutil.copy(REPO / "jobs" / "score.py", job)  # run from outside the checkout
    done = run([
        spark_submit, "--master", "local-cluster[2,1,1024]", "--py-files", str(wheel),
        "--conf", "spark.executor.memory=1g", "--conf", f"spark.pyspark.python={sys.executable}", str(job),
        "--set", "spark.master=null", "--set", f"warehouse={warehouse}",
        "--model", "popularity", "--run-date", "2026-11-23",
    ], cwd=tmp_path, env=environment())
    assert "recommendations 2026-11-23" in done.stdout, done.stdout
    recs = read_table(warehouse, "recommendations").to_pandas()
    assert (recs["run_date"].astype(str) == "2026-11-23").any()

"""Lane: the warehouse in a bucket of a real S3 API server (moto's server mode), through the embedded
delta-rs engine: tables, models, reports and scratch files all on ``s3a://``, with no Hadoop S3
connector in Spark (pip's pyspark has none)."""
from __future__ import annotations

import pytest

from deploy.lanes import check_demo_tables, demo_settings, environment, longtail, read_table

pytestmark = [pytest.mark.slow, pytest.mark.deploy]


def _raw_files(folder):
    """The synthetic catalogue as the raw files a user would ingest."""
    from longtail.synthetic import generate_catalogue

    cat = generate_catalogue(300, 120, 7)
    folder.mkdir()
    cat.interactions.rename(columns={"timestamp": "timestamp"}).to_csv(folder / "interactions.csv", index=False)
    cat.items.to_json(folder / "items.jsonl", orient="records", lines=True)
    return folder / "interactions.csv", folder / "items.jsonl"


def test_ingest_to_score_with_the_warehouse_in_a_bucket(s3_bucket, s3_server, tmp_path):
    from conftest import s3_environment

    env = environment(s3_environment(s3_server))
    warehouse = f"{s3_bucket}/longtail"
    interactions, items = _raw_files(tmp_path / "raw")
    common = ["--set", f"warehouse={warehouse}", "--set", "spark.driver_memory=1g", *demo_settings()]
    longtail([*common, "ingest", "--format", "files", "--interactions", str(interactions), "--items", str(items)],
             env=env)
    longtail([*common, "sequences"], env=env)
    done = longtail([*common, "score", "--model", "popularity", "--run-date", "2026-11-23"], env=env)
    assert "recommendations 2026-11-23" in done.stdout
    recs = read_table(warehouse, "recommendations").to_pandas()
    assert len(recs) == 10 * recs["user_id"].nunique() and recs["user_id"].nunique() >= 250


def test_demo_with_the_warehouse_in_a_bucket(s3_bucket, s3_server):
    from conftest import s3_environment

    warehouse = f"{s3_bucket}/demo"
    longtail([*demo_settings(), "--set", f"warehouse={warehouse}", "--set", "spark.driver_memory=1g", "demo"],
             env=environment(s3_environment(s3_server)))
    check_demo_tables(warehouse)

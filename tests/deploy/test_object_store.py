"""Lane: the warehouse in a bucket of a real S3 API server (moto's server mode), through the embedded
delta-rs engine: tables, models, reports and scratch files all on ``s3a://``, with no Hadoop S3
connector in Spark (pip's pyspark has none). Ingest -> sequences -> score runs in every run (CI);
the whole demo with the warehouse in the bucket is behind the ``deploy`` marker."""
from __future__ import annotations

import datetime as dt

import pytest

from deploy.lanes import check_demo_tables, demo_settings, environment, longtail, read_table


@pytest.mark.spark
@pytest.mark.slow
def test_ingest_to_score_with_the_warehouse_in_a_bucket(s3_spark, s3_bucket, tmp_path):
    from longtail.core.config import Config
    from longtail.core.tables import Warehouse
    from longtail.stages.ingest import run_ingest
    from longtail.stages.score import run_score
    from longtail.stages.sequences import run_sequences
    from longtail.synthetic import generate_catalogue

    cat = generate_catalogue(300, 120, 7)  # the synthetic catalogue, as raw files a user would ingest
    raw = tmp_path / "raw"
    raw.mkdir()
    cat.interactions.to_csv(raw / "interactions.csv", index=False)
    cat.items.to_json(raw / "items.jsonl", orient="records", lines=True)
    cfg = Config()
    wh = Warehouse(s3_spark, f"{s3_bucket}/longtail")
    assert wh.engine == "delta-rs" and wh.root.startswith("s3a://")
    run_ingest(s3_spark, wh, "files", str(raw / "interactions.csv"), str(raw / "items.jsonl"), None, cfg.ingest)
    run_sequences(wh, cfg.sequences)
    report = run_score(wh, "popularity", cfg.score, run_date=dt.date(2026, 11, 23), als_cfg=cfg.evaluate)
    assert report.users >= 250
    recs = read_table(wh.root, "recommendations").to_pandas()
    assert len(recs) == 10 * recs["user_id"].nunique() == 10 * report.users
    assert wh.read("recommendations").count() == len(recs)  # read back through Spark: the delta-rs reader
    from longtail.core.files import filesystem
    from pyarrow.fs import FileSelector

    fs, bundles = filesystem(f"{wh.root}/_tmp/bundles")
    assert not fs.get_file_info(FileSelector(bundles, allow_not_found=True))  # staged bundles removed


@pytest.mark.slow
@pytest.mark.deploy
def test_demo_with_the_warehouse_in_a_bucket(s3_bucket, s3_server):
    from suite_settings import s3_environment

    warehouse = f"{s3_bucket}/demo"
    longtail([*demo_settings(), "--set", f"warehouse={warehouse}", "--set", "spark.driver_memory=1g", "demo"],
             env=environment(s3_environment(s3_server)))
    check_demo_tables(warehouse)
